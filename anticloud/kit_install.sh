#!/usr/bin/env bash
# Install anticloud from this kit with no network: check everything first, then install.
#   ./install.sh --prefix DIR (--pubkey PUBLISHER.pub | --home HOME-that-trusts-it) [--home HOME]
#                [--import-model] [--force-downgrade]
# A --prefix that holds an installation already is upgraded: give --home, whose ledger records the
# upgrade (appliance.upgrade); the home is kept as it is; an older kit is refused unless
# --force-downgrade, and a forced downgrade is recorded as forced. A failed upgrade puts the
# previous installation back. Needs bash, python3 (standard library only) and openssl.
# Exit 1: refused or failed, nothing changed; 2: bad usage.
set -Eeuo pipefail  # -E: the rollback traps below also fire inside functions
umask 022  # the service user must be able to read what root installs
kit=$(cd "$(dirname "$0")" && pwd)
pubkey="" prefix="" home="" import_model=0 force_downgrade=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pubkey) pubkey=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --home) home=$2; shift 2 ;;
    --import-model) import_model=1; shift ;;
    --force-downgrade) force_downgrade=1; shift ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
refuse() { echo "install.sh: REFUSED: $1; nothing was installed" >&2; exit 1; }
[ -n "$prefix" ] || { echo "install.sh: --prefix is required" >&2; exit 2; }
[ -n "$pubkey" ] || [ -n "$home" ] || { echo "install.sh: give --pubkey, or --home of an appliance that trusts the publisher" >&2; exit 2; }
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
case "$home" in /*|"") ;; *) home="$PWD/$home" ;; esac
prefix=${prefix%/}
upgrade=0
if [ -e "$prefix" ] || [ -L "$prefix" ]; then
  upgrade=1
  [ -n "$home" ] || { echo "install.sh: $prefix exists: an upgrade is recorded in the appliance's ledger, so give --home" >&2; exit 2; }
  [ -f "$home/ledger.jsonl" ] || refuse "$prefix exists, and $home is not an initialised appliance home to record the upgrade in"
fi
if [ "$import_model" = 1 ]; then  # before anything is copied or installed
  [ -n "$home" ] || { echo "install.sh: --import-model needs --home" >&2; exit 2; }
  [ -f "$kit/model/manifest.json" ] && [ -f "$kit/model/signatures.json" ] && [ -d "$kit/model/files" ] ||
    refuse "--import-model, but the kit carries no model"
fi
# The home is written as its owner (the service user), as the appliance itself would.
home_uid=$(id -u) home_gid=$(id -g)
if [ -n "$home" ] && [ -e "$home" ]; then
  home_uid=$(stat -c %u "$home") home_gid=$(stat -c %g "$home")
  [ "$(id -u)" = "$home_uid" ] || [ "$(id -u)" = 0 ] ||
    refuse "$home belongs to uid $home_uid: run install.sh as root or as that user"
fi
command -v openssl >/dev/null || refuse "openssl is needed to check the signature"

# 0. A private copy: the media can change under us (a second writer, a swapped USB stick), so
# what is verified and what is installed must be the same bytes. Links and special files are
# copied as what they are, so that the checks below see them and refuse them.
work=$(mktemp -d "${TMPDIR:-/tmp}/anticloud-kit.XXXXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
cp -PR -- "$kit/manifest.json" "$kit/signatures.json" "$kit/files" "$work/" 2>/dev/null ||
  refuse "the kit could not be copied (manifest.json, signatures.json and files/ are needed)"

# 1-4. The signature, every file, the Python version, platform and CPU, and for an upgrade the
# versions and the home, all of the copy and before anything is installed.
python3 - "$work" "$pubkey" "$home" "$prefix" "$upgrade" "$force_downgrade" <<'PY'
import base64, fcntl, glob, hashlib, json, os, platform, re, subprocess, sys, sysconfig, tempfile

kit, pubkey, home, prefix = sys.argv[1:5]
upgrade, force = sys.argv[5] == "1", sys.argv[6] == "1"
SPKI = bytes.fromhex("302a300506032b6570032100")  # DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410)


def refuse(message):
    print(f"install.sh: REFUSED: {message}; nothing was installed", file=sys.stderr)
    sys.exit(1)


def pem_of(raw):
    body = base64.b64encode(SPKI + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n".encode()


def raw_of(pem):
    text = pem.decode("ascii", "replace")
    der = base64.b64decode("".join(text.split("-----")[2].split())) if text.count("-----") >= 4 else b""
    if len(der) != 44 or not der.startswith(SPKI):
        refuse("the public key given is not a PEM Ed25519 key")
    return der[12:]


try:
    raw = open(os.path.join(kit, "manifest.json"), "rb").read()
    manifest = json.loads(raw)
    signatures = json.loads(open(os.path.join(kit, "signatures.json"), "rb").read())["signatures"]
    entries = {entry["path"]: entry for entry in manifest["files"]}
    target = json.loads(open(os.path.join(kit, "files", "kit.json"), "rb").read())
except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
    refuse(f"the kit is unreadable or malformed ({exc})")

try:
    keys = [raw_of(open(pubkey, "rb").read())] if pubkey else []
    if home and os.path.exists(os.path.join(home, "trust.json")):
        trusted = json.load(open(os.path.join(home, "trust.json")))["keys"].values()
        keys += [bytes.fromhex(k["public_key"]) for k in trusted if k["revoked"] is None]
except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
    refuse(f"cannot read the publisher key or the trust store ({exc})")
signer = None
try:
    for key in keys:
        key_id = "sha3-256:" + hashlib.sha3_256(key).hexdigest()
        for signature in (s for s in signatures if s.get("key_id") == key_id):
            with tempfile.TemporaryDirectory() as tmp:
                paths = {name: os.path.join(tmp, name) for name in ("key.pem", "sig", "msg")}
                for name, data in (("key.pem", pem_of(key)), ("sig", base64.b64decode(signature["signature"])),
                                   ("msg", raw)):
                    open(paths[name], "wb").write(data)
                check = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", paths["key.pem"], "-rawin",
                         "-in", paths["msg"], "-sigfile", paths["sig"]]
                if subprocess.run(check, capture_output=True).returncode == 0:
                    signer = key_id
except (ValueError, KeyError, TypeError, AttributeError) as exc:
    refuse(f"signatures.json is malformed ({exc})")
if signer is None:
    refuse("no valid signature on the kit's manifest by the key given or a trusted key")

files = os.path.join(kit, "files")
try:
    present = set(os.listdir(files))
except OSError as exc:
    refuse(f"the kit has no readable files/ ({exc.strerror})")
for extra in sorted(present - set(entries)):
    refuse(f"files/{extra!r} is not in the signed manifest")
for name, entry in sorted(entries.items()):
    path = os.path.join(files, name)
    if name not in present:
        refuse(f"files/{name} is missing")
    if os.path.islink(path) or not os.path.isfile(path):
        refuse(f"files/{name} is not a plain file")
    if os.path.getsize(path) != entry["size"]:
        refuse(f"files/{name} is {os.path.getsize(path)} bytes; the signed manifest says {entry['size']}")
    digest = hashlib.sha3_256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    if "sha3-256:" + digest.hexdigest() != entry["sha3_256"]:
        refuse(f"files/{name} does not match its signed SHA3-256")
# kit.json was read early, but only believed now that its hash matched the signed manifest.
here = list(platform.python_version_tuple()[:2])
if here != target["python"]:
    refuse(f"the kit is for Python {'.'.join(target['python'])}; this is Python {'.'.join(here)}")
if sysconfig.get_platform() != target["platform"]:
    refuse(f"the kit is for {target['platform']}; this is {sysconfig.get_platform()}")

# The rules come from the kit's own anticloud wheel, verified above (a wheel is an importable
# zip): the CPU rule (anticloud.cpu) and the version rule (anticloud.upgrade) are stated there once.
wheel = glob.glob(os.path.join(files, f"anticloud-{target['version']}-*.whl"))
sys.path.insert(0, wheel[0] if len(wheel) == 1 else "/nonexistent")
try:
    from anticloud.cpu import cpu_flags, missing
    from anticloud.errors import InstallError
    from anticloud.upgrade import RECEIPT, direction
except ImportError as exc:
    refuse(f"the kit's anticloud wheel cannot be read ({exc})")
cpu = target["cpu"]
try:
    flags = cpu_flags(open("/proc/cpuinfo").read())
except OSError as exc:
    refuse(f"cannot read /proc/cpuinfo to check the CPU ({exc.strerror})")
if lacking := missing(cpu["requires"], flags):
    refuse(f"this CPU lacks {' '.join(lacking)}, which the kit's llama.cpp needs ({cpu['build']} build); "
           "build a portable kit with `make kit`")

previous = {"version": "", "manifest": ""}
if upgrade:
    try:  # the engine holds this lock for as long as it runs
        with open(os.path.join(home, "engine.lock"), "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        pass
    except BlockingIOError:
        refuse(f"the appliance at {home} is running; stop it first (systemctl stop anticloud)")
    try:
        receipt = json.load(open(os.path.join(prefix, RECEIPT)))
        previous = {"version": str(receipt["version"]), "manifest": str(receipt["manifest"])}
    except FileNotFoundError:  # installed before installs left a receipt: ask the installation itself
        ask = [os.path.join(prefix, "bin", "python"), "-c",
               "import importlib.metadata as m; print(m.version('anticloud'))"]
        try:
            found = subprocess.run(ask, capture_output=True, text=True, timeout=60)
        except OSError:
            found = None
        if found is None or found.returncode != 0:
            refuse(f"{prefix} exists and holds no anticloud installation")
        previous = {"version": found.stdout.strip(), "manifest": ""}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        refuse(f"the installation's receipt {os.path.join(prefix, RECEIPT)} is unreadable ({exc})")
    try:
        way = direction(previous["version"], target["version"])
    except InstallError as exc:
        refuse(str(exc))
    if way == "downgrade" and not force:
        refuse(f"the kit holds anticloud {target['version']}, older than the installed {previous['version']}; "
               "give --force-downgrade to install it anyway (the ledger records it as forced)")

# For the steps below, in the private copy: the plan, the receipt, and where the shared files go.
share = target["share"]
if any(name not in entries or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", dest)
       for name, dest in share.items()):
    refuse("kit.json names a shared file outside the manifest or outside share/anticloud/")
with open(os.path.join(kit, "share.tsv"), "w") as out:
    out.writelines(f"{name}\t{dest}\n" for name, dest in sorted(share.items()))
with open(os.path.join(kit, "previous"), "w") as out:
    out.write(f"{previous['version']}\n{previous['manifest']}\n")
kit_digest = "sha3-256:" + hashlib.sha3_256(raw).hexdigest()
with open(os.path.join(kit, "installed.json"), "w") as out:
    json.dump({"kit": manifest["name"], "version": target["version"], "manifest": kit_digest, "signed_by": signer,
               "commit": target.get("commit"), "cpu": cpu}, out, indent=1)
print(f"install.sh: kit {manifest['name']} ({kit_digest}) verified: signed by {signer}; {len(entries)} files match")
if upgrade:
    print(f"install.sh: {way} of {prefix}: anticloud {previous['version']} -> {target['version']}")
PY

# 5. Install from the verified copy: no index, every wheel pinned by hash. An upgrade moves the
# previous installation aside first, and puts it back if anything below fails.
{ read -r previous_version; read -r previous_manifest; } < "$work/previous"
old=""
rollback() {
  trap - ERR INT TERM
  rm -rf "$prefix"
  if [ -n "$old" ]; then
    mv "$old" "$prefix" && echo "install.sh: FAILED: $1; the previous installation is back in $prefix" >&2
  else
    echo "install.sh: FAILED: $1; $prefix was removed" >&2
  fi
  exit 1
}
as_owner() {  # as the home's owner, whose files the service must keep being able to write
  if [ "$(id -u)" = "$home_uid" ]; then "$@"; else setpriv --reuid="$home_uid" --regid="$home_gid" --clear-groups -- "$@"; fi
}
if [ "$upgrade" = 1 ]; then
  old=$(mktemp -d "$prefix.previous.XXXXXXXX") && rmdir "$old" && mv "$prefix" "$old"
fi
trap 'rollback "pip could not install the kit"' ERR
trap 'rollback "interrupted"' INT TERM
python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --require-hashes \
  --find-links "$work/files" -r "$work/files/requirements.txt"

# 6. llama.cpp must load on this CPU before the install counts (a missing libgomp, an old glibc).
trap 'rollback "llama.cpp does not run on this machine"' ERR
"$prefix/bin/anticloud" kit cpu

# 7. What the operator needs beside the software, checked like the rest: under PREFIX/share/anticloud.
trap 'rollback "the shared files could not be installed"' ERR
share="$prefix/share/anticloud"
while IFS=$'\t' read -r name dest; do
  install -D -m 0644 "$work/files/$name" "$share/$dest"
done < "$work/share.tsv"
for unit in anticloud.service anticloud.socket; do  # ExecStart= names this installation
  [ "$prefix" = /opt/anticloud ] || sed -i "s|/opt/anticloud/|$prefix/|g" "$share/$unit"
done
install -m 0644 "$work/installed.json" "$share/installed.json"

# 8. The home's ledger records the install: fail closed, no record and the install is undone.
if [ "$import_model" = 1 ] && [ ! -f "$home/ledger.jsonl" ]; then
  trap 'rollback "the home could not be initialised"' ERR
  "$prefix/bin/anticloud" --home "$home" init
  home_uid=$(stat -c %u "$home") home_gid=$(stat -c %g "$home")
fi
if [ -n "$home" ] && [ -f "$home/ledger.jsonl" ]; then
  trap "rollback \"the install could not be recorded in $home's ledger\"" ERR
  if [ "$upgrade" = 1 ]; then
    forced=""; [ "$force_downgrade" = 0 ] || forced=--forced-downgrade
    as_owner "$prefix/bin/anticloud" --home "$home" kit record-install --from "$previous_version" \
      ${previous_manifest:+--from-manifest "$previous_manifest"} $forced
  else
    as_owner "$prefix/bin/anticloud" --home "$home" kit record-install
  fi
fi
trap - ERR INT TERM
[ -z "$old" ] || rm -rf "$old"
echo "install.sh: installed anticloud into $prefix"

# 9. Optionally, the model bundle that travelled with the kit.
# The import reads and hashes each file of the bundle in one pass, so the media is read once there too.
if [ "$import_model" = 1 ]; then
  if [ -n "$pubkey" ]; then
    as_owner "$prefix/bin/anticloud" --home "$home" keys trust "$pubkey" --name kit-publisher >/dev/null 2>&1 || true
  fi
  as_owner "$prefix/bin/anticloud" --home "$home" import "$kit/model"
fi

#!/usr/bin/env bash
# Install anticloud from this kit with no network: check everything first, then install.
#   ./install.sh --prefix DIR (--pubkey PUBLISHER.pub | --home HOME-that-trusts-it) [--import-model --home HOME]
# Needs bash, python3 (standard library only) and openssl. Exit 1: refused, nothing installed; 2: bad usage.
set -euo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
pubkey="" prefix="" home="" import_model=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pubkey) pubkey=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --home) home=$2; shift 2 ;;
    --import-model) import_model=1; shift ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$prefix" ] || { echo "install.sh: --prefix is required" >&2; exit 2; }
[ -n "$pubkey" ] || [ -n "$home" ] || { echo "install.sh: give --pubkey, or --home of an appliance that trusts the publisher" >&2; exit 2; }
[ -e "$prefix" ] && { echo "install.sh: $prefix already exists" >&2; exit 2; }
if [ "$import_model" = 1 ]; then  # before anything is copied or installed
  [ -n "$home" ] || { echo "install.sh: --import-model needs --home" >&2; exit 2; }
  [ -d "$kit/model" ] || { echo "install.sh: REFUSED: --import-model, but the kit carries no model; nothing was installed" >&2; exit 1; }
fi
command -v openssl >/dev/null || { echo "install.sh: REFUSED: openssl is needed to check the signature" >&2; exit 1; }

# 0. A private copy: the media can change under us (a second writer, a swapped USB stick), so
# what is verified and what is installed must be the same bytes. Links and special files are
# copied as what they are, so that the checks below see them and refuse them.
work=$(mktemp -d "${TMPDIR:-/tmp}/anticloud-kit.XXXXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
cp -PR -- "$kit/manifest.json" "$kit/signatures.json" "$kit/files" "$work/" 2>/dev/null || {
  echo "install.sh: REFUSED: the kit could not be copied (manifest.json, signatures.json and files/ are needed); nothing was installed" >&2; exit 1; }

# 1-3. The signature, every file, and the Python version and platform of the copy, before anything is installed.
python3 - "$work" "$pubkey" "$home" <<'PY'
import base64, hashlib, json, os, platform, subprocess, sys, sysconfig, tempfile

kit, pubkey, home = sys.argv[1:4]
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

print(f"install.sh: kit {manifest['name']} verified: signed by {signer}; {len(entries)} files match")
PY

# 4. Install from the verified copy: no index, every wheel pinned by hash.
python3 -m venv "$prefix"
trap 'rm -rf "$prefix"; echo "install.sh: FAILED: pip could not install the kit; $prefix was removed" >&2' ERR
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --require-hashes \
  --find-links "$work/files" -r "$work/files/requirements.txt"
trap - ERR
echo "install.sh: installed anticloud into $prefix"

# 5. Optionally, the model bundle that travelled with the kit.
# The import reads and hashes each file of the bundle in one pass, so the media is read once there too.
if [ "$import_model" = 1 ]; then
  [ -f "$home/ledger.jsonl" ] || "$prefix/bin/anticloud" --home "$home" init
  if [ -n "$pubkey" ]; then
    "$prefix/bin/anticloud" --home "$home" keys trust "$pubkey" --name kit-publisher >/dev/null 2>&1 || true
  fi
  "$prefix/bin/anticloud" --home "$home" import "$kit/model"
fi

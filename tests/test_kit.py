"""The offline install kit, for real: built from a clone of this checkout's commit with the cached llama.cpp
wheel, then installed into a fresh venv inside `unshare --net`, where no package index can be reached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from anticloud.bundle import create_bundle
from anticloud.cpu import BASELINE, cpu_flags, this_cpu
from anticloud.identity import read_private_key
from anticloud.kit import SHARE, Kit, build_kit, manifest_digest, seal_kit
from anticloud.trust import generate_publisher_key
from tests.gguf_builder import build
from tests.kits import ROOT, anticloud, clone, commit_all, install

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("openssl") is None,
                                                   reason="needs unshare and openssl")]
WHEELHOUSE = os.environ.get("ANTICLOUD_WHEELHOUSE")
UNTRACKED = "notes-not-for-the-kit.txt"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    if not WHEELHOUSE or not list(Path(WHEELHOUSE).glob("llama_cpp_python-*.whl")):
        pytest.skip("run through `make test`, which builds the llama.cpp wheel and names its wheelhouse")
    base = tmp_path_factory.mktemp("kit")
    generate_publisher_key(base / "keys")
    key = read_private_key(base / "keys" / "publisher.key")
    weights = base / "tiny.gguf"
    weights.write_bytes(build())
    create_bundle([weights], "tiny", key, base / "model")
    source = clone(base)
    # What a developer's checkout holds beside the commit: an untracked file and a leftover socket.
    (source / UNTRACKED).write_text("not committed\n")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(source / "anticloud.sock"))
    leftover.close()
    return build_kit(key, base / "anticloud-kit", Path(WHEELHOUSE), base / "model", source=source)


@pytest.fixture(scope="module")
def kit(built: Kit) -> Path:
    return built.path


def copy_of(kit: Path, tmp_path: Path) -> Path:
    """A cheap copy (hard links) in which one file can be replaced without touching the original."""
    copy = tmp_path / "kit"
    # Not model/: hard links there would (rightly) make the original's bundle unimportable.
    shutil.copytree(kit, copy, copy_function=os.link, ignore=lambda d, names: ["model"] if d == str(kit) else [])
    return copy


def test_the_kit_holds_pinned_wheels_an_sbom_and_a_signed_manifest(kit: Path) -> None:
    files = kit / "files"
    wheels = sorted(p.name for p in files.glob("*.whl"))
    assert any(w.startswith("llama_cpp_python-0.3.36") for w in wheels)
    assert any(w.startswith("anticloud-") for w in wheels)
    pins = (files / "requirements.txt").read_text().splitlines()
    assert len(pins) == len(wheels) and all("--hash=sha256:" in p for p in pins)
    sbom = json.loads((files / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and len(sbom["components"]) == len(wheels)
    assert all({h["alg"] for h in c["hashes"]} == {"SHA-256", "SHA3-256"} for c in sbom["components"])
    manifest = json.loads((kit / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} == {p.name for p in files.iterdir()}


def test_the_kit_says_which_cpu_build_it_carries_in_kit_json_and_the_sbom(kit: Path) -> None:
    target = json.loads((kit / "files" / "kit.json").read_text())
    # make test's wheel is the Makefile's -march=native build: it needs this machine's instruction sets.
    assert target["cpu"]["build"] == "native" and target["cpu"]["variants"] == []
    assert set(BASELINE) <= set(target["cpu"]["requires"]) <= this_cpu()
    sbom = json.loads((kit / "files" / "sbom.cdx.json").read_text())
    llama = next(c for c in sbom["components"] if c["name"] == "llama_cpp_python")
    properties = {p["name"]: p["value"] for p in llama["properties"]}
    assert properties["anticloud:cpu_build"] == "native"
    assert properties["anticloud:cpu_requires"].split() == target["cpu"]["requires"]


def test_the_kit_is_the_commit_and_what_the_operator_needs_beside_it(built: Kit, kit: Path) -> None:
    import zipfile

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert built.commit == head.strip() == json.loads((kit / "files" / "kit.json").read_text())["commit"]
    assert UNTRACKED in built.left_out  # named, and left out
    wheel = next((kit / "files").glob("anticloud-*.whl"))
    assert not any(UNTRACKED in name for name in zipfile.ZipFile(wheel).namelist())
    for name, (path, _) in SHARE.items():  # the units, the operator's README, the policies, the verifier
        assert (kit / "files" / name).read_bytes() == (ROOT / path).read_bytes(), name
    readme = (kit / "files" / "README.md").read_text()
    for secret in ("keys/appliance.key", "seal.state", "keyring/"):
        assert secret in readme.split("Never back up")[1]  # named as secrets, never to be backed up
        assert secret not in readme.split("Never back up")[0].split("Back up, from")[1]


def test_a_kit_is_built_from_committed_files_only(tmp_path: Path) -> None:
    from anticloud.errors import BundleError

    generate_publisher_key(tmp_path / "keys")
    source = clone(tmp_path)
    with (source / "README.md").open("a") as readme:
        readme.write("an edit nobody committed\n")
    out = tmp_path / "dist" / "kit"
    with pytest.raises(BundleError, match=r"uncommitted changes to tracked files \(README.md\); commit or stash"):
        build_kit(read_private_key(tmp_path / "keys" / "publisher.key"), out, source=source)
    assert not out.exists()


def test_offline_install_then_init_and_verify_from_the_installed_copy(kit: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    run = install(kit, prefix, "--pubkey", str(kit.parent / "keys" / "publisher.pub"))
    assert run.returncode == 0, run.stderr
    assert f"({manifest_digest(kit)}) verified: signed by sha3-256:" in run.stdout
    assert "llama.cpp: native build" in run.stdout  # install.sh loaded it on this CPU before calling it done
    receipt = json.loads((prefix / "share" / "anticloud" / "installed.json").read_text())
    assert receipt["manifest"] == manifest_digest(kit) and receipt["cpu"]["build"] == "native"
    home = tmp_path / "home"
    for args in (["init"], ["verify", "ledger"]):
        step = anticloud(prefix, home, *args)
        assert step.returncode == 0, step.stderr
    assert "INTACT" in step.stdout
    check_the_unit_against(prefix, tmp_path)


def check_the_unit_against(prefix: Path, tmp_path: Path) -> None:
    """The systemd units the kit installed name the executable of that install, and systemd accepts them."""
    share = prefix / "share" / "anticloud"
    repo = (ROOT / "tools" / "anticloud.service").read_text()
    assert "ExecStart=/opt/anticloud/bin/anticloud serve" in repo
    assert "ExecStop=/opt/anticloud/bin/anticloud stop" in repo
    service = (share / "anticloud.service").read_text()
    assert service == repo.replace("/opt/anticloud/", f"{prefix}/")  # install.sh wrote its --prefix in
    assert f"ExecStart={prefix}/bin/anticloud serve" in service and (prefix / "bin" / "anticloud").is_file()
    socket_unit = (ROOT / "tools" / "anticloud.socket").read_text()
    assert (share / "anticloud.socket").read_text() == socket_unit.replace("/opt/anticloud/", f"{prefix}/")
    if shutil.which("systemd-analyze") is None:
        return  # the paths are still checked against the real install just above
    units = tmp_path / "units"
    units.mkdir()
    for unit in ("anticloud.service", "anticloud.socket"):  # together: the socket names the service
        shutil.copy(share / unit, units)
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "anticloud.service"),
                             str(units / "anticloud.socket")], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_a_cpu_the_kit_cannot_run_on_is_refused_before_anything_is_installed(kit: Path, tmp_path: Path) -> None:
    requires = json.loads((kit / "files" / "kit.json").read_text())["cpu"]["requires"]
    lacking = "avx2" if "avx2" in requires else requires[-1]
    older = tmp_path / "cpuinfo"  # this machine's CPU, less one instruction set the kit's llama.cpp uses
    older.write_text(f"processor\t: 0\nflags\t\t: {' '.join(sorted(this_cpu() - {lacking}))}\n")
    assert lacking not in cpu_flags(older.read_text())
    run = install(kit, tmp_path / "venv", "--pubkey", str(kit.parent / "keys" / "publisher.pub"), cpuinfo=older)
    assert run.returncode == 1, run.stderr
    assert f"REFUSED: this CPU lacks {lacking}, which the kit's llama.cpp needs (native build)" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "venv").exists()


def test_a_tampered_wheel_is_refused_and_nothing_installed(kit: Path, tmp_path: Path) -> None:
    copy = copy_of(kit, tmp_path)
    wheel = next((copy / "files").glob("click-*.whl"))
    data = bytearray(wheel.read_bytes())
    wheel.unlink()  # a new file, so the original kit is untouched
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    run = install(copy, tmp_path / "venv", "--pubkey", str(kit.parent / "keys" / "publisher.pub"))
    assert run.returncode == 1 and f"files/{wheel.name} does not match its signed SHA3-256" in run.stderr
    assert "nothing was installed" in run.stderr and not (tmp_path / "venv").exists()


@pytest.mark.parametrize("tamper", ["another key", "an extra file", "a missing file", "malformed signatures",
                                    "no such public key"])
def test_other_tampering_is_refused(kit: Path, tmp_path: Path, tamper: str) -> None:
    copy = copy_of(kit, tmp_path)
    pubkey = kit.parent / "keys" / "publisher.pub"
    expected = {"another key": "no valid signature", "an extra file": "is not in the signed manifest",
                "a missing file": "is missing", "malformed signatures": "signatures.json is malformed",
                "no such public key": "cannot read the publisher key"}[tamper]
    if tamper == "malformed signatures":
        (copy / "signatures.json").unlink()
        (copy / "signatures.json").write_text('{"signatures": [42]}')
    elif tamper == "no such public key":
        pubkey = tmp_path / "nowhere.pub"
    elif tamper == "another key":
        generate_publisher_key(tmp_path / "other")
        pubkey = tmp_path / "other" / "publisher.pub"
    elif tamper == "an extra file":
        (copy / "files" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    else:
        next((copy / "files").glob("click-*.whl")).unlink()
    run = install(copy, tmp_path / "venv", "--pubkey", str(pubkey))
    assert run.returncode == 1 and expected in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "venv").exists()


def test_a_publisher_the_appliance_already_trusts_and_the_model_that_travelled_with_the_kit(
        kit: Path, tmp_path: Path) -> None:
    prefix, home = tmp_path / "venv", tmp_path / "home"
    run = install(kit, prefix, "--pubkey", str(kit.parent / "keys" / "publisher.pub"), "--import-model",
                  "--home", str(home))
    assert run.returncode == 0, run.stderr
    assert "imported tiny" in run.stdout
    again = install(kit, tmp_path / "second", "--home", str(home))  # no --pubkey: the home trusts the publisher
    assert again.returncode == 0, again.stderr
    installs = ledger_kinds(home, "appliance.install")  # once the home was initialised, and again
    assert len(installs) == 2 and all(i["to"]["manifest"] == manifest_digest(kit) for i in installs)  # type: ignore[index]


def test_a_kit_for_another_python_is_refused_even_when_properly_signed(kit: Path, tmp_path: Path) -> None:
    copy = copy_of(kit, tmp_path)
    target = copy / "files" / "kit.json"
    meta = json.loads(target.read_text())
    target.unlink()
    target.write_text(json.dumps({**meta, "python": ["2", "7"]}))
    for name in ("manifest.json", "signatures.json"):  # hard links: replace, never write through
        (copy / name).unlink()
    seal_kit(copy, read_private_key(kit.parent / "keys" / "publisher.key"))
    run = install(copy, tmp_path / "venv", "--pubkey", str(kit.parent / "keys" / "publisher.pub"))
    assert run.returncode == 1 and "the kit is for Python 2.7; this is Python 3." in run.stderr, run.stderr
    assert not (tmp_path / "venv").exists()


def test_pip_checks_the_pins_too_and_a_failed_install_leaves_no_venv(kit: Path, tmp_path: Path) -> None:
    """A signed kit whose pins do not match its wheels (a staging mistake) fails inside pip, and cleans up."""
    copy = copy_of(kit, tmp_path)
    pins = copy / "files" / "requirements.txt"
    lines = pins.read_text().splitlines()
    pins.unlink()
    pins.write_text("\n".join(line[:-1] + ("0" if line[-1] != "0" else "1") if line.startswith("click==") else line
                              for line in lines) + "\n")
    for name in ("manifest.json", "signatures.json"):
        (copy / name).unlink()
    seal_kit(copy, read_private_key(kit.parent / "keys" / "publisher.key"))
    run = install(copy, tmp_path / "venv", "--pubkey", str(kit.parent / "keys" / "publisher.pub"))
    assert run.returncode != 0 and "DO NOT MATCH THE HASHES" in run.stderr, run.stderr
    assert "install.sh: FAILED: pip could not install the kit" in run.stderr
    assert not (tmp_path / "venv").exists()


SWAP_AFTER_VERIFYING = """#!/bin/sh
# install.sh runs `python3 -m venv` right after its checks passed: swap the media then, once.
if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ -e "{flag}" ]; then
  rm -f "{flag}"
  mv -f "{foreign}" "{wheel}" && mv -f "{pins_new}" "{pins}"
fi
exec "{python3}" "$@"
"""


def test_the_kit_installs_the_bytes_it_verified_whatever_the_media_does_meanwhile(kit: Path, tmp_path: Path) -> None:
    """Between the checks and pip, the media is swapped for a foreign wheel with matching pins."""
    import zipfile

    copy = copy_of(kit, tmp_path)
    wheel = next((copy / "files").glob("click-*.whl"))
    foreign = tmp_path / "foreign.whl"
    shutil.copyfile(wheel, foreign)
    with zipfile.ZipFile(foreign, "a") as archive:
        archive.writestr("click/FOREIGN.txt", "not what the publisher signed\n")
    pins = copy / "files" / "requirements.txt"
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    pins_new = tmp_path / "requirements.txt"
    pins_new.write_text("".join(line.split("--hash=sha256:")[0] + f"--hash=sha256:{digest}\n"
                                if line.startswith("click==") else line + "\n"
                                for line in pins.read_text().splitlines()))
    flag, bin_dir = tmp_path / "swap-pending", tmp_path / "bin"
    flag.touch()
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    python3 = shutil.which("python3")
    assert python3 is not None
    wrapper.write_text(SWAP_AFTER_VERIFYING.format(flag=flag, foreign=foreign, wheel=wheel, pins_new=pins_new,
                                                   pins=pins, python3=python3))
    wrapper.chmod(0o755)
    prefix = tmp_path / "venv"
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "bash", str(copy / "install.sh"),
                          "--prefix", str(prefix), "--pubkey", str(kit.parent / "keys" / "publisher.pub")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert not flag.exists(), "the media was never swapped: the test did not test anything"
    assert run.returncode == 0, run.stderr
    installed = list(prefix.glob("lib/python*/site-packages/click/__init__.py"))
    assert installed, "click was not installed"
    assert not (installed[0].parent / "FOREIGN.txt").exists(), "a file the publisher never signed was installed"


def test_a_kit_without_a_model_is_refused_before_anything_is_installed(kit: Path, tmp_path: Path) -> None:
    copy = copy_of(kit, tmp_path)  # copy_of leaves model/ out
    run = install(copy, tmp_path / "venv", "--pubkey", str(kit.parent / "keys" / "publisher.pub"), "--import-model",
                  "--home", str(tmp_path / "home"))
    assert run.returncode == 1 and "the kit carries no model" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "venv").exists() and not (tmp_path / "home").exists()


def test_a_failed_build_is_one_line_and_leaves_no_half_made_kit(tmp_path: Path) -> None:
    from anticloud.errors import BundleError

    generate_publisher_key(tmp_path / "keys")
    key = read_private_key(tmp_path / "keys" / "publisher.key")
    broken = clone(tmp_path)
    (broken / "pyproject.toml").write_text("[project\n")
    commit_all(broken, "break the build")
    dist = tmp_path / "dist"
    with pytest.raises(BundleError) as failed:
        build_kit(key, dist / "kit", source=broken)
    assert "pip could not build the kit's wheels" in str(failed.value) and "\n" not in str(failed.value)
    assert list(dist.iterdir()) == []  # neither the kit nor its hidden partial directory
    not_a_checkout = tmp_path / "plain"
    not_a_checkout.mkdir()
    with pytest.raises(BundleError, match="is not a git checkout"):
        build_kit(key, dist / "kit", source=not_a_checkout)
    odd = socket.socket(socket.AF_UNIX)  # a leftover socket where the kit would go
    odd.bind(str(dist / "kit"))
    odd.close()
    with pytest.raises(BundleError, match="already exists; remove it or choose another --out"):
        build_kit(key, dist / "kit", source=broken)


@pytest.fixture(scope="module")
def newer(built: Kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kit of the same commit with the version bumped to 99.0.0, signed by the same publisher."""
    base = tmp_path_factory.mktemp("newer")
    source = clone(base)
    for name, old, new in (("pyproject.toml", 'version = "{v}"', 'version = "99.0.0"'),
                           ("anticloud/__init__.py", '__version__ = "{v}"', '__version__ = "99.0.0"')):
        text = (source / name).read_text()
        assert old.format(v=built.version) in text
        (source / name).write_text(text.replace(old.format(v=built.version), new))
    commit_all(source, "99.0.0")
    key = read_private_key(built.path.parent / "keys" / "publisher.key")
    return build_kit(key, base / "anticloud-kit", Path(WHEELHOUSE or ""), source=source).path


def ledger_kinds(home: Path, kind: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]
    return [r["data"] for r in records if r["kind"] == kind]


def test_an_upgrade_keeps_the_home_is_recorded_and_a_downgrade_must_be_forced(
        kit: Path, newer: Path, tmp_path: Path) -> None:
    """Over one installation: 0.1.0, upgraded to 99.0.0, a refused downgrade, a forced one that cannot be
    recorded and is undone, then a forced one that is recorded as forced."""
    pubkey = str(kit.parent / "keys" / "publisher.pub")
    prefix, home = tmp_path / "opt", tmp_path / "home"
    assert install(kit, prefix, "--pubkey", pubkey).returncode == 0
    assert anticloud(prefix, home, "init").returncode == 0
    key_before, ledger_before = (home / "keys" / "appliance.key").read_bytes(), (home / "ledger.jsonl").read_bytes()
    old_version = json.loads((kit / "files" / "kit.json").read_text())["version"]

    without_home = install(newer, prefix, "--pubkey", pubkey)
    assert without_home.returncode == 2 and "give --home" in without_home.stderr
    untrusted = install(newer, prefix, "--home", str(home))  # the home trusts no publisher yet
    assert untrusted.returncode == 1 and "no valid signature" in untrusted.stderr
    run = install(newer, prefix, "--pubkey", pubkey, "--home", str(home))
    assert run.returncode == 0, run.stderr
    assert f"upgrade of {prefix}: anticloud {old_version} -> 99.0.0" in run.stdout
    assert anticloud(prefix, home, "--version").stdout.strip().endswith("99.0.0")
    assert not list(tmp_path.glob("opt.previous.*"))
    # The home is kept: the same key, the same ledger with the upgrade appended.
    assert (home / "keys" / "appliance.key").read_bytes() == key_before
    assert (home / "ledger.jsonl").read_bytes().startswith(ledger_before)
    [upgrade] = ledger_kinds(home, "appliance.upgrade")
    acting = upgrade.pop("actor")
    assert isinstance(acting, dict) and acting["uid"] == os.getuid()  # the home's owner, who ran the install
    assert upgrade == {"direction": "upgrade", "forced": False,
                       "from": {"version": old_version, "manifest": manifest_digest(kit)},
                       "to": {"version": "99.0.0", "manifest": manifest_digest(newer),
                              "signed_by": upgrade["to"]["signed_by"], "cpu_build": "native"}}  # type: ignore[index]

    before = (home / "ledger.jsonl").read_bytes()
    refused = install(kit, prefix, "--pubkey", pubkey, "--home", str(home))
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (f"the kit holds anticloud {old_version}, older than the installed 99.0.0; give --force-downgrade"
            in refused.stderr)
    assert (home / "ledger.jsonl").read_bytes() == before
    assert anticloud(prefix, home, "--version").stdout.strip().endswith("99.0.0")

    receipt = (prefix / "share" / "anticloud" / "installed.json").read_bytes()
    home.chmod(0o770)  # the appliance refuses a home its group could change: the record cannot be written
    unrecorded = install(kit, prefix, "--pubkey", pubkey, "--home", str(home), "--force-downgrade")
    assert unrecorded.returncode == 1
    assert "FAILED: the install could not be recorded" in unrecorded.stderr
    assert "the previous installation is back" in unrecorded.stderr
    assert (prefix / "share" / "anticloud" / "installed.json").read_bytes() == receipt
    assert (home / "ledger.jsonl").read_bytes() == before and not list(tmp_path.glob("opt.previous.*"))
    home.chmod(0o700)
    assert anticloud(prefix, home, "--version").stdout.strip().endswith("99.0.0")  # and it runs

    forced = install(kit, prefix, "--pubkey", pubkey, "--home", str(home), "--force-downgrade")
    assert forced.returncode == 0, forced.stderr
    assert anticloud(prefix, home, "--version").stdout.strip().endswith(old_version)
    downgrade = ledger_kinds(home, "appliance.upgrade")[-1]
    assert downgrade["direction"] == "downgrade" and downgrade["forced"] is True
    assert downgrade["from"] == {"version": "99.0.0", "manifest": manifest_digest(newer)}
    verify = anticloud(prefix, home, "verify", "ledger")
    assert verify.returncode == 0 and "INTACT" in verify.stdout


def test_an_upgrade_under_a_running_appliance_is_refused(kit: Path, newer: Path, tmp_path: Path) -> None:
    import fcntl

    pubkey = str(kit.parent / "keys" / "publisher.pub")
    prefix, home = tmp_path / "opt", tmp_path / "home"
    prefix.mkdir()  # any existing prefix is an upgrade; the running engine is refused before it is looked at
    assert anticloud(ROOT / ".venv", home, "init").returncode == 0
    with open(home / "engine.lock", "w") as lock:  # what a running engine holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = install(newer, prefix, "--pubkey", pubkey, "--home", str(home))
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"the appliance at {home} is running; stop it first" in run.stderr

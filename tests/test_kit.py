"""The offline install kit, for real: built from this checkout with the cached llama.cpp wheel, then
installed into a fresh venv inside `unshare --net`, where no package index can be reached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from anticloud.bundle import create_bundle
from anticloud.identity import read_private_key
from anticloud.kit import build_kit, seal_kit
from anticloud.trust import generate_publisher_key
from tests.gguf_builder import build

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("openssl") is None,
                                                   reason="needs unshare and openssl")]
WHEELHOUSE = os.environ.get("ANTICLOUD_WHEELHOUSE")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WHEELHOUSE or not list(Path(WHEELHOUSE).glob("llama_cpp_python-*.whl")):
        pytest.skip("run through `make test`, which builds the llama.cpp wheel and names its wheelhouse")
    base = tmp_path_factory.mktemp("kit")
    generate_publisher_key(base / "keys")
    key = read_private_key(base / "keys" / "publisher.key")
    weights = base / "tiny.gguf"
    weights.write_bytes(build())
    create_bundle([weights], "tiny", key, base / "model")
    return build_kit(key, base / "anticloud-kit", Path(WHEELHOUSE), base / "model").path


def install(kit: Path, prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """install.sh, offline: in a network namespace of its own with nothing but loopback."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--net", "bash", str(kit / "install.sh"),
                           "--prefix", str(prefix), *args], capture_output=True, text=True, timeout=600)


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


def test_offline_install_then_init_and_verify_from_the_installed_copy(kit: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "venv"
    run = install(kit, prefix, "--pubkey", str(kit.parent / "keys" / "publisher.pub"))
    assert run.returncode == 0, run.stderr
    assert "verified: signed by sha3-256:" in run.stdout
    anticloud = prefix / "bin" / "anticloud"
    home = tmp_path / "home"
    for args in (["init"], ["verify", "ledger"]):
        step = subprocess.run(["unshare", "--user", "--map-root-user", "--net", str(anticloud), "--home", str(home),
                               *args], capture_output=True, text=True, timeout=120)
        assert step.returncode == 0, step.stderr
    assert "INTACT" in step.stdout
    check_the_unit_against(prefix, tmp_path)


def check_the_unit_against(prefix: Path, tmp_path: Path) -> None:
    """The systemd unit names the executable the kit installs with `--prefix /opt/anticloud`."""
    unit = (Path(__file__).resolve().parent.parent / "tools" / "anticloud.service").read_text()
    assert "ExecStart=/opt/anticloud/bin/anticloud serve" in unit
    assert "ExecStop=/opt/anticloud/bin/anticloud stop" in unit
    if shutil.which("systemd-analyze") is None:
        return  # the paths are still checked against the real install just above and below
    here = tmp_path / "anticloud.service"
    here.write_text(unit.replace("/opt/anticloud/", f"{prefix}/"))
    shutil.copy(Path(__file__).resolve().parent.parent / "tools" / "anticloud.socket", tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(here), str(tmp_path / "anticloud.socket")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert (prefix / "bin" / "anticloud").is_file()


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
    import hashlib
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
    not_a_project = tmp_path / "source"
    not_a_project.mkdir()
    out = tmp_path / "kit"
    with pytest.raises(BundleError) as failed:
        build_kit(read_private_key(tmp_path / "keys" / "publisher.key"), out, source=not_a_project)
    assert "pip could not build the kit's wheels" in str(failed.value) and "\n" not in str(failed.value)
    assert not out.exists()

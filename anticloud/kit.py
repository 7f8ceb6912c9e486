"""The offline install kit: the appliance and every dependency as wheels, signed like a model bundle.

A kit is a directory ``anticloud-kit-<version>/`` holding::

    install.sh          checks everything below, then installs with pip --no-index --require-hashes
    manifest.json       the same manifest format as a model bundle, over files/
    signatures.json     detached Ed25519 signatures over manifest.json
    files/              the wheels, requirements.txt (--hash pins), sbom.cdx.json (CycloneDX), kit.json,
                        and what the operator needs beside the software (`SHARE`): the kit's README,
                        the systemd units, the policy reference and the standalone ledger verifier
    model/              optional: a signed model bundle, imported by install.sh --import-model

Invariants:

* A kit is built from the tracked files of a git commit (``git archive HEAD``), never from the
  working directory: a tree with uncommitted changes to tracked files is refused, and what was
  left out (untracked files) is named. Sockets, build leftovers and secrets lying in the
  checkout never reach the kit.
* The kit appears at ``out`` whole or not at all: it is built in a hidden directory beside it
  and renamed into place; a failed build removes it.
* ``kit.json`` states the CPU build of the kit's llama.cpp and the CPU flags it needs
  (`anticloud.cpu.describe`); ``install.sh`` refuses a CPU without them before installing.

install.sh needs only a shell, python3 (standard library) and openssl: it checks the Python
version and platform, the signature against a public key the operator holds, and every
file's size and SHA3-256, and installs nothing unless all of that holds. The script itself
cannot vouch for itself: compare its SHA-256, printed at build time, before running it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.bundle import seal
from anticloud.cpu import CpuBuild, describe, this_cpu
from anticloud.errors import BundleError
from anticloud.hashing import hash_fd
from anticloud.manifest import FileEntry, Signature, new_manifest
from anticloud.media import FILES

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = Path(__file__).with_name("kit_install.sh")
_WHEEL = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl\Z")
LLAMA = "llama_cpp_python"

# What travels beside the wheels, by its name in files/ (flat, as a manifest requires): from
# its path in the source tree, to its path under PREFIX/share/anticloud/ once installed.
SHARE = {
    "README.md": ("docs/kit-README.md", "README.md"),
    "anticloud.service": ("tools/anticloud.service", "anticloud.service"),
    "anticloud.socket": ("tools/anticloud.socket", "anticloud.socket"),
    "verify_ledger.py": ("tools/verify_ledger.py", "verify_ledger.py"),
    "policies.README.md": ("policies/README.md", "policies/README.md"),
    "policies.default.toml": ("policies/default.toml", "policies/default.toml"),
}


@dataclass(frozen=True)
class Kit:
    path: Path
    version: str
    wheels: int
    install_sh_sha256: str
    key_id: str
    commit: str
    cpu: CpuBuild
    left_out: tuple[str, ...]


@dataclass(frozen=True)
class _Wheel:
    name: str
    version: str
    sha256: str
    sha3_256: str


def _wheel(path: Path) -> _Wheel:
    """A wheel's name and version, from its file name, and its digests, from one read."""
    match = _WHEEL.match(path.name)
    if match is None:
        raise BundleError(f"{path.name} is not a wheel file name")
    sha256, sha3 = hashlib.sha256(), hashlib.sha3_256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            sha256.update(block)
            sha3.update(block)
    return _Wheel(match["name"], match["version"], sha256.hexdigest(), sha3.hexdigest())


def build_kit(key: Ed25519PrivateKey, out: Path, wheelhouse: Path | None = None, model: Path | None = None,
              source: Path = ROOT) -> Kit:
    """Build a kit of the commit checked out at ``source`` into ``out``, which must not exist yet."""
    if out.exists() or out.is_symlink():
        raise BundleError(f"{out} already exists; remove it or choose another --out")
    commit, left_out = _committed_state(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        kit = _build(key, partial, wheelhouse, model, source, commit, left_out)
        partial.rename(out)  # whole or not at all
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a half-made kit would block the next attempt
        raise
    return replace(kit, path=out)


def _git(source: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise BundleError("git is needed to build a kit (it is built from the committed tree)") from None


def _committed_state(source: Path) -> tuple[str, tuple[str, ...]]:
    """HEAD's commit at ``source`` and the untracked files a kit leaves out; refuse uncommitted changes."""
    head = _git(source, "rev-parse", "--verify", "HEAD^{commit}")
    if head.returncode != 0:
        raise BundleError(f"{source} is not a git checkout with a commit; a kit is built from committed files only")
    status = _git(source, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    entries = [e.decode(errors="replace") for e in status.stdout.split(b"\0") if e]
    changed = [e[3:] for e in entries if not e.startswith("??")]
    if status.returncode != 0 or changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise BundleError(f"uncommitted changes to tracked files ({shown or 'git status failed'}); commit or "
                          "stash them: a kit is built from HEAD's tracked files only")
    return head.stdout.decode().strip(), tuple(sorted(e[3:] for e in entries if e.startswith("??")))


def _export(source: Path, commit: str, tree: Path) -> None:
    """The tracked files of ``commit``, and nothing else, into ``tree``."""
    archive = _git(source, "archive", "--format=tar", commit)
    if archive.returncode != 0:
        raise BundleError(f"git archive failed: {archive.stderr.decode(errors='replace').strip()[:200]}")
    tree.mkdir()
    with tempfile.TemporaryFile() as tar:
        tar.write(archive.stdout)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as unpacked:
            unpacked.extractall(tree, filter="data")


def _build(key: Ed25519PrivateKey, out: Path, wheelhouse: Path | None, model: Path | None, source: Path,
           commit: str, left_out: tuple[str, ...]) -> Kit:
    files = out / FILES
    files.mkdir()
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "source"
        _export(source, commit, tree)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(files), str(tree)]
        if wheelhouse is not None:  # llama-cpp-python, built once by the Makefile
            command += ["--find-links", str(wheelhouse), "--only-binary", "llama-cpp-python"]
        built = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["no message"])[-1]
            raise BundleError(f"pip could not build the kit's wheels (exit {built.returncode}): {last}")
        for name, (path, _) in SHARE.items():
            shutil.copyfile(tree / path, files / name)
    wheels = [_wheel(path) for path in sorted(files.glob("*.whl"))]
    cpu = _cpu_build(files)
    version = next((w.version for w in wheels if w.name == "anticloud"), None)
    if version is None:
        raise BundleError("pip built no anticloud wheel")
    pins = [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in wheels]
    (files / "requirements.txt").write_text("\n".join(pins) + "\n")
    (files / "sbom.cdx.json").write_text(_sbom(wheels, cpu))
    (files / "kit.json").write_text(json.dumps({
        "version": version, "python": platform.python_version_tuple()[:2], "platform": sysconfig.get_platform(),
        "machine": platform.machine(), "commit": commit, "cpu": cpu.as_json(),
        "share": {name: installed for name, (_, installed) in SHARE.items()}}, indent=1) + "\n")
    signature = seal_kit(out, key, version)
    shutil.copy(INSTALL_SH, out / "install.sh")
    (out / "install.sh").chmod(0o755)
    if model is not None:
        shutil.copytree(model, out / "model")
    return Kit(out, version, len(wheels), hashlib.sha256((out / "install.sh").read_bytes()).hexdigest(),
               signature.key_id, commit, cpu, left_out)


def _cpu_build(files: Path) -> CpuBuild:
    """The CPU build of the kit's llama.cpp wheel (a native one needs this machine's CPU flags)."""
    found = sorted(files.glob(f"{LLAMA}-*.whl"))
    if len(found) != 1:
        raise BundleError(f"expected one {LLAMA} wheel in the kit, found {len(found)}")
    with zipfile.ZipFile(found[0]) as wheel:
        try:
            return describe(wheel.namelist(), this_cpu())
        except ValueError as exc:
            raise BundleError(f"{found[0].name}: {exc}") from None


def seal_kit(out: Path, key: Ed25519PrivateKey, version: str | None = None) -> Signature:
    """Describe every file in ``out/files`` in the kit's manifest, and sign it with ``key``."""
    if version is None:
        version = json.loads((out / FILES / "kit.json").read_text())["version"]
    entries = []
    for item in sorted((out / FILES).iterdir()):
        with item.open("rb") as handle:
            sha, size = hash_fd(handle.fileno())
        entries.append(FileEntry(item.name, size, sha))
    return seal(out, new_manifest(f"anticloud-kit-{version}", entries, []), key)


def _sbom(wheels: list[_Wheel], cpu: CpuBuild) -> str:
    """A CycloneDX 1.5 bill of materials, written by cyclonedx-python-lib; llama.cpp's CPU build as properties."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    bom = Bom()
    for wheel in wheels:
        properties = [] if wheel.name != LLAMA else [
            Property(name="anticloud:cpu_build", value=cpu.build),
            Property(name="anticloud:cpu_requires", value=" ".join(cpu.requires)),
            *([Property(name="anticloud:cpu_baseline", value=cpu.baseline)] if cpu.baseline else []),
            *([Property(name="anticloud:cpu_variants", value=" ".join(cpu.variants))] if cpu.variants else [])]
        bom.components.add(Component(
            name=wheel.name, version=wheel.version, type=ComponentType.LIBRARY,
            purl=PackageURL("pypi", wheel.name.lower().replace("_", "-"), wheel.version),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel.sha256),
                    HashType(alg=HashAlgorithm.SHA3_256, content=wheel.sha3_256)],
            properties=properties))
    return str(make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_5).output_as_string(indent=1))


def manifest_digest(kit: Path) -> str:
    """The kit's digest: the SHA3-256 of its signed manifest, which pins every file in files/."""
    return "sha3-256:" + hashlib.sha3_256((kit / "manifest.json").read_bytes()).hexdigest()


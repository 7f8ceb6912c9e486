"""The offline install kit: the appliance and every dependency as wheels, signed like a model bundle.

A kit is a directory ``anticloud-kit-<version>/`` holding::

    install.sh          checks everything below, then installs with pip --no-index --require-hashes
    manifest.json       the same manifest format as a model bundle, over files/
    signatures.json     detached Ed25519 signatures over manifest.json
    files/              the wheels, requirements.txt (--hash pins), sbom.cdx.json (CycloneDX), kit.json
    model/              optional: a signed model bundle, imported by install.sh --import-model

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
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud import __version__
from anticloud.bundle import seal
from anticloud.errors import BundleError
from anticloud.hashing import hash_fd
from anticloud.manifest import FileEntry, Signature, new_manifest
from anticloud.media import FILES

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = Path(__file__).with_name("kit_install.sh")
_WHEEL = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl\Z")


@dataclass(frozen=True)
class Kit:
    path: Path
    wheels: int
    install_sh_sha256: str
    key_id: str


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
    """Build a kit of the project at ``source`` into ``out`` (a new directory, removed again if the build fails)."""
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        raise BundleError(f"{out} already exists; choose a new directory") from None
    try:
        return _build(key, out, wheelhouse, model, source)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a half-made kit would block the next attempt
        raise


def _build(key: Ed25519PrivateKey, out: Path, wheelhouse: Path | None, model: Path | None, source: Path) -> Kit:
    files = out / FILES
    files.mkdir()
    with tempfile.TemporaryDirectory() as scratch:
        # A clean copy: setuptools would otherwise reuse source/build/, stale files and all.
        tree = Path(scratch) / "source"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".*", "build", "dist", "__pycache__", "*.egg-info"))
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(files), str(tree)]
        if wheelhouse is not None:  # llama-cpp-python, built once for the target by the Makefile
            command += ["--find-links", str(wheelhouse), "--only-binary", "llama-cpp-python"]
        built = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["no message"])[-1]
            raise BundleError(f"pip could not build the kit's wheels (exit {built.returncode}): {last}")
    wheels = [_wheel(path) for path in sorted(files.glob("*.whl"))]
    pins = [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in wheels]
    (files / "requirements.txt").write_text("\n".join(pins) + "\n")
    (files / "sbom.cdx.json").write_text(_sbom(wheels))
    (files / "kit.json").write_text(json.dumps({
        "version": __version__, "python": platform.python_version_tuple()[:2], "platform": sysconfig.get_platform(),
        "machine": platform.machine()}, indent=1) + "\n")
    signature = seal_kit(out, key)
    shutil.copy(INSTALL_SH, out / "install.sh")
    (out / "install.sh").chmod(0o755)
    if model is not None:
        shutil.copytree(model, out / "model")
    return Kit(out, len(wheels), hashlib.sha256((out / "install.sh").read_bytes()).hexdigest(), signature.key_id)


def seal_kit(out: Path, key: Ed25519PrivateKey) -> Signature:
    """Describe every file in ``out/files`` in the kit's manifest, and sign it with ``key``."""
    entries = []
    for item in sorted((out / FILES).iterdir()):
        with item.open("rb") as handle:
            sha, size = hash_fd(handle.fileno())
        entries.append(FileEntry(item.name, size, sha))
    return seal(out, new_manifest(f"anticloud-kit-{__version__}", entries, []), key)


def _sbom(wheels: list[_Wheel]) -> str:
    """A CycloneDX 1.5 bill of materials, written by cyclonedx-python-lib."""
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    bom = Bom()
    for wheel in wheels:
        bom.components.add(Component(
            name=wheel.name, version=wheel.version, type=ComponentType.LIBRARY,
            purl=PackageURL("pypi", wheel.name.lower().replace("_", "-"), wheel.version),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=wheel.sha256),
                    HashType(alg=HashAlgorithm.SHA3_256, content=wheel.sha3_256)]))
    return str(make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_5).output_as_string(indent=1))

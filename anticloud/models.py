"""The model store: content-addressed blobs, signed manifests, import and verified open.

Layout under ``HOME/models/``::

    blobs/sha3-256-<hex>                 weights, read-only, named by their SHA3-256
    manifests/<name>/manifest.json       the signed documents, as imported
    manifests/<name>/signatures.json
    .staging-<random>/                   an import in progress; removed whatever happens

Invariants:

* Nothing reaches ``blobs/`` or ``manifests/`` unless the signatures meet the policy, the
  manifest names exactly one GGUF file (checked before a byte is copied), every path, type,
  size and hash matches the manifest, the GGUF passes the bounded pre-parse, every chat
  template is pinned, and ``model.import`` is durably recorded. A rejected import
  leaves the store as it was and records ``model.import.rejected`` with its reason.
* The bundle is opened through directory descriptors with O_NOFOLLOW, and entries are
  checked with lstat before being opened, so no link, device or FIFO is ever followed.
* The media is read once: each file is copied and hashed in the same pass.
* Every load reads the stored manifest and signatures once, checks those bytes against
  today's trust store and uses those same bytes. It copies the blob once into a sealed memfd
  (`anticloud.sealed`), hashes and pre-parses that sealed copy, and hands llama.cpp its
  ``/proc/self/fd/N``: what llama.cpp computes with are the bytes that were hashed, for as
  long as the model is loaded, whatever is written to the store meanwhile. A failure,
  including a copy that does not fit in memory, records ``model.load.refused`` with the file
  and both hashes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anticloud.config import Policy
from anticloud.errors import BundleError, GgufError, LoadRefused, ManifestError, ModelError, SignatureError
from anticloud.fsutil import fsync_dir
from anticloud.gguf import GgufInfo, inspect
from anticloud.hashing import copy_and_hash, hash_fd
from anticloud.home import Home
from anticloud.manifest import (
    MAX_DOCUMENT_BYTES,
    NAME_RE,
    FileEntry,
    Manifest,
    SignatureReport,
    check_signatures,
    digest,
    parse_manifest,
    parse_signatures,
)
from anticloud.progress import byte_progress
from anticloud.sealed import sealed_copy, seals_of
from anticloud.trust import TrustStore
from ledger import LedgerError, LedgerWriter
from ledger.checkpoint import ed25519_valid

MANIFEST, SIGNATURES, FILES = "manifest.json", "signatures.json", "files"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Imported:
    manifest: Manifest
    digest: str
    signers: tuple[str, ...]
    bytes: int


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    manifest: Manifest
    digest: str


class ModelStore:
    def __init__(self, home: Home, read: Callable[[Path], bytes] = Path.read_bytes) -> None:
        self._read = read  # tests swap files between reads through it
        self.root = home.root / "models"
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self._parsed: dict[bytes, StoredModel] = {}  # by the exact bytes: an edited file is parsed afresh

    def blob_path(self, sha: str) -> Path:
        return self.blobs / sha.replace(":", "-")

    # -- import ----------------------------------------------------------------------------

    def import_bundle(self, bundle: Path, trust: TrustStore, policy: Policy, writer: LedgerWriter) -> Imported:
        """Verify and import ``bundle``; on any failure record why, write nothing, and raise."""
        manifest_digest: str | None = None
        try:
            with _BundleReader(bundle) as reader:
                raw = reader.document(MANIFEST)
                manifest_digest = digest(raw)
                manifest = parse_manifest(raw)
                signatures_raw = reader.document(SIGNATURES)
                report = check_signatures(raw, parse_signatures(signatures_raw), trust.lookup, ed25519_valid,
                                          policy.min_signatures)
                if manifest.expired():
                    raise BundleError(f"the manifest expired at {manifest.expires}")
                the_weights(f.path for f in manifest.files)
                if (self.manifests / manifest.name).exists():
                    raise BundleError(f"a model named {manifest.name} is already in the store; remove it first")
                return self._stage_and_commit(reader, manifest, raw, signatures_raw, report, policy, writer)
        except (BundleError, ManifestError, SignatureError, GgufError) as exc:
            self._record_rejection(writer, bundle, exc, manifest_digest)
            raise
        except OSError as exc:  # the store's disk, not the bundle: still refused, still recorded
            failure = ModelError(f"import failed: {exc.strerror} ({exc.filename or 'the model store'})")
            self._record_rejection(writer, bundle, failure, manifest_digest)
            raise failure from None

    def _stage_and_commit(self, reader: _BundleReader, manifest: Manifest, raw: bytes, signatures_raw: bytes,
                          report: SignatureReport, policy: Policy, writer: LedgerWriter) -> Imported:
        sources = reader.files(manifest, policy.max_file_bytes)
        staging = self.root / f".staging-{secrets.token_hex(8)}"
        try:
            for path in (self.blobs, self.manifests):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging.mkdir(mode=0o700)
            total = 0
            for entry in manifest.files:
                total += _copy_verified(sources[entry.path], staging / entry.path, entry)
                if entry.path.endswith(".gguf"):
                    with open(staging / entry.path, "rb") as staged:
                        _check_templates(inspect(staged, policy.gguf), manifest, entry, policy)
            writer.append("model.import", {
                "name": manifest.name, "manifest": digest(raw), "signers": list(report.accepted),
                "files": [{"path": f.path, "sha3_256": f.sha3_256, "size": f.size} for f in manifest.files],
                "chat_templates": [t.sha3_256 for t in manifest.chat_templates], "bytes": total,
            })
            for entry in manifest.files:  # content-addressed: an identical blob may already be here
                blob = self.blob_path(entry.sha3_256)
                if not blob.exists():
                    os.rename(staging / entry.path, blob)
            documents = staging / "manifest"
            documents.mkdir()
            (documents / MANIFEST).write_bytes(raw)
            (documents / SIGNATURES).write_bytes(signatures_raw)
            fsync_dir(documents)
            os.rename(documents, self.manifests / manifest.name)
            fsync_dir(self.blobs)
            fsync_dir(self.manifests)
            return Imported(manifest, digest(raw), report.accepted, total)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for source in sources.values():
                os.close(source)

    @staticmethod
    def _record_rejection(writer: LedgerWriter, bundle: Path, exc: Exception, manifest: str | None) -> None:
        data: dict[str, Any] = {"bundle": str(bundle), "reason": str(exc), "manifest": manifest}
        if isinstance(exc, SignatureError) and isinstance(exc.report, SignatureReport):
            data["rejected_signatures"] = [list(pair) for pair in exc.report.rejected]
        try:
            writer.append("model.import.rejected", data)
        except LedgerError as ledger_exc:
            exc.args = (f"{exc} (the rejection could not be recorded: {ledger_exc})",)

    # -- reading the store -------------------------------------------------------------------

    def list(self) -> list[StoredModel]:
        if not self.manifests.is_dir():
            return []
        return [self.get(p.name) for p in sorted(self.manifests.iterdir()) if NAME_RE.match(p.name)]

    def get(self, name: str) -> StoredModel:
        return self._stored(name, self._document(name, MANIFEST))

    def _stored(self, name: str, raw: bytes) -> StoredModel:
        cached = self._parsed.get(raw)
        if cached is None:
            try:
                cached = self._parsed[raw] = StoredModel(name, parse_manifest(raw), digest(raw))
            except ManifestError as exc:
                raise ModelError(f"the stored manifest of {name} is damaged: {exc}") from None
        return cached

    def _document(self, name: str, which: str) -> bytes:
        if not NAME_RE.match(name) or not (self.manifests / name).is_dir():
            raise ModelError(f"no model named {name!r} in the store; `anticloud models list` shows what is")
        return self._read(self.manifests / name / which)

    def remove(self, name: str, writer: LedgerWriter) -> StoredModel:
        model = self.get(name)
        writer.append("model.remove", {"name": name, "manifest": model.digest})
        trash = self.root / f".removing-{secrets.token_hex(8)}"
        os.rename(self.manifests / name, trash)
        fsync_dir(self.manifests)
        shutil.rmtree(trash)
        still_used = {f.sha3_256 for m in self.list() for f in m.manifest.files}
        for entry in model.manifest.files:
            if entry.sha3_256 not in still_used:
                self.blob_path(entry.sha3_256).unlink(missing_ok=True)
        return model

    # -- load-time verification --------------------------------------------------------------

    def open_verified(self, name: str, trust: TrustStore, policy: Policy, writer: LedgerWriter) -> VerifiedModel:
        """Re-verify ``name`` and return its weights, copied into sealed memory and hashed there."""
        raw = self._document(name, MANIFEST)  # read once: these very bytes are checked and used
        model = self._stored(name, raw)
        evidence: dict[str, Any] = {"model": name, "manifest": model.digest}
        fd = -1
        try:
            check_signatures(raw, parse_signatures(self._document(name, SIGNATURES)), trust.lookup, ed25519_valid,
                             policy.min_signatures)
            if model.manifest.expired():
                raise LoadRefused(f"the manifest of {name} expired at {model.manifest.expires}", evidence)
            weights = [f for f in model.manifest.files if f.path.endswith(".gguf")]
            if len(weights) != 1:
                raise LoadRefused(f"{name} has {len(weights)} GGUF files; exactly one can be loaded", evidence)
            entry = weights[0]
            evidence.update(file=entry.path, expected=entry.sha3_256)
            fd = _sealed_weights(self.blob_path(entry.sha3_256), entry, name, evidence)
            actual, size = hash_fd(fd)  # the sealed copy itself: the pages llama.cpp will map
            evidence.update(actual=actual, size=size)
            if actual != entry.sha3_256 or size != entry.size:
                raise LoadRefused(f"{entry.path} of {name} has SHA3-256 {actual}, the signed manifest says "
                                  f"{entry.sha3_256}", evidence)
            with open(fd, "rb", closefd=False) as handle:
                info = inspect(handle, policy.gguf)
            _check_templates(info, model.manifest, entry, policy)
            return VerifiedModel(model, entry, fd, info)
        except (LoadRefused, SignatureError, GgufError, BundleError, ManifestError, OSError) as exc:
            if fd >= 0:
                os.close(fd)
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            writer.append("model.load.refused", {**evidence, "reason": reason})
            raise LoadRefused(f"refusing to load {name}: {reason}", evidence) from None


def _sealed_weights(blob: Path, entry: FileEntry, name: str, evidence: dict[str, Any]) -> int:
    """Copy the blob into a sealed memfd; the store's file is not read again while the model is loaded."""
    src = os.open(blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        found = os.fstat(src).st_size
        if found != entry.size:  # before reserving memory for it
            evidence.update(size=found)
            raise LoadRefused(f"{entry.path} of {name} is {found} bytes, the signed manifest says {entry.size}",
                              evidence)
        try:
            # The store's pages stay in the page cache only as a reclaimable cache (a quick reload):
            # the copy's pages are the only ones llama.cpp maps, so the weights are not held twice.
            return sealed_copy(src, entry.size, f"anticloud:{name}")
        except OSError as exc:
            raise LoadRefused(f"cannot hold {entry.path} of {name} ({entry.size} bytes) in sealed memory: "
                              f"{exc.strerror or exc}", evidence) from None
    finally:
        os.close(src)


@dataclass
class VerifiedModel:
    """Weights whose hash matched the signed manifest, held in a sealed memfd that nobody can change."""

    model: StoredModel
    file: FileEntry
    fd: int
    info: GgufInfo  # the pre-parse of these very bytes, done once

    @property
    def path(self) -> str:
        """The path to give llama.cpp: the sealed copy that was hashed, whatever the store does."""
        return f"/proc/self/fd/{self.fd}"

    def holding(self) -> dict[str, object]:
        """How the weights are held, as the kernel reports it now: for the ``model.load`` record."""
        return {"weights": "sealed-memfd", "seals": seals_of(self.fd)}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def the_weights(paths: Iterable[str]) -> str:
    """The one GGUF file among a bundle's files: a model is what llama.cpp loads, one file."""
    weights = sorted(p for p in paths if p.endswith(".gguf"))
    if len(weights) != 1:
        held = f"{len(weights)}: {', '.join(weights)}" if weights else "none"
        raise BundleError(f"a model is exactly one .gguf file (a split model must be merged first); the bundle "
                          f"holds {held}")
    return weights[0]


def _check_templates(info: GgufInfo, manifest: Manifest, entry: FileEntry, policy: Policy) -> None:
    found = info.template_hashes
    declared = {t.key: t.sha3_256 for t in manifest.chat_templates if t.file == entry.path}
    if found != declared:
        raise BundleError(f"the chat templates of {entry.path} differ from those the manifest declares")
    for key, sha in sorted(found.items()):
        if policy.require_pinned_templates and sha not in policy.pinned_templates:
            raise BundleError(f"chat template {key} of {entry.path} ({sha}) is not pinned by the policy; review "
                              "it, then add its hash to chat_templates.pinned")


def _copy_verified(source: int, target: Path, entry: FileEntry) -> int:
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o440)
    try:
        with byte_progress(f"importing {entry.path}", entry.size) as advance:
            sha, size = copy_and_hash(source, dst, advance)
        if size != entry.size:
            raise BundleError(f"files/{entry.path} changed size while it was read")
        if sha != entry.sha3_256:
            raise BundleError(f"files/{entry.path} has SHA3-256 {sha}, the manifest says {entry.sha3_256}")
        os.fsync(dst)
    finally:
        os.close(dst)
    return size


class _BundleReader:
    """Reads a bundle through directory descriptors, refusing anything but plain files."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.fd = -1

    def __enter__(self) -> _BundleReader:
        try:
            self.fd = os.open(self.bundle, _DIR_FLAGS)
        except OSError as exc:
            raise BundleError(f"{self.bundle} is not a bundle directory: {exc.strerror}") from None
        names = set(os.listdir(self.fd))
        if names != {MANIFEST, SIGNATURES, FILES}:
            odd = sorted(names ^ {MANIFEST, SIGNATURES, FILES})
            raise BundleError(f"a bundle holds exactly manifest.json, signatures.json and files/ (see: {odd})")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def document(self, name: str) -> bytes:
        fd = _open_plain(self.fd, name, name, MAX_DOCUMENT_BYTES)
        with open(fd, "rb") as handle:
            return handle.read(MAX_DOCUMENT_BYTES + 1)

    def files(self, manifest: Manifest, max_bytes: int) -> dict[str, int]:
        """Open every file the manifest names, after checking the directory holds nothing else."""
        try:
            files_fd = os.open(FILES, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise BundleError(f"files/ is not a plain directory: {exc.strerror}") from None
        opened: dict[str, int] = {}
        try:
            present = set(os.listdir(files_fd))
            for extra in sorted(present - {f.path for f in manifest.files}):
                raise BundleError(f"files/{_shown(extra)} is not in the manifest")
            for entry in manifest.files:
                if entry.path not in present:
                    raise BundleError(f"files/{entry.path} is missing")
                if entry.size > max_bytes:
                    raise BundleError(f"files/{entry.path} is {entry.size} bytes, over the policy limit of {max_bytes}")
                opened[entry.path] = _open_plain(files_fd, entry.path, f"files/{entry.path}", None, entry.size)
        except BaseException:
            for fd in opened.values():
                os.close(fd)
            raise
        finally:
            os.close(files_fd)
        return opened


def _shown(name: str) -> str:
    """A file name from the media, fit for a one-line message: as it is if plain, else escaped."""
    return name if name.isprintable() and len(name) <= 128 else repr(name[:128])


def _open_plain(dir_fd: int, name: str, label: str, max_size: int | None, size: int | None = None) -> int:
    """Open a regular, singly linked file under ``dir_fd``; lstat first, so nothing odd is ever opened."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise BundleError(f"{label}: {exc.strerror}") from None
    if stat.S_ISLNK(before.st_mode):
        raise BundleError(f"{label} is a symbolic link")
    if not stat.S_ISREG(before.st_mode):
        raise BundleError(f"{label} is not a regular file (a directory, device, FIFO or socket)")
    if before.st_nlink != 1:
        raise BundleError(f"{label} has {before.st_nlink} hard links; bundle files must have one")
    if max_size is not None and before.st_size > max_size:
        raise BundleError(f"{label} is over {max_size} bytes")
    if size is not None and before.st_size != size:
        raise BundleError(f"{label} is {before.st_size} bytes, the manifest says {size}")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise BundleError(f"{label} was replaced while it was checked")
    return fd

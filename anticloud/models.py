"""The model store: content-addressed blobs, signed manifests, import and verified open.

Layout under ``HOME/models/``::

    blobs/sha3-256-<hex>                 weights, read-only, named by their SHA3-256
    manifests/<name>/manifest.json       the signed documents, as imported
    manifests/<name>/signatures.json
    .staging-<random>/                   an import in progress; removed whatever happens

Invariants:

* Import and load admit a model by the same rules, `anticloud.admission.admit`: once on the
  signed documents alone, before a byte of the weights is copied, and once more with the
  pre-parse of the copied, hashed bytes.
* Nothing reaches ``blobs/`` or ``manifests/`` unless the bundle is admitted, every path,
  type, size and hash matches the manifest, the GGUF passes the bounded pre-parse, and
  ``model.import`` is durably recorded. A rejected import leaves the store as it was and
  records ``model.import.rejected`` with its reason and evidence.
* The bundle is read through `anticloud.media`, which follows no link and opens no device.
* The media is read once: each file is copied and hashed in the same pass.
* Every load reads the stored manifest and signatures once, checks those bytes against
  today's trust store and uses those same bytes. It copies the blob once into a sealed memfd
  (`anticloud.sealed`), hashes and pre-parses that sealed copy, and hands llama.cpp its
  ``/proc/self/fd/N`` with what the pre-parse found: what llama.cpp computes with are the
  bytes that were hashed and parsed, for as long as the model is loaded, whatever is written
  to the store meanwhile. A failure, including a copy that does not fit in memory, records
  ``model.load.refused`` with the file, both hashes and the evidence.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anticloud.admission import Admission, admit
from anticloud.config import Policy
from anticloud.engines.base import ChatTemplate
from anticloud.errors import (
    AdmissionError,
    BundleError,
    GgufError,
    LoadRefused,
    ManifestError,
    ModelError,
    SignatureError,
)
from anticloud.fsutil import fsync_dir
from anticloud.gguf import GgufInfo, GgufLimits, inspect
from anticloud.hashing import copy_and_hash, hash_fd
from anticloud.home import Home
from anticloud.manifest import NAME_RE, FileEntry, KeyLookup, Manifest, SignatureReport, digest, parse_manifest
from anticloud.media import MANIFEST, SIGNATURES, BundleReader
from anticloud.modelinfo import ModelFacts, facts
from anticloud.progress import byte_progress
from anticloud.sealed import sealed_copy, seals_of
from anticloud.trust import TrustStore
from ledger import LedgerError, LedgerWriter


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
        self.root = home.models
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self._parsed: dict[bytes, StoredModel] = {}  # by the exact bytes: an edited file is parsed afresh
        self._facts: dict[str, ModelFacts] = {}  # by the weights' hash: a blob's name is its content

    def blob_path(self, sha: str) -> Path:
        return self.blobs / sha.replace(":", "-")

    # -- import ----------------------------------------------------------------------------

    def import_bundle(self, bundle: Path, trust: TrustStore, policy: Policy, writer: LedgerWriter) -> Imported:
        """Verify and import ``bundle``; on any failure record why, write nothing, and raise."""
        manifest_digest: str | None = None
        try:
            with BundleReader(bundle) as reader:
                raw = reader.document(MANIFEST)
                manifest_digest = digest(raw)
                signatures_raw = reader.document(SIGNATURES)
                admission = admit(raw, signatures_raw, trust.lookup, policy)  # the documents alone: nothing copied yet
                if (self.manifests / admission.manifest.name).exists():
                    raise BundleError(f"a model named {admission.manifest.name} is already in the store; remove it "
                                      "first")
                return self._stage_and_commit(reader, admission, raw, signatures_raw, trust, policy, writer)
        except (BundleError, ManifestError, SignatureError, GgufError) as exc:
            self._record_rejection(writer, bundle, exc, manifest_digest)
            raise
        except OSError as exc:  # the store's disk, not the bundle: still refused, still recorded
            failure = ModelError(f"import failed: {exc.strerror} ({exc.filename or 'the model store'})")
            self._record_rejection(writer, bundle, failure, manifest_digest)
            raise failure from None

    def _stage_and_commit(self, reader: BundleReader, admission: Admission, raw: bytes, signatures_raw: bytes,
                          trust: TrustStore, policy: Policy, writer: LedgerWriter) -> Imported:
        manifest, report = admission.manifest, admission.report
        sources = reader.files(manifest, policy.max_file_bytes)
        staging = self.root / f".staging-{secrets.token_hex(8)}"
        try:
            for path in (self.blobs, self.manifests):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging.mkdir(mode=0o700)
            total = 0
            for entry in manifest.files:
                total += _copy_verified(sources[entry.path], staging / entry.path, entry)
                if entry == admission.weights:
                    with open(staging / entry.path, "rb") as staged:
                        admit(raw, signatures_raw, trust.lookup, policy, inspect(staged, policy.gguf))
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
        if isinstance(exc, AdmissionError):
            data.update(exc.evidence)
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

    def facts(self, name: str, limits: GgufLimits) -> ModelFacts:
        """What the header of ``name``'s stored weights says (`anticloud.modelinfo`); ModelError if
        they cannot be read or parsed. Descriptive only: every load verifies the weights afresh."""
        entry = self.get(name).manifest.files[0]
        if entry.sha3_256 not in self._facts:
            try:
                with open(self.blob_path(entry.sha3_256), "rb") as handle:
                    self._facts[entry.sha3_256] = facts(inspect(handle, limits))
            except (OSError, GgufError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise ModelError(f"the weights of {name} cannot be described: {reason}") from None
        return self._facts[entry.sha3_256]

    def readiness(self, name: str, lookup: KeyLookup, policy: Policy) -> str | None:
        """Why ``name`` cannot load now, or None if it can as far as can be told without hashing its
        weights: the load's own rules on its signed documents (signatures against ``lookup``, expiry,
        layout, pinned templates), and its weights present at their signed size."""
        try:
            raw = self._document(name, MANIFEST)
            entry = admit(raw, self._document(name, SIGNATURES), lookup, policy).weights
            size = os.stat(self.blob_path(entry.sha3_256)).st_size
        except (AdmissionError, SignatureError, ManifestError, ModelError) as exc:
            return str(exc)
        except OSError as exc:
            return f"its weights cannot be read from the store: {exc.strerror}"
        return None if size == entry.size else f"its weights are {size} bytes, the signed manifest says {entry.size}"

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
            signatures_raw = self._document(name, SIGNATURES)
            entry = admit(raw, signatures_raw, trust.lookup, policy).weights  # before memory is taken for a copy
            evidence.update(file=entry.path, expected=entry.sha3_256)
            fd = _sealed_weights(self.blob_path(entry.sha3_256), entry, name, evidence)
            actual, size = hash_fd(fd)  # the sealed copy itself: the pages llama.cpp will map
            evidence.update(actual=actual, size=size)
            if actual != entry.sha3_256 or size != entry.size:
                raise LoadRefused(f"{entry.path} of {name} has SHA3-256 {actual}, the signed manifest says "
                                  f"{entry.sha3_256}", evidence)
            with open(fd, "rb", closefd=False) as handle:
                info = inspect(handle, policy.gguf)
            return VerifiedModel(model, entry, fd, info, admit(raw, signatures_raw, trust.lookup, policy, info))
        except (LoadRefused, SignatureError, GgufError, BundleError, ManifestError, OSError) as exc:
            if fd >= 0:
                os.close(fd)
            if isinstance(exc, AdmissionError):
                evidence.update(exc.evidence)
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
    info: GgufInfo  # the pre-parse of these very bytes, done once: the engine is given it, not a second parse
    admission: Admission  # the verdict, its last rule applied to ``info``

    @property
    def path(self) -> str:
        """The path to give llama.cpp: the sealed copy that was hashed, whatever the store does."""
        return f"/proc/self/fd/{self.fd}"

    @property
    def chat_templates(self) -> dict[str, ChatTemplate]:
        """The chat templates the pre-parse found, by metadata key, each with the hash the signed manifest declares."""
        return {key: ChatTemplate(sha, self.info.chat_templates[key]) for key, sha in self.admission.templates.items()}

    def holding(self) -> dict[str, object]:
        """How the weights are held, as the kernel reports it now: for the ``model.load`` record."""
        return {"weights": "sealed-memfd", "seals": seals_of(self.fd)}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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

"""Model manifests and their detached signatures: pure data and rules, no I/O.

A manifest is the canonical JSON (the ledger's encoding, `ledger.canonical`) of::

    {"chat_templates": [{"file": F, "key": K, "sha3_256": "sha3-256:<hex>"}, ...],
     "created": T, "expires": T | null, "files": [{"path": P, "sha3_256": H, "size": N}, ...],
     "name": NAME, "type": "anticloud.model.manifest", "v": 1}

with ``files`` sorted by path and ``chat_templates`` by (file, key). Paths are plain file
names (no directories), so a bundle cannot name anything outside itself. Its digest is the
SHA3-256 of those bytes. Signatures are detached Ed25519 signatures over the same bytes,
kept in ``signatures.json``: ``{"signatures": [{"key_id": K, "signature": <base64>}, ...],
"type": "anticloud.model.signatures", "v": 1}``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anticloud.errors import ManifestError, SignatureError
from ledger import canonical_bytes, encode_checked, loads_strict, sha3_tag, utc_timestamp, valid_ts

MANIFEST_TYPE = "anticloud.model.manifest"
SIGNATURES_TYPE = "anticloud.model.signatures"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
HASH_RE = re.compile(r"sha3-256:[0-9a-f]{64}\Z")
MAX_FILES = 256
MAX_DOCUMENT_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha3_256: str


@dataclass(frozen=True, slots=True)
class TemplateEntry:
    file: str
    key: str
    sha3_256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    files: tuple[FileEntry, ...]
    chat_templates: tuple[TemplateEntry, ...]
    created: str
    expires: str | None = None

    def to_bytes(self) -> bytes:
        return canonical_bytes({
            "chat_templates": [{"file": t.file, "key": t.key, "sha3_256": t.sha3_256} for t in self.chat_templates],
            "created": self.created,
            "expires": self.expires,
            "files": [{"path": f.path, "sha3_256": f.sha3_256, "size": f.size} for f in self.files],
            "name": self.name,
            "type": MANIFEST_TYPE,
            "v": 1,
        })

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= utc_timestamp(now)


def new_manifest(name: str, files: Iterable[FileEntry], templates: Iterable[TemplateEntry],
                 expires: datetime | None = None) -> Manifest:
    manifest = Manifest(name, tuple(sorted(files, key=lambda f: f.path)),
                        tuple(sorted(templates, key=lambda t: (t.file, t.key))), utc_timestamp(),
                        None if expires is None else utc_timestamp(expires))
    return parse_manifest(manifest.to_bytes())  # the same rules the importer applies


def digest(raw: bytes) -> str:
    return sha3_tag(raw)


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and check a manifest; raise ManifestError naming the first problem."""
    doc = _document(raw, "manifest.json")
    _members(doc, {"chat_templates", "created", "expires", "files", "name", "type", "v"}, "manifest")
    if doc["type"] != MANIFEST_TYPE or doc["v"] != 1:
        raise ManifestError(f"manifest type must be {MANIFEST_TYPE} version 1")
    name = doc["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(f"model name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    for key in ("created", "expires"):
        value = doc[key]
        if not (value is None and key == "expires") and not valid_ts(value):
            raise ManifestError(f"manifest {key} must be an RFC 3339 UTC time with microseconds")
    files = doc["files"]
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise ManifestError(f"manifest files must list 1 to {MAX_FILES} entries")
    entries = tuple(_file_entry(f) for f in files)
    paths = [f.path for f in entries]
    if len(set(paths)) != len(paths):
        raise ManifestError(f"manifest lists {_first_duplicate(paths)!r} twice")
    templates = doc["chat_templates"]
    if not isinstance(templates, list):
        raise ManifestError("manifest chat_templates must be a list")
    template_entries = tuple(_template_entry(t, set(paths)) for t in templates)
    manifest = Manifest(name, entries, template_entries, doc["created"], doc["expires"])
    if manifest.to_bytes() != raw:
        raise ManifestError("manifest.json is not in canonical form (sorted members and entries, no spaces)")
    return manifest


def _file_entry(entry: Any) -> FileEntry:
    _members(entry, {"path", "sha3_256", "size"}, "a files entry")
    path, size, sha = entry["path"], entry["size"], entry["sha3_256"]
    if not isinstance(path, str) or not FILE_NAME_RE.match(path) or path in (".", ".."):
        raise ManifestError(f"file path {path!r} must be a plain file name: no directories, '..' or leading '/'")
    if type(size) is not int or size < 0:
        raise ManifestError(f"size of {path} must be a non-negative integer")
    if not isinstance(sha, str) or not HASH_RE.match(sha):
        raise ManifestError(f"sha3_256 of {path} must be sha3-256:<64 hex digits>")
    return FileEntry(path, size, sha)


def _template_entry(entry: Any, paths: set[str]) -> TemplateEntry:
    _members(entry, {"file", "key", "sha3_256"}, "a chat_templates entry")
    if entry["file"] not in paths:
        raise ManifestError(f"chat template names {entry['file']!r}, which is not in files")
    if not isinstance(entry["key"], str) or not isinstance(entry["sha3_256"], str) \
            or not HASH_RE.match(entry["sha3_256"]):
        raise ManifestError("a chat_templates entry needs a key and a sha3-256:<hex> hash")
    return TemplateEntry(entry["file"], entry["key"], entry["sha3_256"])


# -- signatures ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    signature: bytes


def signatures_bytes(signatures: Iterable[Signature]) -> bytes:
    ordered = sorted(signatures, key=lambda s: s.key_id)
    return canonical_bytes({"signatures": [{"key_id": s.key_id, "signature": base64.b64encode(s.signature).decode()}
                                           for s in ordered], "type": SIGNATURES_TYPE, "v": 1})


def parse_signatures(raw: bytes) -> tuple[Signature, ...]:
    doc = _document(raw, "signatures.json")
    _members(doc, {"signatures", "type", "v"}, "signatures.json")
    if doc["type"] != SIGNATURES_TYPE or doc["v"] != 1 or not isinstance(doc["signatures"], list):
        raise ManifestError(f"signatures.json must be {SIGNATURES_TYPE} version 1 with a list of signatures")
    found = []
    for entry in doc["signatures"]:
        _members(entry, {"key_id", "signature"}, "a signature entry")
        try:
            sig = base64.b64decode(entry["signature"], validate=True) if isinstance(entry["signature"], str) else b""
        except ValueError:  # binascii.Error, and a signature that is not ASCII at all
            sig = b""
        if not isinstance(entry["key_id"], str) or not HASH_RE.match(entry["key_id"]) or len(sig) != 64:
            raise ManifestError("a signature entry needs a key_id (sha3-256:<hex>) and 64 bytes in base64")
        found.append(Signature(entry["key_id"], sig))
    key_ids = [s.key_id for s in found]
    if len(set(key_ids)) != len(key_ids):
        raise ManifestError(f"signatures.json lists key {_first_duplicate(key_ids)} twice")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class SignatureReport:
    """Evidence of a threshold check: which keys counted, and why the others did not."""

    accepted: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]


# key id -> (raw public key, or None when the key is unknown; revoked?)
KeyLookup = Callable[[str], tuple[bytes | None, bool]]
Verify = Callable[[bytes, bytes, bytes], bool]


def check_signatures(manifest_raw: bytes, signatures: Iterable[Signature], lookup: KeyLookup, verify: Verify,
                     min_signatures: int) -> SignatureReport:
    """Count valid signatures by distinct trusted, unrevoked keys; raise SignatureError below the threshold."""
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    for sig in signatures:
        public_key, revoked = lookup(sig.key_id)
        if public_key is None:
            rejected.append((sig.key_id, "not a trusted key"))
        elif revoked:
            rejected.append((sig.key_id, "revoked"))
        elif not verify(public_key, manifest_raw, sig.signature):
            rejected.append((sig.key_id, "signature does not verify"))
        else:
            accepted.append(sig.key_id)
    report = SignatureReport(tuple(accepted), tuple(rejected))
    if len(accepted) < min_signatures:
        why = "; ".join(f"{k}: {reason}" for k, reason in rejected) or "no signatures"
        raise SignatureError(f"{len(accepted)} valid signature(s) by trusted keys, policy requires "
                             f"{min_signatures} ({why})", report)
    return report


def _document(raw: bytes, name: str) -> dict[str, Any]:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ManifestError(f"{name} is over {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = loads_strict(raw)
        encode_checked(doc)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{name} is not valid JSON: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # noqa: BLE001 -- a lone surrogate and the like: still just bad input
        raise ManifestError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{name} must be a JSON object")
    return doc


def _members(doc: Any, expected: set[str], what: str) -> None:
    if not isinstance(doc, dict) or set(doc) != expected:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(f"{what} must have exactly the members {', '.join(sorted(expected))} (got {got})")


def _first_duplicate(items: list[str]) -> str:
    seen: set[str] = set()
    return next(x for x in items if x in seen or seen.add(x))  # type: ignore[func-returns-value]


def now() -> datetime:
    return datetime.now(UTC)

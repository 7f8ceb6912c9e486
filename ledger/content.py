"""Sealed content, as the records state it: the content references, their erasure, and the report
a verifier gives on the content store (docs/ledger-format.md section 15).

The rules are pure: `content_refs` reads one record's ``sealed`` member, `erasure_of` one
``content.erased`` record, and `ContentTally` follows both along the ledger, in its order.
The one function that reads a file, `file_digest`, is the content store's edge; `ContentTally.report`
receives it (or nothing, when no store was given) and never opens a file itself.

Invariants:

* A reference in record R is erased exactly when a ``content.erased`` record after R names its
  key group in ``keys`` or its inference in ``inferences``. One before R erases nothing of R's:
  the tally applies an erasure only to the references it holds when it meets it, and a merged
  run's erasures only to the runs before it.
* A malformed reference is a content finding, never a chain fault: the record that carries it
  was hashed, canonical and linked, and the chain proves who wrote it. It is reported with its
  reason, counted in no other number, and it can be neither checked nor erased.
* Memory: a reference not yet erased is held as one 52-byte string (seq, field, key group,
  digest), grouped by inference; its ids are recomputed from those bytes. Erased ones are
  counted and dropped. Every erasure is O(references it erases + inferences it names).
"""

from __future__ import annotations

import hashlib
import heapq
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.record import Record

SEALED_KINDS = {"inference.begin": ("input", "messages", "prompt"), "inference.end": ("output",)}
ERASED_KIND = "content.erased"
ALG = "aes-256-gcm"
REF_MEMBERS = ("alg", "id", "key", "key_commitment", "sha3_256")
FIRST = 10  # how many of each finding the report lists
# The members a sealed field must not also be recorded under (plaintext, or the plaintext's hash).
_LEAKS = {"prompt": ("prompt", "prompt_sha3_256"), "messages": ("messages", "prompt_sha3_256"),
          "input": ("input", "input_sha3_256"), "output": ("output", "output_sha3_256")}
_FIELDS = ("input", "messages", "output", "prompt")  # a field's code is its index: codes sort as names do
INFERENCE_RE = re.compile(r"[0-9a-f]{16}\Z")
DIGEST_RE = re.compile(r"sha3-256:[0-9a-f]{64}\Z")
KEY_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])-([0-9a-f]{16})\Z")
_REF = struct.Struct(">QB3s8s32s")  # seq, field code, key group (year, month; 8 bytes), SHA3-256


@dataclass(frozen=True, slots=True)
class ContentRef:
    """One content reference of a record: where its ciphertext is and what it must hash to."""

    seq: int
    field: str
    id: str
    alg: str
    sha3_256: str
    key_commitment: str
    key: str

    @property
    def inference(self) -> str:
        return self.id.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class MalformedContent:
    """A reference (or an erasure) the verifier cannot use, and why."""

    seq: int
    field: str | None
    id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "field": self.field, "id": self.id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ContentFinding:
    """A reference that is not erased whose file is missing (``actual`` None) or hashes otherwise."""

    seq: int
    field: str
    id: str
    expected: str
    actual: str | None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "field": self.field, "id": self.id, "expected": self.expected,
                "actual": self.actual}


def content_refs(seq: int, kind: str, data: Mapping[str, Any]) -> tuple[list[ContentRef], list[MalformedContent]]:
    """The content references of one record, and those it carries malformed (in field order)."""
    fields = SEALED_KINDS.get(kind)
    if fields is None or "sealed" not in data:
        return [], []
    sealed = data["sealed"]
    if not isinstance(sealed, dict) or not sealed:
        return [], [MalformedContent(seq, None, None, "sealed is not an object naming at least one field")]
    refs, bad = [], []
    for name in sorted(sealed):
        try:
            refs.append(_reference(seq, kind, fields, data, name, sealed[name]))
        except _Bad as why:
            ident = sealed[name].get("id") if isinstance(sealed[name], dict) else None
            bad.append(MalformedContent(seq, name, ident if isinstance(ident, str) else None, str(why)))
    return refs, bad


class _Bad(ValueError):
    """Internal: why one reference is malformed."""


def _reference(seq: int, kind: str, fields: tuple[str, ...], data: Mapping[str, Any], name: str,
               ref: Any) -> ContentRef:
    if name not in fields:
        raise _Bad(f"{kind} seals {', '.join(fields)}, not {name}")
    if not isinstance(ref, dict) or tuple(sorted(ref)) != REF_MEMBERS:
        raise _Bad("a content reference is an object of exactly " + ", ".join(REF_MEMBERS))
    inference = data.get("id")
    if not isinstance(inference, str) or not INFERENCE_RE.match(inference):
        raise _Bad("the record's id is not an inference id (16 lowercase hex digits)")
    if ref["id"] != f"{inference}.{name}":
        raise _Bad(f"id is not {inference}.{name} (the record's inference, then the field)")
    if ref["alg"] != ALG:
        raise _Bad(f"alg is not {ALG}")
    for member in ("sha3_256", "key_commitment"):
        if not isinstance(ref[member], str) or not DIGEST_RE.match(ref[member]):
            raise _Bad(f"{member} is not sha3-256:<64 lowercase hex digits>")
    if not isinstance(ref["key"], str) or not KEY_RE.match(ref["key"]):
        raise _Bad("key is not a key group id (YYYY-MM-<16 lowercase hex digits>)")
    leaked = next((member for member in _LEAKS[name] if member in data), None)
    if leaked is not None:
        raise _Bad(f"the record also carries {leaked} beside its sealed {name}")
    return ContentRef(seq, name, ref["id"], ref["alg"], ref["sha3_256"], ref["key_commitment"], ref["key"])


def erasure_of(data: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The key groups and the inferences a ``content.erased`` record erases; ValueError if it is
    malformed (then it erases nothing: what it meant cannot be known)."""
    keys, inferences = data.get("keys", []), data.get("inferences", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and KEY_RE.match(k) for k in keys):
        raise ValueError("content.erased: keys is not a list of key group ids")
    if not isinstance(inferences, list) or not all(isinstance(i, str) and INFERENCE_RE.match(i)
                                                   for i in inferences):
        raise ValueError("content.erased: inferences is not a list of inference ids")
    return frozenset(keys), frozenset(inferences)


def content_path(store: Path, ident: str) -> Path:
    """Where the content store keeps the file of a (well-formed) reference's id."""
    return store / ident[:2] / ident


def file_digest(path: Path) -> str | None:
    """``sha3-256:<hex>`` of the whole file, or None if there is none. OSError if it cannot be read."""
    digest = hashlib.sha3_256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return "sha3-256:" + digest.hexdigest()


def _pack_key(key: str) -> bytes:
    match = KEY_RE.match(key)
    assert match is not None
    return struct.pack(">HB", int(match[1]), int(match[2])) + bytes.fromhex(match[3])


def _unpack_key(packed: bytes) -> str:
    year, month = struct.unpack(">HB", packed[:3])
    return f"{year:04d}-{month:02d}-{packed[3:].hex()}"


@dataclass(slots=True)
class ContentTally:
    """The content references of a run of records, fed in ledger order: a verifier's `Tally`.

    ``pending`` maps an inference (its id as an int) to its references not yet erased, packed;
    ``by_key`` lists the inferences that held a reference under each key group (entries go stale
    when an inference is erased by its id: an erasure by key skips them). ``erased_keys`` and
    ``erased_inferences`` are every erasure of the run, for `merge` to apply to the runs before it.
    """

    sealed: int = 0
    erased: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)
    by_key: dict[bytes, list[int]] = field(default_factory=dict)
    erased_keys: set[bytes] = field(default_factory=set)
    erased_inferences: set[int] = field(default_factory=set)
    malformed: list[MalformedContent] = field(default_factory=list)
    malformed_count: int = 0

    def feed(self, record: Record) -> None:
        if record.kind in SEALED_KINDS:
            refs, bad = content_refs(record.seq, record.kind, record.data)
            for ref in refs:
                self._hold(ref)
            self._bad(bad)
        elif record.kind == ERASED_KIND:
            try:
                keys, inferences = erasure_of(record.data)
            except ValueError as exc:
                self._bad([MalformedContent(record.seq, None, None, str(exc))])
                return
            packed = {_pack_key(k) for k in keys}
            numbers = {int(i, 16) for i in inferences}
            self._erase(packed, numbers)
            self.erased_keys |= packed
            self.erased_inferences |= numbers

    def merge(self, later: ContentTally) -> None:
        """Take in the tally of the run that follows: its erasures apply to this run's references."""
        self._erase(later.erased_keys, later.erased_inferences)
        for inference, refs in later.pending.items():
            had = self.pending.get(inference, b"")
            self.pending[inference] = had + refs
            for key in {refs[i + 9:i + 20] for i in range(0, len(refs), _REF.size)}:
                if not _has_key(had, key):
                    self.by_key.setdefault(key, []).append(inference)
        self.sealed += later.sealed
        self.erased += later.erased
        self.erased_keys |= later.erased_keys
        self.erased_inferences |= later.erased_inferences
        self._bad(later.malformed, later.malformed_count)

    def _hold(self, ref: ContentRef) -> None:
        inference, key = int(ref.inference, 16), _pack_key(ref.key)
        had = self.pending.get(inference, b"")
        self.pending[inference] = had + _REF.pack(ref.seq, _FIELDS.index(ref.field), key[:3], key[3:],
                                                  bytes.fromhex(ref.sha3_256[9:]))
        if not _has_key(had, key):
            self.by_key.setdefault(key, []).append(inference)
        self.sealed += 1

    def _erase(self, keys: set[bytes] | frozenset[bytes], inferences: set[int] | frozenset[int]) -> None:
        for inference in inferences:
            self.erased += len(self.pending.pop(inference, b"")) // _REF.size
        for key in keys:
            for inference in self.by_key.pop(key, ()):
                refs = self.pending.get(inference)
                if refs is None:
                    continue
                kept = b"".join(refs[i:i + _REF.size] for i in range(0, len(refs), _REF.size)
                                if refs[i + 9:i + 20] != key)
                self.erased += (len(refs) - len(kept)) // _REF.size
                if kept:
                    self.pending[inference] = kept
                else:
                    del self.pending[inference]

    def _bad(self, found: list[MalformedContent], count: int | None = None) -> None:
        self.malformed += found[:FIRST - len(self.malformed)]
        self.malformed_count += len(found) if count is None else count

    def remaining(self) -> Iterator[tuple[int, str, str, str, str]]:
        """Every reference not erased: (seq, field, id, key group, sha3_256), grouped by inference."""
        for inference, refs in self.pending.items():
            for seq, code, key_ym, key_id, digest in _REF.iter_unpack(refs):
                name = _FIELDS[code]
                yield seq, name, f"{inference:016x}.{name}", _unpack_key(key_ym + key_id), "sha3-256:" + digest.hex()

    def report(self, digest_of: Callable[[str], str | None] | None = None, store: str | None = None) -> ContentReport:
        """The report; with ``digest_of`` (a reference's id to its file's digest, None if it has no
        file), every reference not erased is checked against it."""
        found: tuple[list[tuple[int, int, ContentFinding]], list[tuple[int, int, ContentFinding]]] = ([], [])
        counts = [0, 0]
        checked = 0
        if digest_of is not None:
            for seq, name, ident, _, expected in self.remaining():
                checked += 1
                actual = digest_of(ident)
                if actual != expected:
                    which = 0 if actual is None else 1
                    counts[which] += 1
                    _keep_first(found[which], ContentFinding(seq, name, ident, expected, actual))
        missing, mismatched = (tuple(entry[2] for entry in sorted(kept, reverse=True)) for kept in found)
        return ContentReport(self.sealed, self.erased, checked, missing, counts[0], mismatched, counts[1],
                             tuple(self.malformed), self.malformed_count, store)


def _has_key(refs: bytes, key: bytes) -> bool:
    return any(refs[i + 9:i + 20] == key for i in range(0, len(refs), _REF.size))


def _keep_first(kept: list[tuple[int, int, ContentFinding]], finding: ContentFinding) -> None:
    """Keep the FIRST findings by (seq, field): a heap whose top is the last of them. A record
    seals a field once, so (seq, field) never ties and the findings themselves are never compared."""
    entry = (-finding.seq, -_FIELDS.index(finding.field), finding)
    if len(kept) < FIRST:
        heapq.heappush(kept, entry)
    elif entry > kept[0]:
        heapq.heapreplace(kept, entry)


@dataclass(frozen=True, slots=True)
class ContentReport:
    """What the verdict says of sealed content (the verdict's ``content``)."""

    sealed: int  # well-formed references in the records verified
    erased: int  # of them, erased by a later content.erased
    checked: int  # of the rest, checked against the content store (0 without one)
    missing: tuple[ContentFinding, ...]  # the first FIRST of each finding, by seq then field
    missing_count: int
    mismatched: tuple[ContentFinding, ...]
    mismatched_count: int
    malformed: tuple[MalformedContent, ...]
    malformed_count: int
    store: str | None  # the content store checked, if any

    @property
    def faulty(self) -> bool:
        """A reference that is not erased is missing, mismatched or malformed: exit 7 for an intact chain."""
        return bool(self.missing_count or self.mismatched_count or self.malformed_count)

    def to_json(self) -> dict[str, Any]:
        return {"sealed": self.sealed, "erased": self.erased, "checked": self.checked, "store": self.store,
                "missing": [f.to_json() for f in self.missing], "missing_count": self.missing_count,
                "mismatched": [f.to_json() for f in self.mismatched], "mismatched_count": self.mismatched_count,
                "malformed": [m.to_json() for m in self.malformed], "malformed_count": self.malformed_count}

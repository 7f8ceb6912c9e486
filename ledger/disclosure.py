"""Disclosed content in an evidence package: ``content.jsonl`` checked against its segment
(docs/ledger-format.md, section 11 rule 9, and section 15).

A package may disclose the sealed content of its in-scope records: one line per sealed field,
carrying the field's data key, its content file (the ciphertext) and its value in the clear, or
saying the field was erased. The records commit to the ciphertext (``sha3_256``) and to the key
(``key_commitment``); the associated data binds the ciphertext to this ledger, inference and
field. So a line is checked against its record alone: it needs no key of the appliance's, and a
data key opens one inference only.

Invariants:

* Every well-formed reference of an in-scope record has exactly one line, in order of seq, then
  field name: a package either discloses a field or shows it was erased, and withholds none.
* An erased line is backed by a ``content.erased`` record of the segment, after the record and
  pinned by the checkpoint, that names the reference's key group or inference; a disclosed line
  is one no such record erases.
* The plaintext is compared only where AES-GCM is available (``open_sealed``); without it the
  verdict says the plaintext was not checked, never that it held.

Pure: `DisclosureCheck` is fed the segment's records and then the file's lines; `ledger.package`
does the reading.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.canonical import canonical_bytes, loads_strict
from ledger.content import ERASED_KIND, SEALED_KINDS, ContentRef, content_refs, erasure_of
from ledger.errors import EncodingError
from ledger.record import Record
from ledger.segment import MANIFEST_FILE, fault

CONTENT_FILE = "content.jsonl"
MAX_CONTENT_LINE_BYTES = 256 << 20  # a line without its newline: a content file in base64, and its value
KEY_COMMIT_LABEL = b"anticloud/content-key/v1\x00"
NONCE_BYTES, TAG_BYTES = 12, 16
DISCLOSED_MEMBERS = ("ciphertext", "data_key", "field", "id", "seq", "value")
ERASED_MEMBERS = ("erased_at", "field", "id", "seq", "state")
_KEY_RE = re.compile(r"[0-9a-f]{64}\Z")

# AES-256-GCM decryption: (key, nonce, ciphertext with its tag, associated data) -> plaintext, or None
# when the tag does not verify.
ContentOpen = Callable[[bytes, bytes, bytes, bytes], bytes | None]


def key_commitment(data_key: bytes) -> str:
    """A reference's ``key_commitment``: SHA3-256 of a fixed label, a zero byte and the data key."""
    return "sha3-256:" + hashlib.sha3_256(KEY_COMMIT_LABEL + data_key).hexdigest()


def content_ad(ledger_id: str, inference: str, field: str) -> bytes:
    """The associated data a field is sealed under: it names the ledger, the inference and the field."""
    return canonical_bytes({"field": field, "id": f"{inference}.{field}", "inference": inference,
                            "ledger": ledger_id, "v": 1})


def aesgcm_open(key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(nonce, sealed, ad)
    except InvalidTag:
        return None


@dataclass(frozen=True, slots=True)
class DisclosureSummary:
    """What ``content.jsonl`` holds, once every line checked: the verdict's ``content``."""

    disclosed: int
    erased: int
    plaintext_checked: bool

    def to_json(self) -> dict[str, Any]:
        return {"disclosed": self.disclosed, "erased": self.erased, "plaintext_checked": self.plaintext_checked}


class DisclosureCheck:
    """Feed it every record of the segment (`feed`), then each line of ``content.jsonl`` (`line`),
    then `finish`. A broken rule raises `ledger.segment.SegmentFault` naming the line."""

    def __init__(self, ledger_id: str, runs: list[list[int]], pinned_through: int,
                 open_sealed: ContentOpen | None) -> None:
        self.ledger_id, self.pinned_through, self.open_sealed = ledger_id, pinned_through, open_sealed
        self.starts = [a for a, _ in runs]
        self.runs = runs
        self.refs: dict[tuple[int, str], ContentRef] = {}  # the in-scope references, by (seq, field)
        self.erasures: dict[int, tuple[frozenset[str], frozenset[str]]] = {}  # seq -> (keys, inferences)
        self.seen: set[tuple[int, str]] = set()
        self.last: tuple[int, str] | None = None
        self.lines = self.offset = self.disclosed = self.erased = 0

    def in_scope(self, seq: int) -> bool:
        at = bisect_right(self.starts, seq) - 1
        return at >= 0 and self.runs[at][0] <= seq <= self.runs[at][1]

    def feed(self, record: Record) -> None:
        if record.kind in SEALED_KINDS and self.in_scope(record.seq):
            refs, _ = content_refs(record.seq, record.kind, record.data)
            self.refs.update(((ref.seq, ref.field), ref) for ref in refs)
        elif record.kind == ERASED_KIND and record.seq <= self.pinned_through:  # no signature, no proof
            with contextlib.suppress(ValueError):  # a malformed one erases nothing
                self.erasures[record.seq] = erasure_of(record.data)

    def erased_by(self, ref: ContentRef) -> list[int]:
        """The seqs of the segment's ``content.erased`` records after the reference that erase it."""
        return sorted(at for at, (keys, inferences) in self.erasures.items()
                      if at > ref.seq and (ref.key in keys or ref.inference in inferences))

    def line(self, raw: bytes) -> None:
        """Check one line of the file, read with its newline."""
        self.lines += 1
        where = {"line": self.lines, "offset": self.offset}
        self.offset += len(raw)
        if not raw.endswith(b"\n"):
            raise fault("content_invalid", CONTENT_FILE, "the line does not end with a newline"
                        f" (or is longer than {MAX_CONTENT_LINE_BYTES} bytes)", **where)
        doc = self._form(raw[:-1], where)
        seq, name = doc["seq"], doc["field"]
        where["seq"] = seq
        if self.last is not None and (seq, name) <= self.last:
            raise fault("content_invalid", CONTENT_FILE, "lines are in order of seq, then field, each field once",
                        f"after seq {self.last[0]} {self.last[1]}", f"seq {seq} {name}", **where)
        self.last = (seq, name)
        self._match(doc, where)
        self.seen.add((seq, name))

    def _form(self, text: bytes, where: dict[str, int]) -> dict[str, Any]:
        try:
            doc = loads_strict(text)
        except (ValueError, RecursionError) as exc:
            raise fault("content_invalid", CONTENT_FILE, f"not JSON in the ledger's profile: {exc}", **where) from None
        problem = line_problem(doc)
        if problem is not None:
            raise fault("content_invalid", CONTENT_FILE, problem, **where)
        return dict(doc)

    def _match(self, doc: dict[str, Any], where: dict[str, int]) -> None:
        seq, name = doc["seq"], doc["field"]
        if not self.in_scope(seq):
            raise fault("content_mismatch", CONTENT_FILE, f"record {seq} is not in scope", **where)
        ref = self.refs.get((seq, name))
        if ref is None:
            raise fault("content_mismatch", CONTENT_FILE, f"record {seq} carries no well-formed reference"
                        f" sealing {name}", **where)
        if doc["id"] != ref.id:
            raise fault("content_mismatch", CONTENT_FILE, "the line's id is not the reference's", ref.id, doc["id"],
                        **where)
        erasures = self.erased_by(ref)
        if "state" in doc:
            if doc["erased_at"] not in erasures:
                raise fault("content_mismatch", CONTENT_FILE, f"no content.erased record at seq {doc['erased_at']}"
                            f" of the segment erases {ref.id} after record {seq}",
                            f"one of {erasures}" if erasures else "a content.erased record that erases it",
                            f"seq {doc['erased_at']}", **where)
            self.erased += 1
            return
        if erasures:
            raise fault("content_mismatch", CONTENT_FILE, f"it discloses {ref.id}, which the content.erased record"
                        f" at seq {erasures[0]} erased", **where)
        self._sealed(ref, doc, where)
        self.disclosed += 1

    def _sealed(self, ref: ContentRef, doc: dict[str, Any], where: dict[str, int]) -> None:
        blob, data_key = base64.b64decode(doc["ciphertext"]), bytes.fromhex(doc["data_key"])
        digest = "sha3-256:" + hashlib.sha3_256(blob).hexdigest()
        if digest != ref.sha3_256:
            raise fault("content_mismatch", CONTENT_FILE, "the ciphertext is not the one its record commits to",
                        ref.sha3_256, digest, **where)
        if (commitment := key_commitment(data_key)) != ref.key_commitment:
            raise fault("content_mismatch", CONTENT_FILE, "the data key is not the one its record commits to",
                        ref.key_commitment, commitment, **where)
        if self.open_sealed is None:
            return
        plain = None
        if len(blob) >= NONCE_BYTES + TAG_BYTES:
            plain = self.open_sealed(data_key, blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                     content_ad(self.ledger_id, ref.inference, ref.field))
        if plain is None:
            raise fault("content_mismatch", CONTENT_FILE, "the ciphertext does not open under the data key and"
                        " its record's associated data", **where)
        if plain != canonical_bytes(doc["value"]):
            raise fault("content_mismatch", CONTENT_FILE, "value is not what the ciphertext holds", **where)

    def finish(self, manifest: dict[str, Any]) -> DisclosureSummary:
        """Every in-scope reference has its line, and the manifest counts them as the file does."""
        missing = sorted(set(self.refs) - self.seen)
        if missing:
            seq, name = missing[0]
            raise fault("content_mismatch", CONTENT_FILE, f"record {seq} seals {name}, and no line discloses it or"
                        f" shows it erased ({len(missing)} field(s) without a line)", seq=seq,
                        line=self.lines + 1, offset=self.offset)
        claimed = manifest.get("content")
        for member, counted in (("disclosed", self.disclosed), ("erased", self.erased)):
            stated = claimed.get(member) if isinstance(claimed, dict) else None
            if type(stated) is not int or stated != counted:
                raise fault("manifest_mismatch", MANIFEST_FILE, f"the manifest's content.{member} is not what"
                            f" {CONTENT_FILE} holds", counted, stated)
        return DisclosureSummary(self.disclosed, self.erased, self.open_sealed is not None)


def line_problem(doc: Any) -> str | None:
    """Why a line of ``content.jsonl`` is not of the form of a disclosed or an erased field, or None."""
    if not isinstance(doc, dict):
        return "a line is a JSON object"
    members = tuple(sorted(doc))
    if members not in (DISCLOSED_MEMBERS, ERASED_MEMBERS):
        return ("a line is an object of exactly " + ", ".join(DISCLOSED_MEMBERS) + " (disclosed), or "
                + ", ".join(ERASED_MEMBERS) + " (erased)")
    if type(doc["seq"]) is not int or doc["seq"] < 0:
        return "seq is a record's seq"
    if not isinstance(doc["field"], str) or not isinstance(doc["id"], str):
        return "field and id are strings"
    if members == ERASED_MEMBERS:
        if doc["state"] != "erased" or type(doc["erased_at"]) is not int or doc["erased_at"] < 0:
            return "state is \"erased\" and erased_at a record's seq"
        return None
    if not isinstance(doc["data_key"], str) or not _KEY_RE.match(doc["data_key"]):
        return "data_key is 32 bytes in 64 lowercase hex digits"
    if not isinstance(doc["ciphertext"], str) or not _b64_exact(doc["ciphertext"]):
        return "ciphertext is standard base64 (padded, one spelling)"
    try:
        canonical_bytes(doc["value"])
    except EncodingError:
        return "value cannot be put in canonical JSON (a lone surrogate)"
    return None


def _b64_exact(text: str) -> bool:
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode() == text
    except (binascii.Error, ValueError):
        return False

"""One ledger record: how it is sealed into a line, and how a line is parsed back.

A record is the canonical JSON (see `ledger.canonical`) of an object with exactly the
members ``data, hash, kind, prev, seq, ts, v``, followed by ``\\n``. ``hash`` is the
lowercase hex SHA3-256 of the canonical JSON of the same object without ``hash``.

Because the member names are fixed and sort as listed, a canonical line always has the
shape ``{"data":D,"hash":"H","kind":"K","prev":"P","seq":N,"ts":"T","v":1}`` where only D
can need escaping (K, P and T are restricted to plain ASCII by their own rules). Sealing
and parsing use that shape directly, so a record costs one JSON round-trip of ``data``.
The result is byte-for-byte the RFC 8785 encoding, which the tests check against an
independent implementation.

The bounds a line must keep are stated here once, and the writer refuses what a verifier
would reject: a line holds at most MAX_LINE_BYTES bytes before its ``\\n`` (checked by
`prepare` before a record is queued, and by `parse_line`), and nests at most
``canonical.MAX_DEPTH`` deep, the record object included (so ``data`` gets one level less).
Timestamps, in records and checkpoints alike, are real dates written in ASCII digits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.canonical import MAX_DEPTH, canonical_bytes, encode_checked, loads_strict, parse_canonical
from ledger.errors import EncodingError

FORMAT_VERSION = 1
GENESIS_PREV = "0" * 64
GENESIS_KIND = "ledger.genesis"

KIND_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
# [0-9], not \d: in a str pattern \d also matches other scripts' digits (U+0660, U+FF10, ...).
TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
MAX_KIND_LENGTH = 64
MAX_LINE_BYTES = 16 << 20  # a line without its \n; one bound for the writer and both verifiers
DATA_DEPTH = MAX_DEPTH - 1  # the record object encloses data
# The longest envelope around ``data``: the members other than data, with the longest seq (2**53 - 1).
_ENVELOPE_BYTES = len(b'{"data":,"hash":"","kind":"","prev":"","seq":,"ts":"","v":1}') + 64 + 64 + 16 + 27

# What follows ``data`` in a canonical line. ``kind`` and ``ts`` carry their full rules here,
# and nothing in these members can contain ',"hash":"', so its last occurrence starts them.
_HASH_MEMBER = b',"hash":"'
_ENVELOPE_TAIL = re.compile(
    rb',"hash":"([0-9a-f]{64})"'
    rb',"kind":"([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)","prev":"([0-9a-f]{64})","seq":(0|[1-9][0-9]{0,14}),'
    rb'"ts":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)","v":1\}\Z'
)
_MEMBERS = frozenset(("data", "hash", "kind", "prev", "seq", "ts", "v"))


class RecordFault(Exception):
    """Internal: why one line is not a valid record. The chain adds its position."""

    def __init__(self, reason: str, detail: str, expected: str | None = None, actual: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed, self-consistent record (its own hash checked; its links not yet)."""

    seq: int
    ts: str
    kind: str
    data: dict[str, Any]
    prev: str
    hash: str
    v: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "hash": self.hash, "kind": self.kind, "prev": self.prev,
                "seq": self.seq, "ts": self.ts, "v": self.v}


def utc_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds and ``Z``, the only form ``ts`` may take."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha3_hex(data: bytes) -> str:
    return hashlib.sha3_256(data).hexdigest()


SHA3_TAG = "sha3-256:"


def sha3_tag(data: bytes) -> str:
    """``sha3-256:<hex>``: every hash the appliance stores names its algorithm."""
    return SHA3_TAG + sha3_hex(data)


def key_id_of(public_key: bytes) -> str:
    """A key id names the SHA3-256 of the raw 32-byte Ed25519 public key: ``sha3-256:<hex>``."""
    return sha3_tag(public_key)


def _tail(kind: str, prev: str, seq: int, ts: str) -> bytes:
    return f',"kind":"{kind}","prev":"{prev}","seq":{seq},"ts":"{ts}","v":{FORMAT_VERSION}}}'.encode()


def seal(seq: int, kind: str, data: dict[str, Any], prev: str, ts: str | None = None) -> tuple[Record, bytes]:
    """Build record ``seq`` after ``prev`` and return it with its line (``\\n`` included)."""
    if not HEX64_RE.match(prev):
        raise EncodingError(f"prev {prev!r} is not 64 lowercase hex digits")
    ts = ts or utc_timestamp()
    if not valid_ts(ts):
        raise EncodingError(f"timestamp {ts!r} is not RFC 3339 UTC with microseconds")
    return seal_prepared(seq, kind, prepare(kind, data), data, prev, ts)


def prepare(kind: str, data: dict[str, Any]) -> bytes:
    """Check ``kind`` and ``data`` and return data's canonical bytes: the part of sealing
    that does not depend on the previous record, so a writer can do it before queueing."""
    check_kind(kind)
    if not isinstance(data, dict):
        raise EncodingError("record data must be an object")
    payload = canonical_bytes(data, DATA_DEPTH)
    if len(payload) + len(kind) + _ENVELOPE_BYTES > MAX_LINE_BYTES:
        raise EncodingError(f"a {kind} record of {len(payload)} bytes of data is longer than the"
                            f" {MAX_LINE_BYTES} bytes a ledger line may hold")
    return payload


def seal_prepared(seq: int, kind: str, payload: bytes, data: dict[str, Any], prev: str,
                  ts: str) -> tuple[Record, bytes]:
    """`seal` for a ``payload`` from `prepare`, with ``prev`` and ``ts`` already known to be valid."""
    head = b'{"data":' + payload
    tail = _tail(kind, prev, seq, ts)
    digest = sha3_hex(head + tail)
    line = head + b',"hash":"' + digest.encode() + b'"' + tail + b"\n"
    return Record(seq, ts, kind, data, prev, digest), line


def check_kind(kind: str) -> None:
    if not isinstance(kind, str) or len(kind) > MAX_KIND_LENGTH or not KIND_RE.match(kind):
        raise EncodingError(f"record kind {kind!r} is not a dotted lowercase name")


def valid_ts(ts: object) -> bool:
    """Whether ``ts`` is a timestamp as records and checkpoints must hold it."""
    return isinstance(ts, str) and TS_RE.match(ts) is not None and _real_time(ts)


def _real_time(ts: str) -> bool:
    """For a ``ts`` of the right form: is it a real date and time (no February 30th)?"""
    try:
        datetime.fromisoformat(ts[:-1])
    except ValueError:
        return False
    return True


def parse_line(line: bytes) -> Record:
    """Parse one line (without its ``\\n``) into a record whose own hash is correct.

    Raises RecordFault with reason ``unparseable_line``, ``non_canonical``,
    ``invalid_record`` or ``hash_mismatch``. A reader may pass just the first
    MAX_LINE_BYTES + 1 bytes of a longer line: that is enough to refuse it.
    """
    if len(line) > MAX_LINE_BYTES:
        raise RecordFault("unparseable_line", f"line is longer than {MAX_LINE_BYTES} bytes",
                          f"at most {MAX_LINE_BYTES} bytes", f"more than {MAX_LINE_BYTES} bytes")
    at = line.rfind(_HASH_MEMBER)
    match = _ENVELOPE_TAIL.match(line, at) if at > 8 and line.startswith(b'{"data":') else None
    if match is None:
        return _diagnose(line)
    claimed_b, kind_b, prev_b, seq_b, ts_b = match.groups()
    data = parse_canonical(line[8:at], DATA_DEPTH)
    ts = ts_b.decode()
    if type(data) is not dict or len(kind_b) > MAX_KIND_LENGTH or not _real_time(ts):
        return _diagnose(line)
    # The line is now known to be canonical, so the body is the line without its hash member.
    actual = sha3_hex(line[:at] + line[match.end(1) + 1:])
    claimed = claimed_b.decode()
    if actual != claimed:
        raise RecordFault("hash_mismatch", "record hash does not match its contents", actual, claimed)
    return Record(int(seq_b), ts, kind_b.decode(), data, prev_b.decode(), claimed)


def envelope(line: bytes) -> tuple[str, str, str, int, str, int]:
    """(hash, kind, prev, seq, ts, the offset where ``data`` ends) of a canonical line (without its
    ``\\n``), its hash checked; ``data`` itself is neither parsed nor checked to be canonical.

    For re-reading lines a verifier has accepted, where linking each hash to the next proves
    the bytes are the ones it verified (`ledger.reader.records_linked`). Raises RecordFault
    (``unparseable_line`` or ``hash_mismatch``)."""
    at = line.rfind(_HASH_MEMBER)
    match = _ENVELOPE_TAIL.match(line, at) if at > 8 and line.startswith(b'{"data":') else None
    if match is None:
        raise RecordFault("unparseable_line", "not a canonical record envelope")
    claimed_b, kind_b, prev_b, seq_b, ts_b = match.groups()
    actual = sha3_hex(line[:at] + line[match.end(1) + 1:])
    claimed = claimed_b.decode()
    if actual != claimed:
        raise RecordFault("hash_mismatch", "record hash does not match its contents", actual, claimed)
    return claimed, kind_b.decode(), prev_b.decode(), int(seq_b), ts_b.decode(), at


def _diagnose(line: bytes) -> Record:
    """The general path, for lines the fast envelope declines: say exactly what is wrong, if anything."""
    try:
        obj = loads_strict(line)
    except ValueError as exc:
        raise RecordFault("unparseable_line", f"not valid JSON in the profile: {_one_line(exc)}") from None
    if not isinstance(obj, dict) or set(obj) != _MEMBERS:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise RecordFault("invalid_record", "members must be exactly data, hash, kind, prev, seq, ts, v",
                          ",".join(sorted(_MEMBERS)), str(got))
    problems = [
        ("v", obj["v"] == FORMAT_VERSION and type(obj["v"]) is int, "1"),
        ("seq", type(obj["seq"]) is int and obj["seq"] >= 0, "a non-negative integer"),
        ("ts", valid_ts(obj["ts"]), "RFC 3339 UTC with microseconds"),
        ("kind", isinstance(obj["kind"], str) and bool(KIND_RE.match(obj["kind"]))
         and len(obj["kind"]) <= MAX_KIND_LENGTH, "a dotted lowercase name"),
        ("data", isinstance(obj["data"], dict), "an object"),
        ("prev", isinstance(obj["prev"], str) and bool(HEX64_RE.match(obj["prev"])), "64 lowercase hex digits"),
        ("hash", isinstance(obj["hash"], str) and bool(HEX64_RE.match(obj["hash"])), "64 lowercase hex digits"),
    ]
    for name, ok, wanted in problems:
        if not ok:
            raise RecordFault("invalid_record", f"member {name} must be {wanted}", wanted, repr(obj[name])[:80])
    try:
        canonical = encode_checked(obj)
    except EncodingError as exc:
        raise RecordFault("unparseable_line", str(exc)) from None
    if canonical != line:
        raise RecordFault("non_canonical", "line is not the canonical encoding of its record",
                          _excerpt(canonical, line), _excerpt(line, canonical))
    actual = sha3_hex(encode_checked({k: v for k, v in obj.items() if k != "hash"}))
    if actual != obj["hash"]:
        raise RecordFault("hash_mismatch", "record hash does not match its contents", actual, obj["hash"])
    return Record(obj["seq"], obj["ts"], obj["kind"], obj["data"], obj["prev"], obj["hash"])


def _excerpt(this: bytes, other: bytes) -> str:
    """The neighbourhood of the first byte where ``this`` and ``other`` differ."""
    at = next((i for i, (a, b) in enumerate(zip(this, other, strict=False)) if a != b), min(len(this), len(other)))
    start = max(0, at - 16)
    return f"byte {at}: {this[start:at + 16]!r}"


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

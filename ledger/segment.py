"""Segments: a contiguous run of records, checked against a signed checkpoint without the rest of the ledger.

An evidence package (`ledger.package`) holds a ledger's genesis record, one checkpoint
document and the records ``first .. last`` of the same ledger. What can be proven from them
alone, and is checked here (docs/ledger-format.md, section 11), in this order:

1. the genesis is a valid record 0 (rules 1-7 of section 5) and, when the auditor holds the
   appliance's key, names it;
2. the checkpoint is a valid document naming the genesis ledger, signed by the genesis key,
   and signing a record at or after the segment's first seq;
3. each line of the segment is a valid record (rules 1-4) whose ``seq`` is the one after the
   line before it, starting at the seq the manifest states, and whose ``prev`` is the hash of
   the line before it; record 0, if the segment starts there, is the genesis itself; a
   ``ledger.checkpoint`` inside signs the record before it; the record at the checkpoint's seq
   has the checkpoint's hash;
4. the segment reaches the checkpoint's seq.

Then every record from the first through the checkpoint's seq is pinned by the signature:
changing one changes its hash, which the next record names, up to the signed hash. What is
**not** proven: the first record's ``prev`` links to a record the package does not hold, so
nothing says what came before it; records after the checkpoint's seq are not signed; seals
(`ledger.seal`) need their whole epoch and are not checked.

This module reads no file: `ledger.package` feeds it bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.canonical import loads_strict
from ledger.chain import ChainFault, Genesis, SignatureCheck, _genesis, _Here
from ledger.checkpoint import CHECKPOINT_KIND, Checkpoint, SignedCheckpoint
from ledger.record import GENESIS_KIND, GENESIS_PREV, MAX_LINE_BYTES, Record, RecordFault, key_id_of, parse_line

GENESIS_FILE, SEGMENT_FILE, CHECKPOINT_FILE, MANIFEST_FILE = (
    "genesis.jsonl", "segment.jsonl", "checkpoint.json", "manifest.json")


@dataclass(frozen=True, slots=True)
class PackageFault:
    """The first thing wrong with a package: which file, where in it, why, and what was expected."""

    reason: str
    file: str
    seq: int | None
    line: int | None
    offset: int | None
    detail: str
    expected: str | None = None
    actual: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "file": self.file, "seq": self.seq, "line": self.line,
                "offset": self.offset, "detail": self.detail, "expected": self.expected, "actual": self.actual}


class SegmentFault(Exception):
    """Internal carrier of a PackageFault out of `SegmentCheck`."""

    def __init__(self, fault: PackageFault) -> None:
        super().__init__(fault.detail)
        self.fault = fault


def fault(reason: str, file: str, detail: str, expected: object = None, actual: object = None,
          seq: int | None = None, line: int | None = None, offset: int | None = None) -> SegmentFault:
    return SegmentFault(PackageFault(reason, file, seq, line, offset, detail,
                                     None if expected is None else str(expected),
                                     None if actual is None else str(actual)))


class SegmentCheck:
    """Feed it the genesis, the checkpoint, then the segment's lines in order; `finish` at the end."""

    def __init__(self, first_seq: int, check_signature: SignatureCheck | None = None,
                 public_key: bytes | None = None) -> None:
        self.first_seq = first_seq
        self.check_signature = check_signature
        self.public_key = public_key
        self.genesis: Genesis | None = None
        self.genesis_hash: str | None = None
        self.checkpoint: Checkpoint | None = None
        self.head: Record | None = None
        self.first: Record | None = None
        self.count = 0
        self.checkpoints = 0  # ledger.checkpoint records inside the segment
        self.offset = 0  # of the next line in the segment file

    def feed_genesis(self, raw: bytes) -> Genesis:
        """``raw`` is the whole genesis file: one record and its newline."""
        line, _, rest = raw.partition(b"\n")
        if rest or not raw.endswith(b"\n"):
            raise fault("bad_genesis", GENESIS_FILE, "the genesis file holds exactly one line ending in a newline",
                        seq=0, line=1, offset=0)
        record = self._parse(line, GENESIS_FILE, 0, 1, 0)
        where = {"seq": 0, "line": 1, "offset": 0}
        if record.seq != 0:
            raise fault("seq_mismatch", GENESIS_FILE, "the genesis is record 0", 0, record.seq, **where)
        if record.prev != GENESIS_PREV:
            raise fault("prev_mismatch", GENESIS_FILE, "record 0's prev is 64 zeros", GENESIS_PREV, record.prev,
                        **where)
        try:
            genesis = _genesis(record, _Here(0, 0))
        except ChainFault as cf:
            raise fault(cf.fault.reason, GENESIS_FILE, cf.fault.detail, cf.fault.expected, cf.fault.actual,
                        **where) from None
        if self.public_key is not None and self.public_key != genesis.public_key:
            raise fault("key_mismatch", GENESIS_FILE, "genesis names another key than the one given",
                        key_id_of(self.public_key), genesis.key_id, **where)
        self.genesis, self.genesis_hash = genesis, record.hash
        return genesis

    def feed_checkpoint(self, raw: bytes) -> Checkpoint:
        """``raw`` is the checkpoint document (`anticloud ledger checkpoint --out`'s form)."""
        assert self.genesis is not None
        try:
            signed = SignedCheckpoint.from_json(loads_strict(raw))
        except (ValueError, RecursionError) as exc:
            raise fault("invalid_checkpoint", CHECKPOINT_FILE, f"not a checkpoint document: {exc}") from None
        cp = signed.checkpoint
        if cp.ledger_id != self.genesis.ledger_id:
            raise fault("checkpoint_mismatch", CHECKPOINT_FILE, "the checkpoint names another ledger than the genesis",
                        self.genesis.ledger_id, cp.ledger_id, seq=cp.seq)
        if self.check_signature is not None and (
            cp.key_id != self.genesis.key_id
            or not self.check_signature(self.genesis.public_key, cp.message(), signed.signature)
        ):
            raise fault("bad_signature", CHECKPOINT_FILE, "the checkpoint's signature does not verify with the"
                        " genesis key", self.genesis.key_id, cp.key_id, seq=cp.seq)
        if cp.seq < self.first_seq:
            raise fault("checkpoint_mismatch", CHECKPOINT_FILE, "the checkpoint signs a record before the segment",
                        f"seq {self.first_seq} or later", f"seq {cp.seq}", seq=cp.seq)
        self.checkpoint = cp
        return cp

    def feed(self, raw: bytes) -> Record:
        """One line of the segment as read, with its newline (or the first MAX_LINE_BYTES + 1 bytes of it)."""
        assert self.genesis is not None and self.checkpoint is not None
        seq, line_no, offset = self.first_seq + self.count, self.count + 1, self.offset
        where = {"seq": seq, "line": line_no, "offset": offset}
        if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
            raise fault("unparseable_line", SEGMENT_FILE, "the line does not end with a newline", **where)
        record = self._parse(raw[:-1] if raw.endswith(b"\n") else raw, SEGMENT_FILE, seq, line_no, offset)
        if record.seq != seq:
            what = "does not start at the manifest's first_seq" if self.count == 0 else (
                "repeated" if record.seq < seq else "skipped ahead")
            raise fault("seq_mismatch", SEGMENT_FILE, f"sequence number {what}", seq, record.seq, **where)
        if self.head is not None and record.prev != self.head.hash:
            raise fault("prev_mismatch", SEGMENT_FILE, "prev does not match the previous record's hash",
                        self.head.hash, record.prev, **where)
        if seq == 0 and record.hash != self.genesis_hash:
            raise fault("bad_genesis", SEGMENT_FILE, "record 0 of the segment is not the package's genesis",
                        self.genesis_hash, record.hash, **where)
        if seq > 0 and record.kind == GENESIS_KIND:
            raise fault("bad_genesis", SEGMENT_FILE, "ledger.genesis may only be record 0", "record 0",
                        f"record {seq}", **where)
        if record.kind == CHECKPOINT_KIND:
            self._check_checkpoint_record(record, where)
        cp = self.checkpoint
        if seq == cp.seq and record.hash != cp.hash:
            raise fault("checkpoint_mismatch", SEGMENT_FILE, "record differs from the one the checkpoint signed",
                        cp.hash, record.hash, **where)
        self.first = self.first or record
        self.head = record
        self.count += 1
        self.offset += len(raw)
        return record

    def finish(self) -> None:
        """After the last line: the segment must reach the record the checkpoint signed."""
        assert self.checkpoint is not None
        cp = self.checkpoint
        if self.head is None or self.head.seq < cp.seq:
            last = "no record" if self.head is None else f"last record {self.head.seq}"
            raise fault("truncated_below_checkpoint", SEGMENT_FILE,
                        "the segment ends before the record the checkpoint signed", f"record {cp.seq}", last,
                        seq=cp.seq, line=cp.seq - self.first_seq + 1, offset=self.offset)

    def _parse(self, line: bytes, file: str, seq: int, line_no: int, offset: int) -> Record:
        try:
            return parse_line(line)
        except RecordFault as rf:
            raise fault(rf.reason, file, rf.detail, rf.expected, rf.actual, seq=seq, line=line_no,
                        offset=offset) from None

    def _check_checkpoint_record(self, record: Record, where: dict[str, int]) -> None:
        """Rule 9 of section 5, where the record before it is in the segment; else what can be checked."""
        assert self.genesis is not None
        try:
            signed = SignedCheckpoint.from_json(record.data)
        except ValueError as exc:
            raise fault("invalid_record", SEGMENT_FILE, f"ledger.checkpoint data is malformed: {exc}",
                        **where) from None
        cp = signed.checkpoint
        if cp.ledger_id != self.genesis.ledger_id:
            raise fault("checkpoint_mismatch", SEGMENT_FILE, "checkpoint names another ledger",
                        self.genesis.ledger_id, cp.ledger_id, **where)
        before = (record.seq - 1, self.head.hash if self.head is not None else cp.hash)
        if (cp.seq, cp.hash) != before:
            raise fault("checkpoint_mismatch", SEGMENT_FILE, "checkpoint does not sign the record before it",
                        f"{before[0]}:{before[1]}", f"{cp.seq}:{cp.hash}", **where)
        if self.check_signature is not None and (
            cp.key_id != self.genesis.key_id
            or not self.check_signature(self.genesis.public_key, cp.message(), signed.signature)
        ):
            raise fault("bad_signature", SEGMENT_FILE, "checkpoint signature does not verify with the genesis key",
                        self.genesis.key_id, cp.key_id, **where)
        self.checkpoints += 1

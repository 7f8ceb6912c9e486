"""What a fleet audit needs from one ledger beyond its verdict, gathered in the verifier's own pass.

`FleetTally` is a `ledger.Tally`: `ledger.verify_and_tally` feeds it every record the chain
accepted, in order (in each worker of a parallel replay, merged in file order), so it holds
exactly records 0 .. ``records - 1`` of the verdict and the ledger is read once. It keeps:

* the clock evidence: the first and last ``ts``, how often ``ts`` ran backwards from one record
  to the next and by how much at most, the ``clock.jump`` records, and the ``clock`` the last
  ``engine.start`` stated;
* whether an engine was running at the end (an ``engine.start`` after the last ``engine.stop``),
  which says whether the appliance owed seals every interval;
* the last ``ledger.checkpoint`` in the ledger (its seq and time);
* the genesis's public key, to check the signatures of checkpoints the auditor collected;
* for the collected checkpoints that are not replayed by the verifier itself (all but the
  newest document and the newest note), the hash of the record each one signed and the leaf
  hashes of the records each tree head counts.

`check_held` then judges each collected checkpoint against the verdict and these facts. It is
pure: it receives the bytes and keys, and uses the ledger's own signature and Merkle functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger import (
    Record,
    SignedCheckpoint,
    Verdict,
    canonical_bytes,
    ed25519_valid,
    ed25519_vkey,
    leaf_hash,
    merkle_root,
    open_note,
    origin_of,
    tree_head_of,
)

BEHIND, DIFFERS = "behind", "differs"  # the two statuses of a collected checkpoint that mean a rollback
ROLLBACK = frozenset({BEHIND, DIFFERS})
REFUSED = frozenset({"foreign", "bad_signature"})  # a collected checkpoint that is not the appliance's


def seconds(later: str, earlier: str) -> float:
    """``later - earlier`` in seconds, for two record timestamps (RFC 3339, UTC)."""
    return (_time(later) - _time(earlier)).total_seconds()


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Want:
    """What the tally must keep for the collected checkpoints it checks: hashes at these seqs,
    and the leaf hashes of records 0 .. ``leaves - 1``. It pickles, as a worker's factory must."""

    seqs: frozenset[int] = frozenset()
    leaves: int = 0

    def __call__(self) -> FleetTally:
        return FleetTally(self)


@dataclass
class FleetTally:
    want: Want
    public_key: str | None = None
    first_seq: int | None = None
    first_ts: str | None = None
    last_ts: str | None = None
    backwards: int = 0  # how many records have a ts earlier than the record before them
    worst_back: float = 0.0  # the largest such step, in seconds
    worst_back_seq: int | None = None
    clock_jumps: int = 0
    clock: dict[str, Any] | None = None  # the last engine.start's
    last_start: int = -1
    last_stop: int = -1
    checkpoint_seq: int | None = None  # the last in-ledger checkpoint: the seq it signs, and its time
    checkpoint_ts: str | None = None
    hashes: dict[int, str] = field(default_factory=dict)
    leaves: list[bytes] = field(default_factory=list)

    def feed(self, record: Record) -> None:
        ts, seq, kind = record.ts, record.seq, record.kind
        if self.last_ts is None:
            self.first_seq, self.first_ts = seq, ts
        elif ts < self.last_ts:  # fixed-width UTC timestamps order as strings
            self._back(self.last_ts, ts, seq)
        self.last_ts = ts
        if seq < self.want.leaves:
            self.leaves.append(leaf_hash(canonical_bytes(record.to_json())))  # a verified line is canonical
        if seq in self.want.seqs:
            self.hashes[seq] = record.hash
        if kind == "engine.start":
            self.last_start = seq
            clock = record.data.get("clock")
            self.clock = clock if isinstance(clock, dict) else None
        elif kind == "engine.stop":
            self.last_stop = seq
        elif kind == "clock.jump":
            self.clock_jumps += 1
        elif kind == "ledger.checkpoint":
            body = record.data.get("checkpoint")
            if isinstance(body, dict) and isinstance(body.get("seq"), int):
                self.checkpoint_seq, self.checkpoint_ts = body["seq"], ts
        elif kind == "ledger.genesis" and seq == 0:
            key = record.data.get("public_key")
            self.public_key = key if isinstance(key, str) else None

    def _back(self, before: str, ts: str, seq: int) -> None:
        self.backwards += 1
        step = seconds(before, ts)
        if step > self.worst_back:
            self.worst_back, self.worst_back_seq = step, seq

    def merge(self, later: FleetTally) -> None:
        if later.last_ts is None:
            return
        if self.last_ts is None:
            self.first_seq, self.first_ts = later.first_seq, later.first_ts
        else:
            assert later.first_ts is not None and later.first_seq is not None
            if later.first_ts < self.last_ts:
                self._back(self.last_ts, later.first_ts, later.first_seq)
        if later.worst_back > self.worst_back:
            self.worst_back, self.worst_back_seq = later.worst_back, later.worst_back_seq
        self.backwards += later.backwards
        self.last_ts = later.last_ts
        self.public_key = self.public_key or later.public_key
        self.clock_jumps += later.clock_jumps
        if later.last_start > self.last_start:
            self.last_start, self.clock = later.last_start, later.clock
        self.last_stop = max(self.last_stop, later.last_stop)
        if later.checkpoint_seq is not None:
            self.checkpoint_seq, self.checkpoint_ts = later.checkpoint_seq, later.checkpoint_ts
        self.hashes |= later.hashes
        self.leaves += later.leaves

    @property
    def engine_running(self) -> bool:
        """An engine started and did not stop cleanly: the appliance owed a seal every interval."""
        return self.last_start > self.last_stop

    def to_json(self) -> dict[str, Any]:
        return {"first_ts": self.first_ts, "last_ts": self.last_ts, "ts_backwards": self.backwards,
                "worst_backward_step_s": self.worst_back, "worst_backward_seq": self.worst_back_seq,
                "clock_jumps": self.clock_jumps, "clock": self.clock, "engine_running": self.engine_running,
                "checkpoint_in_ledger": None if self.checkpoint_seq is None else {
                    "seq": self.checkpoint_seq, "ts": self.checkpoint_ts}}


@dataclass(frozen=True, slots=True)
class Held:
    """A checkpoint the auditor collected earlier: a document (pins record ``size - 1``'s hash) or a
    tlog note (pins the Merkle tree of the first ``size`` records)."""

    source: str
    document: SignedCheckpoint | None = None
    note: str | None = None

    @property
    def size(self) -> int:
        return self.document.checkpoint.seq + 1 if self.document is not None else tree_head_of(self.note or "").size

    @property
    def ts(self) -> str | None:
        return self.document.checkpoint.ts if self.document is not None else None


@dataclass(frozen=True, slots=True)
class HeldCheck:
    """How one collected checkpoint fared: ``matched``, ``behind`` (the ledger ends before it),
    ``differs`` (the ledger holds other records there), ``foreign`` (another ledger's), ``bad_signature``,
    or ``not_reached`` (the ledger broke before it)."""

    source: str
    kind: str  # document | note
    size: int
    ts: str | None
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "size": self.size, "ts": self.ts, "status": self.status,
                "detail": self.detail}


def primaries(held: list[Held]) -> tuple[Held | None, Held | None]:
    """The newest document and the newest note: the two the verifier itself replays against."""
    docs = [h for h in held if h.document is not None]
    notes = [h for h in held if h.note is not None]
    return (max(docs, key=lambda h: h.size, default=None), max(notes, key=lambda h: h.size, default=None))


def want_for(held: list[Held]) -> Want:
    """What the tally must keep to check every collected checkpoint but the two primaries."""
    doc, note = primaries(held)
    rest = [h for h in held if h is not doc and h is not note]
    return Want(frozenset(h.size - 1 for h in rest if h.document is not None),
                max((h.size for h in rest if h.note is not None), default=0))


def check_held(held: list[Held], verdict: Verdict, facts: FleetTally, public_key: bytes | None) -> list[HeldCheck]:
    """Judge each collected checkpoint: the primaries from the verdict, the others from the facts."""
    doc, note = primaries(held)
    key = public_key or (bytes.fromhex(facts.public_key) if facts.public_key else None)
    return [_primary(h, verdict) if h is doc or h is note else _other(h, verdict, facts, key)
            for h in sorted(held, key=lambda h: (h.size, h.source))]


_PIN_FAULTS = {"truncated_below_checkpoint": BEHIND, "checkpoint_mismatch": DIFFERS, "tree_mismatch": DIFFERS}


def _primary(h: Held, v: Verdict) -> HeldCheck:
    kind = "document" if h.document is not None else "note"
    pinned = v.checkpoint if kind == "document" else v.tree_head
    if pinned is not None and pinned.get("matched"):
        return HeldCheck(h.source, kind, h.size, h.ts, "matched", "replayed by the verifier")
    f = v.fault
    if f is None:  # a torn or unchecked verdict still says matched; nothing else leaves it unmatched
        return HeldCheck(h.source, kind, h.size, h.ts, "not_reached", "not compared")
    status = _PIN_FAULTS.get(f.reason, "not_reached")
    if f.reason == "bad_signature" and "checkpoint's signature" in f.detail and kind == "document":
        status = "bad_signature"
    if f.reason == "checkpoint_mismatch" and "another" in f.detail:
        status = "foreign"
    elif (f.reason == "checkpoint_mismatch" and f.seq != h.size - 1) or (f.reason == "tree_mismatch"
                                                                          and f.seq != h.size):
        status = "not_reached"  # the fault is the ledger's own, not this checkpoint's
    return HeldCheck(h.source, kind, h.size, h.ts, status, f"{f.reason} at seq {f.seq}: {f.detail}")


def _other(h: Held, v: Verdict, facts: FleetTally, key: bytes | None) -> HeldCheck:
    kind = "document" if h.document is not None else "note"

    def result(status: str, detail: str) -> HeldCheck:
        return HeldCheck(h.source, kind, h.size, h.ts, status, detail)

    if key is None or v.ledger_id is None:
        return result("not_reached", "the ledger has no genesis to check it against")
    if h.document is not None:
        cp = h.document.checkpoint
        if cp.ledger_id != v.ledger_id:
            return result("foreign", f"it names ledger {cp.ledger_id}, not {v.ledger_id}")
        if not ed25519_valid(key, cp.message(), h.document.signature):
            return result("bad_signature", "its signature does not verify under the appliance key")
    else:
        opened = open_note(h.note or "", [ed25519_vkey(origin_of(v.ledger_id), key)])
        if not opened.ok:
            return result("bad_signature" if opened.reason != "malformed" else "foreign",
                          f"the note does not open with the appliance key: {opened.reason}")
    if v.records < h.size:
        if v.status == "broken":
            return result("not_reached", f"the ledger broke at {v.records} record(s)")
        return result(BEHIND, f"the ledger ends at {v.records} record(s), before the {h.size} it pins")
    if h.document is not None:
        actual = facts.hashes.get(h.size - 1)
        if actual != h.document.checkpoint.hash:
            return result(DIFFERS, f"record {h.size - 1} is {actual}, the checkpoint signed "
                                   f"{h.document.checkpoint.hash}")
        return result("matched", f"record {h.size - 1} has the hash it signed")
    root = merkle_root(facts.leaves[:h.size])
    pinned = tree_head_of(h.note or "").root
    if root != pinned:
        return result(DIFFERS, f"the tree of the first {h.size} records is {root.hex()}, the note signed "
                               f"{pinned.hex()}")
    return result("matched", f"the tree of the first {h.size} records is the one it signed")

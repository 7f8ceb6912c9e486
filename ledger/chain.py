"""The chain rules: whether record N+1 may follow record N, decided from bytes alone.

Invariants checked for every line, in this order (the first one broken is the verdict):

1. the line is canonical JSON of a well-formed record whose ``hash`` is correct;
2. ``seq`` is the line's position (0, 1, 2, ...): no gap, no repeat;
3. ``prev`` is the ``hash`` of the line before (64 zeros for seq 0);
4. seq 0, and only seq 0, is ``ledger.genesis``, naming a ledger id and an Ed25519 key;
5. a ``ledger.checkpoint`` record signs the record just before it, with the genesis key
   (checked where a signature checker is available);
6. what the auditor holds: the genesis key equals their ``appliance.pub``, their checkpoint
   names this ledger and verifies with that key, and the record at its seq has its hash.
   A checkpoint's signature is checked as soon as the key is known, before its seq is reached;
7. a ``ledger.checkpoint`` record that carries a signed tree head (``tlog``: a C2SP checkpoint
   note of origin ``anticloud/<ledger id>``, signed by the genesis key under that name, of the
   ``seq`` lines before it) names their Merkle root (`ledger.merkle`); so does a tree head the
   auditor holds, at its size. Roots are compared where the chain was fed from line 0; a
   resumed chain hands its leaves and claims to the one that absorbs it.

This module touches no file: the verifier, the writer and the tests all feed it lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ledger.checkpoint import CHECKPOINT_KIND, LEDGER_ID_RE, SignedCheckpoint, origin_of
from ledger.errors import NoteError
from ledger.merkle import Frontier, leaf_hash
from ledger.note import ED25519, key_id, split_note
from ledger.record import GENESIS_KIND, GENESIS_PREV, Record, RecordFault, key_id_of, parse_line
from ledger.seal import KINDS as SEAL_KINDS
from ledger.tlog_text import TreeHead, parse_checkpoint_text

RECOVERED_KIND = "ledger.recovered"
_SPECIAL_KINDS = frozenset((GENESIS_KIND, CHECKPOINT_KIND, *SEAL_KINDS))
# The kinds whose data this format fixes member by member (docs/ledger-format.md): nothing may
# be added to them, so a writer's stamp (`LedgerWriter.stamp`) leaves them alone.
FORMAT_KINDS = _SPECIAL_KINDS | {RECOVERED_KIND}
PUBKEY_RE = re.compile(r"[0-9a-f]{64}\Z")

# (raw 32-byte public key, message, signature) -> valid?
SignatureCheck = Callable[[bytes, bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class Fault:
    """Evidence for the first bad record: where it is, what was wrong, what was expected."""

    reason: str
    seq: int
    line: int | None
    offset: int | None
    detail: str
    expected: str | None = None
    actual: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "seq": self.seq, "line": self.line, "offset": self.offset,
                "detail": self.detail, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True, slots=True)
class Genesis:
    ledger_id: str
    public_key: bytes
    key_id: str


class ChainFault(Exception):
    """Internal carrier of a Fault out of `Chain.feed`."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.detail)
        self.fault = fault


class _Here:
    """Builds faults located at the line being fed."""

    __slots__ = ("offset", "seq")

    def __init__(self, seq: int, offset: int) -> None:
        self.seq, self.offset = seq, offset

    def __call__(self, reason: str, detail: str, expected: object = None, actual: object = None) -> ChainFault:
        return ChainFault(Fault(reason, self.seq, self.seq + 1, self.offset, detail,
                                None if expected is None else str(expected),
                                None if actual is None else str(actual)))


class Chain:
    """Replays lines one at a time, holding only what the next line's rules need.

    ``public_key`` and ``checkpoint`` are what an auditor holds; either may be None.
    """

    def __init__(self, check_signature: SignatureCheck | None = None, public_key: bytes | None = None,
                 checkpoint: SignedCheckpoint | None = None, tree_head: str | None = None) -> None:
        self.check_signature = check_signature
        self.public_key = public_key
        self.pin = checkpoint
        self.tree_note = tree_head or (checkpoint.tlog if checkpoint is not None else None)
        self.tree_pin: TreeHead | None = None  # the auditor's tree head, once its signature is checked
        self.head: Record | None = None
        self.genesis: Genesis | None = None
        self.count = 0
        self.first_ts: str | None = None
        self.checkpoints = 0
        self.sealing: list[Record] = []  # the enrollment and seal records, for `ledger.seal.SealCheck`
        self.tree: Frontier | None = Frontier()  # the Merkle tree of the lines fed (resumed: from its first)
        self.claims: list[TreeClaim] = []  # a resumed chain's claims, for the chain that absorbs it
        self._claim: bytes | None = None  # the root the record just linked claims for the lines before it

    def feed(self, line: bytes, offset: int) -> Record:
        """Check ``line`` (no ``\\n``) at byte ``offset``; raise ChainFault or return its record."""
        try:
            record = parse_line(line)
        except RecordFault as rf:
            raise _Here(self.count, offset)(rf.reason, rf.detail, rf.expected, rf.actual) from None
        self.link(record, offset)
        self._grow(record.seq, leaf_hash(line), offset)
        return record

    def _grow(self, seq: int, leaf: bytes, offset: int) -> None:
        """The line becomes a leaf of the tree, once the tree before it was checked where due."""
        claim, self._claim = self._claim, None
        tree = self.tree
        if tree is None:
            return
        if tree.offset:  # resumed: the roots are for the chain that absorbs this one to check
            if claim is not None:
                self.claims.append(TreeClaim(seq, claim, offset, tree.blocks()))
            if self.tree_pin is not None and tree.size == self.tree_pin.size:
                self.claims.append(replace(_pinned(self.tree_pin), blocks=tree.blocks()))
        elif self.tree_pin is not None and tree.size == self.tree_pin.size:
            _check_claim(tree, _pinned(self.tree_pin))
        tree.push(leaf)

    def claim_root(self, root: bytes, fail: _Here) -> None:
        """Rule 7 for the record being linked: ``root`` must be the tree of the lines before it.
        Checked now if this chain holds them all; a resumed chain hands the claim on."""
        if self.tree is None:
            return
        if self.tree.offset:
            self._claim = root
        else:
            _check_claim(self.tree, TreeClaim(fail.seq, root, fail.offset))

    def finish(self) -> None:
        """After the last line: the auditor's tree head, if it is of exactly the whole file."""
        if self.tree is not None and self.tree_pin is not None and self.tree.size == self.tree_pin.size:
            _check_claim(self.tree, _pinned(self.tree_pin))

    def link(self, record: Record, offset: int) -> None:
        """The rules between records (2 to 6 above), then advance the head to ``record``.

        After `resume`, only the sequence number of the first record is checked: its link
        to the record before it is for whoever holds that record to check with `link`.
        """
        seq = self.count
        self._claim = None
        if record.seq != seq:
            what = "repeated" if record.seq < seq else "skipped ahead"
            raise _Here(seq, offset)("seq_mismatch", f"sequence number {what}", seq, record.seq)
        if self.head is not None or seq == 0:
            self._check_link(record, seq, offset)
        self.head = record
        self.count += 1

    def _check_link(self, record: Record, seq: int, offset: int) -> None:
        expected_prev = GENESIS_PREV if self.head is None else self.head.hash
        if record.prev != expected_prev:
            raise _Here(seq, offset)("prev_mismatch", "prev does not match the previous record's hash",
                                     expected_prev, record.prev)
        special = seq == 0 or record.kind in _SPECIAL_KINDS or (self.pin is not None and seq == self.pin.checkpoint.seq)
        if special:  # most records are not: they need nothing more
            self._check_special(record, seq, _Here(seq, offset))

    def _check_special(self, record: Record, seq: int, fail: _Here) -> None:
        if seq == 0:
            self.genesis = _genesis(record, fail)
            self._check_auditor_inputs(self.genesis, fail)
            self.first_ts = record.ts
        elif record.kind == GENESIS_KIND:
            raise fail("bad_genesis", "ledger.genesis may only be record 0", "record 0", f"record {seq}")
        elif record.kind == CHECKPOINT_KIND:
            self._check_checkpoint_record(record, fail)
        elif record.kind in SEAL_KINDS:
            self.sealing.append(record)
        if self.pin is not None and seq == self.pin.checkpoint.seq and record.hash != self.pin.checkpoint.hash:
            raise fail("checkpoint_mismatch", "record differs from the one the checkpoint signed",
                        self.pin.checkpoint.hash, record.hash)

    @classmethod
    def continuing(cls, genesis: Record, head: Record, check_signature: SignatureCheck | None = None) -> Chain:
        """A chain that goes on after ``head`` of the ledger whose record 0 is ``genesis``: how a
        writer resumes a file. The records between them are the verifier's to check; every
        record linked from here on is checked in full."""
        chain = cls(check_signature)
        chain.tree = None  # a writer's chain: the tree beside the ledger is `ledger.tree`'s
        chain.link(genesis, 0)
        if head.seq > 0:
            chain.head, chain.count = head, head.seq + 1
        return chain

    def resume(self, genesis: Genesis, seq: int) -> None:
        """Continue mid-file at record ``seq`` without the record before it (parallel replay)."""
        self.genesis, self.count, self.head = genesis, seq, None
        self.tree = Frontier(seq)

    def absorb(self, last: Record, count: int, checkpoints: int, sealing: list[Record],
               blocks: Sequence[tuple[bytes, int]] = (), claims: Sequence[TreeClaim] = ()) -> None:
        """Take over where a resumed chain, whose first record this chain has linked, ended:
        its tree's blocks join this tree, each of its claims checked against this tree and the
        blocks before it (ChainFault if one fails: the caller replays serially, to place it)."""
        if self.tree is not None:
            for claim in claims:
                before = self.tree.copy()
                for digest, span in claim.blocks:
                    before.push_subtree(digest, span)
                _check_claim(before, claim)
            for digest, span in blocks:
                self.tree.push_subtree(digest, span)
        self.head, self.count = last, count
        self.checkpoints += checkpoints
        self.sealing.extend(r for r in sealing if not self.sealing or r.seq > self.sealing[-1].seq)

    def _check_auditor_inputs(self, genesis: Genesis, fail: _Here) -> None:
        if self.public_key is not None and self.public_key != genesis.public_key:
            raise fail("key_mismatch", "genesis names another key than the one given",
                       key_id_of(self.public_key), genesis.key_id)
        if self.tree_note is not None:
            key = self.public_key or genesis.public_key
            self.tree_pin = self._signed_tree_head(self.tree_note, genesis, key, None, _auditors)
        if self.pin is None:
            return
        cp = self.pin.checkpoint
        if cp.ledger_id != genesis.ledger_id:
            raise fail("checkpoint_mismatch", "the checkpoint names another ledger", cp.ledger_id, genesis.ledger_id)
        key = self.public_key or genesis.public_key
        if self.check_signature is not None and (
            cp.key_id != key_id_of(key) or not self.check_signature(key, cp.message(), self.pin.signature)
        ):
            raise ChainFault(Fault("bad_signature", cp.seq, None, None,
                                   "the checkpoint's signature does not verify with the appliance key",
                                   key_id_of(key), cp.key_id))

    def _check_checkpoint_record(self, record: Record, fail: _Here) -> None:
        assert self.head is not None and self.genesis is not None
        try:
            signed = SignedCheckpoint.from_json(record.data)
        except ValueError as exc:
            raise fail("invalid_record", f"ledger.checkpoint data is malformed: {exc}") from None
        cp = signed.checkpoint
        if cp.ledger_id != self.genesis.ledger_id:
            raise fail("checkpoint_mismatch", "checkpoint names another ledger", self.genesis.ledger_id, cp.ledger_id)
        if (cp.seq, cp.hash) != (self.head.seq, self.head.hash):
            raise fail("checkpoint_mismatch", "checkpoint does not sign the record before it",
                       f"{self.head.seq}:{self.head.hash}", f"{cp.seq}:{cp.hash}")
        if self.check_signature is not None and (
            cp.key_id != self.genesis.key_id
            or not self.check_signature(self.genesis.public_key, cp.message(), signed.signature)
        ):
            raise fail("bad_signature", "checkpoint signature does not verify with the genesis key",
                       self.genesis.key_id, cp.key_id)
        if signed.tlog is not None:
            head = self._signed_tree_head(signed.tlog, self.genesis, self.genesis.public_key, record.seq,
                                          lambda reason, detail, e, a: fail(reason, f"ledger.checkpoint tlog: {detail}",
                                                                            e, a))
            self.claim_root(head.root, fail)
        self.checkpoints += 1

    def _signed_tree_head(self, note: str, genesis: Genesis, key: bytes, size: int | None,
                          fail: Callable[[str, str, object, object], ChainFault]) -> TreeHead:
        """A tree head signed by ``key`` as this ledger's log (of ``size`` lines, if given)."""
        origin = origin_of(genesis.ledger_id)
        try:
            text, lines = split_note(note)
            head = parse_checkpoint_text(text)
        except NoteError as exc:
            raise fail("invalid_record", f"not a tlog checkpoint: {exc}", None, None) from None
        if head.origin != origin:
            raise fail("checkpoint_mismatch", "the tree head is of another log", origin, head.origin)
        if head.extensions:
            raise fail("checkpoint_mismatch", "the tree head has extension lines, which this log never signs",
                       None, head.extensions[0])
        if size is not None and head.size != size:
            raise fail("checkpoint_mismatch", "the tree head is not of the records before it", size, head.size)
        want = key_id(origin, ED25519, key)
        mine = [line for line in lines if (line.name, line.key_id) == (origin, want)]
        if not mine:
            raise fail("bad_signature", "the tree head bears no signature by the appliance key under its origin",
                       f"{origin}+{want.hex()}", ", ".join(f"{ln.name}+{ln.key_id.hex()}" for ln in lines))
        if self.check_signature is not None and not all(
                self.check_signature(key, text.encode(), line.signature) for line in mine):
            raise fail("bad_signature", "the tree head's signature does not verify with the appliance key",
                       f"{origin}+{want.hex()}", None)
        return head


@dataclass(frozen=True, slots=True)
class TreeClaim:
    """A checkpoint record's claim: the Merkle root of the ``seq`` lines before it."""

    seq: int
    root: bytes
    offset: int | None
    blocks: list[tuple[bytes, int]] = field(default_factory=list)  # a resumed chain's tree before it
    detail: str = "the signed tree head is not the Merkle root of the {size} records before it"


def _auditors(reason: str, detail: str, expected: object, actual: object) -> ChainFault:
    """A fault in the tree head the auditor holds: reported at record 0, with no line of the file."""
    return ChainFault(Fault(reason, 0, None, None, f"your tree head: {detail}",
                            None if expected is None else str(expected), None if actual is None else str(actual)))


def _pinned(head: TreeHead) -> TreeClaim:
    return TreeClaim(head.size, head.root, None,
                     detail="the Merkle tree of the ledger's first {size} records is not the one your tree head "
                            "signed: the ledger was rewritten below it")


def _check_claim(tree: Frontier, claim: TreeClaim) -> None:
    actual = tree.root()
    if actual != claim.root:
        raise ChainFault(Fault("tree_mismatch", claim.seq, claim.seq + 1 if claim.offset is not None else None,
                               claim.offset, claim.detail.format(size=claim.seq), claim.root.hex(), actual.hex()))


def _genesis(record: Record, fail: _Here) -> Genesis:
    if record.kind != GENESIS_KIND:
        raise fail("bad_genesis", "record 0 must be ledger.genesis", GENESIS_KIND, record.kind)
    data = record.data
    ledger_id, public_key, key_id = data.get("ledger_id"), data.get("public_key"), data.get("key_id")
    if not isinstance(ledger_id, str) or not LEDGER_ID_RE.match(ledger_id):
        raise fail("bad_genesis", "ledger_id must be 32 lowercase hex digits", None, ledger_id)
    if not isinstance(public_key, str) or not PUBKEY_RE.match(public_key):
        raise fail("bad_genesis", "public_key must be a raw Ed25519 key in 64 lowercase hex digits", None, public_key)
    raw = bytes.fromhex(public_key)
    if key_id != key_id_of(raw):
        raise fail("bad_genesis", "key_id is not the SHA3-256 of public_key", key_id_of(raw), key_id)
    return Genesis(ledger_id, raw, key_id)

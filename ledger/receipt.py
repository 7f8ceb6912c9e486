"""Proofs handed out of a ledger: a receipt for one record, and the extension of one tree by another.

* `prove_record` writes a C2SP tlog-proof for record ``seq``: its line as the extra data, its
  index, the inclusion proof, and the latest signed tree head that covers it, with every
  cosignature the ledger has recorded for that head (``ledger.cosigned``). Whoever holds the
  appliance's verifier key checks it with no other part of the ledger (`check_record_proof`).
* `prove_extension` writes the RFC 9162 consistency proof from one signed tree head to a later
  one, as the body of a C2SP tlog-witness add-checkpoint request: ``old N``, the proof, and the
  later checkpoint. The same file is what a witness is asked to cosign.

Every proof is verified against its signed root before it is returned; a tree file that does
not fit is rebuilt from the ledger and the proof made again, and a proof that still does not
verify is refused (LedgerCorruptError), never handed out.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ledger.checkpoint import CHECKPOINT_KIND, SignedCheckpoint
from ledger.errors import LedgerCorruptError, NoteError, ProofRequestError
from ledger.merkle import consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion
from ledger.note import Vkey, open_note
from ledger.reader import Located, record_with_seq, records_backward
from ledger.record import RecordFault, parse_line
from ledger.tlog_text import AddCheckpoint, TlogProof, TreeHead, parse_add_checkpoint, parse_tlog_proof, tree_head_of
from ledger.tree import TreeFile, following

COSIGNED_KIND = "ledger.cosigned"


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A ``ledger.checkpoint`` record's signed tree head: the note, what it says, where it is."""

    note: str
    head: TreeHead
    record: Located


def signed_heads(path: Path) -> Iterator[SignedHead]:
    """The signed tree heads the ledger's checkpoint records carry, newest first."""
    for located in records_backward(path, [CHECKPOINT_KIND]):
        tlog = SignedCheckpoint.from_json(located.record.data).tlog
        if tlog is not None:
            yield SignedHead(tlog, tree_head_of(tlog), located)


def covering(path: Path, seq: int) -> SignedHead:
    """The newest signed tree head that includes record ``seq``."""
    head = next(signed_heads(path), None)
    if head is None or head.head.size <= seq:
        raise ProofRequestError(f"no signed tree head includes record {seq} yet: run `anticloud ledger checkpoint`")
    return head


def cosignature_lines(path: Path, signed: SignedHead) -> list[str]:
    """The cosignature lines the ledger recorded for ``signed`` (``ledger.cosigned``), oldest first.

    A cosignature can only be recorded after the head it cosigns, so the scan stops at that
    head's checkpoint record: it reads what was appended since, not the whole ledger."""
    head, root = signed.head, base64.b64encode(signed.head.root).decode()
    lines = [located.record.data["cosignature"]
             for located in records_backward(path, [COSIGNED_KIND], stop_at=signed.record.offset)
             if located.record.data.get("size") == head.size and located.record.data.get("root") == root]
    return list(reversed(lines))


def prove_record(path: Path, seq: int) -> TlogProof:
    """The tlog-proof that record ``seq`` is in the newest signed tree head that includes it."""
    signed = covering(path, seq)
    located = record_with_seq(path, seq)
    line = _line(path, located)
    checkpoint = signed.note + "".join(cosignature_lines(path, signed))
    proof = _from_tree(lambda tree: inclusion_proof(seq, signed.head.size, tree.subtree),
                       lambda p: verify_inclusion(seq, signed.head.size, leaf_hash(line), p, signed.head.root).ok, path)
    if proof is not None:
        return TlogProof(line, seq, tuple(proof), checkpoint)
    raise LedgerCorruptError(path, f"the proof for record {seq} does not verify against the signed root of size "
                                   f"{signed.head.size}, even from a rebuilt tree: the ledger does not match its "
                                   "checkpoint (run `anticloud verify ledger`)")


def prove_extension(path: Path, old: TreeHead, new: SignedHead | None = None) -> AddCheckpoint:
    """``old N``, the consistency proof from ``old`` to ``new`` (default the newest signed head),
    and ``new``'s checkpoint: a tlog-witness add-checkpoint body."""
    new = new or next(signed_heads(path), None)
    if new is None:
        raise ProofRequestError("the ledger has no signed tree head yet: run `anticloud ledger checkpoint`")
    if old.origin != new.head.origin:
        raise ProofRequestError(f"the older checkpoint is of {old.origin}, not of this ledger ({new.head.origin})")
    if old.size > new.head.size:
        raise ProofRequestError(f"the older checkpoint (size {old.size}) is larger than the newer ({new.head.size})")
    head = new.head
    proof = _from_tree(lambda tree: consistency_proof(old.size, head.size, tree.subtree),
                       lambda p: verify_consistency(old.size, head.size, old.root, head.root, p).ok, path)
    if proof is not None:
        return AddCheckpoint(old.size, tuple(proof), new.note)
    raise ProofRequestError(f"the ledger as it stands does not extend the tree of size {old.size} given (its root "
                            "differs): that checkpoint is not of this ledger, or the ledger was rewritten below it")


def _from_tree(make: Callable[[TreeFile], list[bytes]], verifies: Callable[[list[bytes]], bool],
               path: Path) -> list[bytes] | None:
    """A proof made from the tree file that ``verifies``; else one made again from a tree rebuilt
    from the ledger (a node may be damaged anywhere, and a root can hide it); else None."""
    for rebuild in (False, True):
        with following(path, rebuild) as tree:
            proof = make(tree)
        if verifies(proof):
            return proof
    return None


def _line(path: Path, located: Located) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(located.offset)
        return handle.read(located.length)[:-1]


@dataclass(frozen=True, slots=True)
class ReceiptVerdict:
    """What checking a proof found: ``ok``, or a reason code and one line; and the evidence.

    Reason codes: ``malformed`` (not a tlog-proof or add-checkpoint body, or a record that is not
    one), ``wrong_log`` (the checkpoint is of another origin than the key's), ``bad_signature``
    (no valid signature by the log's key), ``wrong_record`` (the record carried is not the one at
    the proof's index), ``not_included`` / ``not_consistent`` (the Merkle proof fails, with its
    own reason), ``unwitnessed`` (fewer than the quorum of the witnesses given cosigned).
    """

    ok: bool
    kind: str  # "inclusion" or "consistency"
    reason: str | None = None
    detail: str | None = None
    size: int | None = None
    old_size: int | None = None
    record: dict[str, Any] | None = None
    witnesses: list[str] = field(default_factory=list)  # names of the given witnesses that cosigned

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "kind": self.kind, "reason": self.reason, "detail": self.detail, "size": self.size,
                "old_size": self.old_size, "record": self.record, "witnesses": self.witnesses}


def check_receipt(raw: bytes, log: Vkey, witnesses: Sequence[Vkey] = (), quorum: int = 0) -> ReceiptVerdict:
    """Check a tlog-proof made by `prove_record`, holding only the appliance's verifier key (and
    the witnesses'): the record it carries is at its index in a tree the appliance signed."""
    kind = "inclusion"
    try:
        proof = parse_tlog_proof(raw)
    except NoteError as exc:
        return ReceiptVerdict(False, kind, "malformed", f"not a tlog-proof: {exc}")
    head, bad = _signed_by(proof.checkpoint, log, witnesses, quorum, kind)
    if bad is not None:
        return bad
    assert head is not None
    if proof.extra is None:
        return ReceiptVerdict(False, kind, "malformed", "the proof carries no record (no extra line)", head.size)
    try:
        record = parse_line(proof.extra)
    except RecordFault as rf:
        return ReceiptVerdict(False, kind, "malformed", f"the record carried is not one: {rf.detail}", head.size)
    if record.seq != proof.index:
        return ReceiptVerdict(False, kind, "wrong_record", f"the record carried is seq {record.seq}, the proof is "
                                                           f"for index {proof.index}", head.size)
    merkle = verify_inclusion(proof.index, head.size, leaf_hash(proof.extra), list(proof.proof), head.root)
    if not merkle.ok:
        return ReceiptVerdict(False, kind, "not_included", f"{merkle.reason}: {merkle.detail}", head.size)
    return ReceiptVerdict(True, kind, size=head.size, record=record.to_json(),
                          witnesses=_cosigners(proof.checkpoint, witnesses))


def check_extension(raw: bytes, old_note: str, log: Vkey, witnesses: Sequence[Vkey] = (),
                    quorum: int = 0) -> ReceiptVerdict:
    """Check an add-checkpoint body made by `prove_extension` against a checkpoint the auditor
    holds (``old_note``): both signed by the log, and the newer tree extends the older."""
    kind = "consistency"
    try:
        request = parse_add_checkpoint(raw)
    except NoteError as exc:
        return ReceiptVerdict(False, kind, "malformed", f"not an add-checkpoint body: {exc}")
    old, bad = _signed_by(old_note, log, (), 0, kind)
    if bad is not None:
        return replace(bad, detail=f"the checkpoint you hold: {bad.detail}")
    new, bad = _signed_by(request.checkpoint, log, witnesses, quorum, kind)
    if bad is not None:
        return bad
    assert old is not None and new is not None
    if request.old_size != old.size:
        return ReceiptVerdict(False, kind, "wrong_record", f"the proof starts from size {request.old_size}, the "
                                                           f"checkpoint you hold is of size {old.size}", new.size)
    merkle = verify_consistency(old.size, new.size, old.root, new.root, list(request.proof))
    if not merkle.ok:
        return ReceiptVerdict(False, kind, "not_consistent", f"{merkle.reason}: {merkle.detail}", new.size, old.size)
    return ReceiptVerdict(True, kind, size=new.size, old_size=old.size,
                          witnesses=_cosigners(request.checkpoint, witnesses))


def _signed_by(note: str, log: Vkey, witnesses: Sequence[Vkey], quorum: int,
               kind: str) -> tuple[TreeHead | None, ReceiptVerdict | None]:
    try:
        head = tree_head_of(note)
    except NoteError as exc:
        return None, ReceiptVerdict(False, kind, "malformed", f"the checkpoint is malformed: {exc}")
    if head.origin != log.name:
        return None, ReceiptVerdict(False, kind, "wrong_log", f"the checkpoint is of {head.origin}, the key given is "
                                                              f"of {log.name}", head.size)
    verdict = open_note(note, [log])
    if not verdict.ok:
        return None, ReceiptVerdict(False, kind, "bad_signature", f"the checkpoint is not signed by {log.name}: "
                                                                  f"{verdict.detail}", head.size)
    cosigners = _cosigners(note, witnesses)
    if len(cosigners) < quorum:
        return None, ReceiptVerdict(False, kind, "unwitnessed", f"{len(cosigners)} of the {len(witnesses)} witnesses "
                                                                f"given cosigned it; {quorum} are required",
                                    head.size, witnesses=cosigners)
    return head, None


def _cosigners(note: str, witnesses: Sequence[Vkey]) -> list[str]:
    """The names of the given witnesses whose cosignature on ``note`` verifies."""
    names = []
    for witness in witnesses:
        verdict = open_note(note, [witness])
        if verdict.ok and verdict.verified:
            names.append(witness.name)
    return names


__all__ = ["COSIGNED_KIND", "ReceiptVerdict", "SignedHead", "check_extension", "check_receipt", "cosignature_lines",
           "covering", "prove_extension", "prove_record", "signed_heads"]

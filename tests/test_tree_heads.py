"""Signed tree heads: every checkpoint record signs the Merkle tree of the records before it as a
C2SP tlog-checkpoint, the verifier recomputes that tree, and a tree head the auditor holds (a
witness's cosigned one) catches a rewrite below it even by an insider holding every key."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import (
    LedgerWriter,
    SignedCheckpoint,
    TreeHead,
    append_checkpoint,
    ed25519_vkey,
    leaf_hash,
    merkle_root,
    open_note,
    origin_of,
    sign_note,
    tree_head_of,
    verify_file,
)
from ledger.record import parse_line, seal
from tests.conftest import Made


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def checkpointed(made: Made, after: int = 3) -> SignedCheckpoint:
    with LedgerWriter.open(made.path) as writer:
        signed = append_checkpoint(writer, made.key)
        for i in range(after):
            writer.append("test.after", {"i": i})
    return signed


def ledger_id(made: Made) -> str:
    return str(parse_line(lines(made.path)[0]).data["ledger_id"])


def resign(path: Path, key: Ed25519PrivateKey, edit: Any) -> None:
    """An insider with the appliance key: edit records, recompute every hash, and sign every
    checkpoint anew, its tree head included, so that the chain alone verifies."""
    out: list[bytes] = []
    prev = "0" * 64
    for raw in lines(path):
        record = parse_line(raw)
        data = edit(record.seq, dict(record.data))
        if record.kind == "ledger.checkpoint":
            doc = SignedCheckpoint.from_json(data)
            origin = tree_head_of(doc.tlog or "").origin
            root = merkle_root([leaf_hash(line) for line in out])
            tlog = sign_note(TreeHead(origin, len(out), root).text(), origin, key)
            cp = doc.checkpoint
            fresh = type(cp)(cp.ledger_id, record.seq - 1, prev, cp.ts, cp.key_id)
            data = json.loads(json.dumps(SignedCheckpoint(fresh, key.sign(fresh.message()), tlog).to_json()))
        sealed, line = seal(record.seq, record.kind, data, prev, record.ts)
        prev = sealed.hash
        out.append(line.rstrip(b"\n"))
    path.write_bytes(b"".join(line + b"\n" for line in out))


def test_a_checkpoint_signs_the_tree_of_the_records_before_it_as_a_tlog_checkpoint(make_ledger: Any) -> None:
    made = make_ledger(6)
    signed = checkpointed(made)
    assert signed.tlog is not None
    vkey = ed25519_vkey(origin_of(ledger_id(made)), made.public_key)
    verdict = open_note(signed.tlog, [vkey])
    assert verdict.ok, verdict
    head = tree_head_of(signed.tlog)
    before = lines(made.path)[: signed.checkpoint.seq + 1]
    assert (head.origin, head.size, head.root) == (vkey.name, signed.checkpoint.seq + 1,
                                                    merkle_root([leaf_hash(line) for line in before]))
    recorded = SignedCheckpoint.from_json(parse_line(lines(made.path)[head.size]).data)
    assert recorded == signed
    v = verify_file(made.path)
    assert v.status == "intact" and v.tree == {"size": 11, "root": merkle_root(
        [leaf_hash(line) for line in lines(made.path)]).hex()}


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_insider_who_signs_a_wrong_root_is_caught_where_it_was_signed(make_ledger: Any, jobs: int) -> None:
    made = make_ledger(300)
    checkpointed(made, after=200)
    with LedgerWriter.open(made.path) as writer:
        append_checkpoint(writer, made.key)
        writer.append("test.after", {"last": True})
    second = len(lines(made.path)) - 2  # the second checkpoint, deep in the second half

    def lie(seq: int, data: dict[str, Any]) -> dict[str, Any]:
        if seq == second:
            doc = SignedCheckpoint.from_json(data)
            head = tree_head_of(doc.tlog or "")
            wrong = TreeHead(head.origin, head.size, bytes(32))
            return {**data, "tlog": sign_note(wrong.text(), head.origin, made.key)}
        return data

    resign_without_tree(made.path, lie)
    v = verify_file(made.path, jobs=jobs)
    assert v.status == "broken" and v.fault is not None
    assert (v.fault.reason, v.fault.seq, v.fault.expected) == ("tree_mismatch", second, "00" * 32)
    assert v.records == second


def resign_without_tree(path: Path, edit: Any) -> None:
    """Edit records and recompute every hash, leaving the checkpoint records as the edit left them."""
    out, prev = [], "0" * 64
    for raw in lines(path):
        record = parse_line(raw)
        sealed, line = seal(record.seq, record.kind, edit(record.seq, dict(record.data)), prev, record.ts)
        prev = sealed.hash
        out.append(line)
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize(("how", "reason"), [
    ("another origin", "checkpoint_mismatch"),
    ("another size", "checkpoint_mismatch"),
    ("another key", "bad_signature"),
    ("not a note", "invalid_record"),
])
def test_a_tree_head_that_is_not_this_ledgers_is_refused(make_ledger: Any, how: str, reason: str) -> None:
    made = make_ledger(5)
    signed = checkpointed(made)
    head = tree_head_of(signed.tlog or "")
    forged = {
        "another origin": sign_note(TreeHead("anticloud/" + "0" * 32, head.size, head.root).text(),
                                    "anticloud/" + "0" * 32, made.key),
        "another size": sign_note(TreeHead(head.origin, head.size - 1, head.root).text(), head.origin, made.key),
        "another key": sign_note(head.text(), head.origin, Ed25519PrivateKey.generate()),
        "not a note": "anticloud\n",
    }[how]
    seq = signed.checkpoint.seq + 1
    resign_without_tree(made.path, lambda s, d: {**d, "tlog": forged} if s == seq else d)
    v = verify_file(made.path)
    assert v.fault is not None and (v.fault.reason, v.fault.seq) == (reason, seq), v.fault


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_tree_head_the_auditor_holds_catches_a_rewrite_below_it_by_an_insider_with_every_key(
        make_ledger: Any, jobs: int) -> None:
    made = make_ledger(400)
    held = checkpointed(made, after=100).tlog
    assert held is not None
    assert verify_file(made.path, tree_head=held, jobs=jobs).tree_head == {
        "size": tree_head_of(held).size, "root": tree_head_of(held).root.hex(), "matched": True}
    resign(made.path, made.key, lambda seq, data: {**data, "rewritten": True} if seq == 7 else data)
    alone = verify_file(made.path, jobs=jobs)
    assert alone.status == "intact"  # the chain, its checkpoints and their tree heads all verify
    v = verify_file(made.path, tree_head=held, jobs=jobs)
    assert v.status == "broken" and v.fault is not None
    assert (v.fault.reason, v.fault.seq) == ("tree_mismatch", tree_head_of(held).size)
    assert "rewritten below it" in v.fault.detail


def test_a_tree_head_of_more_records_than_the_ledger_holds_is_truncation(make_ledger: Any) -> None:
    made = make_ledger(10)
    held = checkpointed(made, after=5).tlog
    assert held is not None
    kept = lines(made.path)[:8]
    made.path.write_bytes(b"".join(line + b"\n" for line in kept))
    v = verify_file(made.path, tree_head=held)
    assert v.fault is not None and v.fault.reason == "truncated_below_checkpoint"


def test_a_tree_head_of_exactly_the_whole_ledger_is_checked_at_its_end(make_ledger: Any) -> None:
    made = make_ledger(6)
    held = checkpointed(made, after=0).tlog
    assert held is not None
    extra = lines(made.path)  # genesis, 6 records and the checkpoint: the head counts the first 7
    made.path.write_bytes(b"".join(line + b"\n" for line in extra[:7]))
    assert verify_file(made.path, tree_head=held).status == "intact"
    resign_without_tree(made.path, lambda seq, data: {**data, "x": 1} if seq == 6 else data)
    v = verify_file(made.path, tree_head=held)
    assert v.fault is not None and (v.fault.reason, v.fault.seq) == ("tree_mismatch", 7)


def test_a_tree_head_signed_by_another_key_is_refused_before_any_record(make_ledger: Any) -> None:
    made = make_ledger(3)
    held = checkpointed(made).tlog
    head = tree_head_of(held or "")
    other = sign_note(head.text(), head.origin, Ed25519PrivateKey.generate())
    v = verify_file(made.path, tree_head=other)
    assert v.fault is not None and (v.fault.reason, v.fault.seq) == ("bad_signature", 0)


def test_a_tree_head_whose_signature_went_unchecked_is_never_a_pass(make_ledger: Any) -> None:
    """Without a signature checker (the standard-library twin's case), the auditor's tree head is a
    signature left unchecked, even on a ledger that holds no checkpoint record: `unchecked`, not 0."""
    made = make_ledger(4)
    held = checkpointed(made, after=0).tlog
    assert held is not None
    made.path.write_bytes(b"".join(line + b"\n" for line in lines(made.path)[:-1]))  # drop the checkpoint record
    text, _, signature_line = held.rpartition("\n\n")
    prefix, _, blob = signature_line.rstrip("\n").rpartition(" ")
    zeros = base64.b64encode(base64.b64decode(blob)[:4] + bytes(64)).decode()  # the appliance's key id, no signature
    forged_note = f"{text}\n\n{prefix} {zeros}\n"
    for note in (held, forged_note):
        v = verify_file(made.path, tree_head=note, check_signature=None)
        assert (v.status, v.exit_code, v.checkpoints_in_ledger) == ("unchecked", 5, 0), v.fault
    assert verify_file(made.path, tree_head=held).status == "intact"
    v = verify_file(made.path, tree_head=forged_note)
    assert v.fault is not None and (v.fault.reason, v.fault.seq) == ("bad_signature", 0)

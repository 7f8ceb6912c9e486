"""Receipts and extension proofs (ledger.receipt): made from the tree beside the ledger, checked
with keys alone, and refused, each for its reason, when anything in them was changed."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import (
    LedgerWriter,
    ProofRequestError,
    TlogProof,
    Vkey,
    append_checkpoint,
    check_extension,
    check_receipt,
    cosign,
    cosigner_vkey,
    ed25519_vkey,
    origin_of,
    parse_add_checkpoint,
    parse_tlog_proof,
    prove_extension,
    prove_record,
    signed_heads,
    tree_head_of,
)
from ledger.record import parse_line
from ledger.tree import HEADER_SIZE, node_index, tree_path
from tests.conftest import Made
from tests.test_tree_heads import lines, resign_without_tree


def grown(make_ledger: Any, n: int = 40) -> tuple[Made, Vkey]:
    made = make_ledger(n)
    with LedgerWriter.open(made.path) as writer:
        append_checkpoint(writer, made.key)
    origin = origin_of(str(parse_line(lines(made.path)[0]).data["ledger_id"]))
    return made, ed25519_vkey(origin, made.public_key)


def test_a_receipt_for_every_record_carries_it_and_checks_with_the_key_alone(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger)
    size = tree_head_of(next(signed_heads(made.path)).note).size
    for seq in range(size):
        raw = prove_record(made.path, seq).encode()
        verdict = check_receipt(raw, vkey)
        assert verdict.ok and verdict.size == size and verdict.record is not None and verdict.record["seq"] == seq
        assert parse_tlog_proof(raw).extra == lines(made.path)[seq]  # the record itself, byte for byte
    with pytest.raises(ProofRequestError, match=f"no signed tree head includes record {size}"):
        prove_record(made.path, size)  # the checkpoint record itself: not in the tree it signs


def _swap(base: TlogProof, **changes: Any) -> bytes:
    fields = {"extra": base.extra, "index": base.index, "proof": base.proof, "checkpoint": base.checkpoint}
    return TlogProof(**{**fields, **changes}).encode()


def test_every_kind_of_tampering_with_a_receipt_is_refused_for_its_reason(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger)
    good = prove_record(made.path, 13)
    other, other_vkey = grown(make_ledger)
    foreign = prove_record(other.path, 13)
    wrong_sibling = (bytes(32), *good.proof[1:])
    cases = {
        "wrong sibling": (_swap(good, proof=wrong_sibling), "not_included"),
        "wrong index": (_swap(good, index=12), "wrong_record"),
        "wrong index and its record": (_swap(good, index=12, extra=lines(made.path)[12]), "not_included"),
        "swapped record": (_swap(good, extra=lines(made.path)[14]), "wrong_record"),
        "record edited": (_swap(good, extra=good.extra.replace(b'"i":12', b'"i":99') if good.extra else b""),
                          "malformed"),
        "proof cut short": (_swap(good, proof=good.proof[:-1]), "not_included"),
        "a checkpoint from another log": (_swap(good, checkpoint=foreign.checkpoint), "wrong_log"),
        "a checkpoint of another size": (_swap(good, checkpoint=good.checkpoint.replace("\n41\n", "\n42\n")),
                                         "bad_signature"),
        "no record": (_swap(good, extra=None), "malformed"),
        "not a proof": (b"c2sp.org/tlog-proof@v1\nindex x\n", "malformed"),
    }
    assert check_receipt(good.encode(), vkey).ok and check_receipt(foreign.encode(), other_vkey).ok
    for name, (raw, reason) in cases.items():
        verdict = check_receipt(raw, vkey)
        assert (verdict.ok, verdict.reason) == (False, reason), (name, verdict)
        assert verdict.detail and "\n" not in verdict.detail


def test_a_receipt_counts_the_witnesses_that_cosigned_its_checkpoint(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger)
    witnesses = [Ed25519PrivateKey.generate() for _ in range(3)]
    keys = [cosigner_vkey(f"audit.example/w{i}", w.public_key()) for i, w in enumerate(witnesses)]
    head = tree_head_of(next(signed_heads(made.path)).note)
    with LedgerWriter.open(made.path) as writer:
        for i in (0, 2):
            writer.append("ledger.cosigned", {"witness": keys[i].name, "vkey": keys[i].encode(), "size": head.size,
                                              "root": base64.b64encode(head.root).decode(),
                                              "cosignature": cosign(head.text(), keys[i].name, witnesses[i], 1000 + i)})
    raw = prove_record(made.path, 3).encode()
    assert check_receipt(raw, vkey, keys, 2).witnesses == ["audit.example/w0", "audit.example/w2"]
    short = check_receipt(raw, vkey, keys, 3)
    assert (short.ok, short.reason) == (False, "unwitnessed")


def test_a_consistency_proof_from_a_held_checkpoint_to_a_later_one(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger, 10)
    old_note = next(signed_heads(made.path)).note
    with LedgerWriter.open(made.path) as writer:
        for i in range(37):
            writer.append("test.later", {"i": i})
        append_checkpoint(writer, made.key)
    body = prove_extension(made.path, tree_head_of(old_note)).encode()
    verdict = check_extension(body, old_note, vkey)
    assert verdict.ok and (verdict.old_size, verdict.size) == (11, 49)
    request = parse_add_checkpoint(body)
    bad_proof = request.__class__(request.old_size, (bytes(32), *request.proof[1:]), request.checkpoint).encode()
    assert check_extension(bad_proof, old_note, vkey).reason == "not_consistent"
    other, _ = grown(make_ledger, 10)
    assert check_extension(body, next(signed_heads(other.path)).note, vkey).reason == "wrong_log"
    with pytest.raises(ProofRequestError, match="not of this ledger"):
        prove_extension(made.path, tree_head_of(next(signed_heads(other.path)).note))


def test_a_damaged_tree_file_is_rebuilt_and_the_receipt_still_verifies(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger)
    path = tree_path(made.path)
    raw = bytearray(path.read_bytes())
    for at in range(64, len(raw), 97):
        raw[at] ^= 0xFF  # damage spread through the nodes; the ends the opening checks look at too
    path.write_bytes(bytes(raw))
    assert check_receipt(prove_record(made.path, 21).encode(), vkey).ok


def test_a_ledger_rewritten_under_its_checkpoint_gives_no_receipt(make_ledger: Any) -> None:
    made, _ = grown(make_ledger)
    resign_without_tree(made.path, lambda seq, data: {**data, "i": 99} if seq == 5 else data)
    tree_path(made.path).unlink()
    with pytest.raises(Exception, match="does not verify against the signed root"):
        prove_record(made.path, 5)


def test_a_node_damaged_inside_the_tree_file_is_rebuilt_and_the_proof_made_again(make_ledger: Any) -> None:
    made, vkey = grown(make_ledger)
    path = tree_path(made.path)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 32 * node_index(4, 0)] ^= 0xFF  # leaves 0..15: neither the opening checks nor root(41) see it
    path.write_bytes(bytes(raw))
    before = path.stat().st_ino
    assert check_receipt(prove_record(made.path, 20).encode(), vkey).ok  # its path holds leaves 0..15
    assert path.stat().st_ino != before  # the first proof did not verify: the file was rebuilt

"""The tamper corpus behind SECURITY.md's table: each attack, whether it is detected, by which check,
and whether detecting it needs a checkpoint the auditor holds."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.errors import WitnessError
from anticloud.witness import Witness
from ledger import (
    AddCheckpoint,
    LedgerWriter,
    SignedCheckpoint,
    TlogProof,
    TreeHead,
    append_checkpoint,
    check_receipt,
    consistency_proof,
    ed25519_vkey,
    leaf_hash,
    prove_record,
    raw_public_key,
    sign_note,
    signed_heads,
    tree_head_of,
    verify_file,
)
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.merkle import from_leaves
from ledger.record import parse_line, seal
from tests.conftest import Made, genesis_for
from tests.test_tree_heads import resign
from tests.test_witness import Log

MEMBERS = ("data", "hash", "kind", "prev", "seq", "ts", "v")


class Corpus:
    def __init__(self, tmp: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.good = tmp / "good.jsonl"
        with LedgerWriter.create(self.good, genesis_for(self.key)) as writer:
            for i in range(6):
                writer.append("inference.begin", {"id": f"i{i}", "prompt_sha3_256": "sha3-256:" + "ab" * 32})
            self.checkpoint = append_checkpoint(writer, self.key)  # what the auditor takes away: seq 6
            for i in range(3):
                writer.append("inference.end", {"id": f"late{i}", "done_reason": "stop"})
        self.lines = self.good.read_bytes().splitlines(keepends=True)
        self.tmp = tmp

    def write(self, lines: list[bytes], name: str = "t.jsonl") -> Path:
        path = self.tmp / name
        path.write_bytes(b"".join(lines))
        return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("tamper"))


def member_span(line: bytes, member: str) -> tuple[int, int]:
    """Where a member's value sits in a canonical line (a span safely inside it)."""
    at = line.index(f'"{member}":'.encode()) + len(member) + 3
    return at, at + 1


def reseal(lines: list[bytes], edit: Callable[[int, dict[str, Any]], dict[str, Any]], key: Ed25519PrivateKey | None,
           ledger_id: str | None = None) -> list[bytes]:
    """An insider's rewrite: edit records, recompute every hash, and re-sign checkpoints with ``key``."""
    out, prev = [], "0" * 64
    head = None
    for raw in lines:
        r = parse_line(raw.rstrip(b"\n"))
        data = edit(r.seq, dict(r.data))
        if r.kind == "ledger.checkpoint" and key is not None and head is not None:
            old = SignedCheckpoint.from_json(r.data).checkpoint
            data = sign_checkpoint(Checkpoint(old.ledger_id, head.seq, head.hash, old.ts, old.key_id), key).to_json()
        sealed, line = seal(r.seq, r.kind, data, prev, r.ts)
        prev, head = sealed.hash, sealed
        out.append(line)
    return out


@pytest.mark.parametrize("member", MEMBERS)
def test_a_byte_flip_in_any_field_of_any_record_is_caught_at_that_record(corpus: Corpus, member: str) -> None:
    for seq, line in enumerate(corpus.lines):
        start, _ = member_span(line, member)
        flipped = line[:start] + bytes([line[start] ^ 0x01]) + line[start + 1:]
        verdict = verify_file(corpus.write([*corpus.lines[:seq], flipped, *corpus.lines[seq + 1:]]))
        assert verdict.fault is not None and verdict.fault.seq == seq, (member, seq, verdict.fault)


@pytest.mark.parametrize("operation", ["delete", "insert", "duplicate", "reorder"])
def test_deleting_inserting_duplicating_reordering_any_record_is_caught(corpus: Corpus, operation: str) -> None:
    foreign = seal(3, "inference.begin", {"id": "forged"}, "0" * 64)[1]
    for i in range(1, len(corpus.lines) - 1):
        lines = list(corpus.lines)
        if operation == "delete":
            del lines[i]
        elif operation == "insert":
            lines.insert(i, foreign)
        elif operation == "duplicate":
            lines.insert(i, lines[i])
        else:
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        verdict = verify_file(corpus.write(lines))
        assert verdict.status == "broken", (operation, i)
        assert verdict.fault is not None and verdict.fault.seq in (i, i + 1), (operation, i, verdict.fault)


def test_truncation_at_every_boundary_needs_a_checkpoint_below_it(corpus: Corpus) -> None:
    for keep in range(1, len(corpus.lines)):
        path = corpus.write(corpus.lines[:keep])
        assert verify_file(path).status == "intact", "the chain alone cannot see a clean cut"
        verdict = verify_file(path, checkpoint=corpus.checkpoint)
        if keep <= corpus.checkpoint.checkpoint.seq:
            assert verdict.fault is not None and verdict.fault.reason == "truncated_below_checkpoint"
        else:
            assert verdict.status == "intact", "records after the auditor's checkpoint are not pinned"


def test_rollback_to_an_older_copy_is_caught_with_a_checkpoint(corpus: Corpus, tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    shutil.copy(corpus.good, old)
    with LedgerWriter.open(corpus.good) as writer:  # the ledger moves on, and the auditor checkpoints it
        writer.append("inference.begin", {"id": "later"})
        newer = append_checkpoint(writer, corpus.key)
    try:
        assert verify_file(old).status == "intact"
        verdict = verify_file(old, checkpoint=newer)
        assert verdict.fault is not None and verdict.fault.reason == "truncated_below_checkpoint"
    finally:
        corpus.good.write_bytes(b"".join(corpus.lines))


def test_a_full_rewrite_with_recomputed_hashes_needs_the_auditors_checkpoint(corpus: Corpus) -> None:
    rewritten = reseal(corpus.lines, lambda seq, d: {**d, "id": "edited"} if seq == 2 else d, key=None)
    path = corpus.write(rewritten)
    # The in-ledger checkpoint (seq 7) still signs the old seq 6, so the chain alone notices here...
    assert verify_file(path).fault.reason == "checkpoint_mismatch"  # type: ignore[union-attr]
    # ...and the auditor's copy does in any case.
    verdict = verify_file(path, checkpoint=corpus.checkpoint)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("checkpoint_mismatch", 6)


def test_a_forged_checkpoint_and_one_from_another_key_are_refused(corpus: Corpus) -> None:
    doc = corpus.checkpoint.to_json()
    doc["checkpoint"]["seq"] = 5
    forged = SignedCheckpoint.from_json(doc)
    assert verify_file(corpus.good, checkpoint=forged).fault.reason == "bad_signature"  # type: ignore[union-attr]
    other = sign_checkpoint(corpus.checkpoint.checkpoint, Ed25519PrivateKey.generate())
    assert verify_file(corpus.good, checkpoint=other).fault.reason == "bad_signature"  # type: ignore[union-attr]


def test_an_insider_with_the_appliance_key_edits_and_re_signs(corpus: Corpus) -> None:
    """What the appliance's own key can and cannot hide: SECURITY.md says the same."""
    # Before the auditor's checkpoint: the re-signed in-ledger checkpoints verify, but the auditor's does not match.
    before = corpus.write(reseal(corpus.lines, lambda seq, d: {**d, "id": "x"} if seq == 2 else d, corpus.key))
    assert verify_file(before).status == "intact", "a self-consistent rewrite re-signed with the key verifies"
    verdict = verify_file(before, checkpoint=corpus.checkpoint)
    assert verdict.fault is not None and verdict.fault.reason == "checkpoint_mismatch"
    # After the auditor's checkpoint: nothing in the file can tell. Only a later checkpoint held elsewhere could.
    after = corpus.write(reseal(corpus.lines, lambda seq, d: {**d, "done_reason": "x"} if seq == 8 else d,
                                corpus.key), "after.jsonl")
    assert verify_file(after, checkpoint=corpus.checkpoint).status == "intact"
    assert json.loads(after.read_bytes().splitlines()[8])["data"]["done_reason"] == "x"


# -- the Merkle tree, witnesses and receipts --------------------------------------------------------------


def test_a_tree_head_signed_over_a_wrong_root_is_caught_at_its_checkpoint(corpus: Corpus) -> None:
    """An insider with the key signs a tree head that does not match the records (to hand out
    receipts for records that are not there): the verifier recomputes the tree."""
    cp_seq = corpus.checkpoint.checkpoint.seq + 1
    doc = json.loads(corpus.lines[cp_seq])["data"]
    head = tree_head_of(doc["tlog"])
    lie = sign_note(TreeHead(head.origin, head.size, bytes(32)).text(), head.origin, corpus.key)
    path = corpus.write(reseal(corpus.lines, lambda seq, d: {**d, "tlog": lie} if seq == cp_seq else d, key=None))
    verdict = verify_file(path)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("tree_mismatch", cp_seq)


def test_a_rewrite_below_a_witnessed_checkpoint_is_refused_by_the_witness_and_caught_by_its_cosignature(
        tmp_path: Path) -> None:
    """Root with every key on the appliance rewrites a record below the checkpoint a witness
    cosigned, and re-signs every checkpoint and tree head: the chain alone verifies, but the
    witness refuses the next request (a fork), and the cosigned checkpoint it handed out names it."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "appliance.jsonl"
    LedgerWriter.create(path, genesis_for(key)).close()
    log = Log(Made(path, key, raw_public_key(key.public_key())))
    log.grow(6)
    witness = Witness.init(tmp_path / "witness", "audit.example/w1")
    witness.add_log(log.vkey.encode())
    held_head = log.latest()
    _, cosigned = witness.cosign(AddCheckpoint(0, (), next(signed_heads(path)).note).encode())
    resign(path, key, lambda seq, d: {**d, "edited": True} if seq == 3 else d)
    log.grow(2)
    assert verify_file(path).status == "intact"
    leaves = [leaf_hash(line) for line in path.read_bytes().split(b"\n")[:-1]]
    new = log.latest()
    forged = consistency_proof(held_head.size, new.size, from_leaves(leaves.__getitem__))
    with pytest.raises(WitnessError) as refused:
        witness.cosign(AddCheckpoint(held_head.size, tuple(forged), next(signed_heads(path)).note).encode())
    assert refused.value.reason == "inconsistent"
    verdict = verify_file(path, tree_head=cosigned)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("tree_mismatch", held_head.size)


def test_a_tampered_receipt_is_refused_without_the_ledger(corpus: Corpus) -> None:
    """A receipt is checked with the appliance's verifier key alone; each change to it is refused."""
    vkey = ed25519_vkey(tree_head_of(json.loads(corpus.lines[7])["data"]["tlog"]).origin,
                        raw_public_key(corpus.key.public_key()))
    good = prove_record(corpus.good, 3)
    assert check_receipt(good.encode(), vkey).ok
    for tampered in (TlogProof(good.extra, good.index, (bytes(32), *good.proof[1:]), good.checkpoint),
                     TlogProof(corpus.lines[4].rstrip(b"\n"), good.index, good.proof, good.checkpoint),
                     TlogProof(good.extra, good.index, good.proof[:-1], good.checkpoint)):
        assert not check_receipt(tampered.encode(), vkey).ok



# -- sealed content (docs/ledger-format.md section 15) ------------------------------------------------------


def test_replacing_sealed_content_is_caught_by_its_commitment_and_rewriting_that_by_the_chain(
        tmp_path: Path) -> None:
    """Whoever swaps a content file is caught by the record's sha3_256 (exit 7, both verifiers);
    whoever also edits that commitment breaks the record's hash; and an insider who rehashes and
    re-signs the chain after it is caught by the auditor's checkpoint, as for any other rewrite."""
    from tests.test_content_verify import KEY_A, both, build

    key = Ed25519PrivateKey.generate()
    made = build(tmp_path, [("inference", KEY_A), ("inference", KEY_A)], key=key)
    with LedgerWriter.open(made.path) as writer:
        held = append_checkpoint(writer, key)
    lines = made.path.read_bytes().splitlines(keepends=True)
    forged = b"another answer, sealed by the forger"
    made.file(made.inferences[0], "output").write_bytes(forged)
    swapped = both(made)
    assert (swapped["verdict"], swapped["exit_code"], swapped["content"]["mismatched_count"]) == ("intact", 7, 1)
    old = made.refs[(made.inferences[0], "output")][1]["sha3_256"]
    new = "sha3-256:" + hashlib.sha3_256(forged).hexdigest()
    made.path.write_bytes(b"".join(line.replace(old.encode(), new.encode()) for line in lines))
    edited = both(made)
    assert edited["fault"] is not None and (edited["fault"]["reason"], edited["fault"]["seq"]) == ("hash_mismatch", 2)
    made.path.write_bytes(b"".join(reseal(lines, lambda seq, d: json.loads(json.dumps(d).replace(old, new)), key)))
    assert both(made)["exit_code"] == 0, "re-signed with the appliance key, the file alone cannot tell"
    verdict = verify_file(made.path, checkpoint=held, content_dir=made.store)
    assert verdict.fault is not None and verdict.fault.reason == "checkpoint_mismatch"

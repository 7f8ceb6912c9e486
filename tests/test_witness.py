"""The witness (anticloud.witness, `anticloud witness`): it cosigns an appliance's checkpoints only
if they extend what it cosigned before, refuses everything else with a reason, records every
answer in a ledger of its own, and so catches a rewrite by an insider who holds every key."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.errors import WitnessError
from anticloud.witness import LOGS_FILE, Witness
from ledger import (
    EMPTY_ROOT,
    AddCheckpoint,
    LedgerWriter,
    TreeHead,
    append_checkpoint,
    consistency_proof,
    ed25519_vkey,
    leaf_hash,
    open_note,
    origin_of,
    parse_vkey,
    prove_extension,
    records_forward,
    sign_note,
    signed_heads,
    tree_head_of,
    verify_file,
)
from ledger.merkle import from_leaves
from ledger.record import parse_line
from tests.test_tree_heads import lines, resign


class Log:
    """An appliance's ledger seen from outside: it grows, checkpoints, and answers requests."""

    def __init__(self, made: Any) -> None:
        self.made = made
        self.origin = origin_of(str(parse_line(lines(made.path)[0]).data["ledger_id"]))
        self.vkey = ed25519_vkey(self.origin, made.public_key)

    def grow(self, n: int) -> None:
        with LedgerWriter.open(self.made.path) as writer:
            for i in range(n):
                writer.append("test.event", {"i": i})
            append_checkpoint(writer, self.made.key)

    def request(self, old: TreeHead) -> bytes:
        return prove_extension(self.made.path, old).encode()

    def latest(self) -> TreeHead:
        return next(signed_heads(self.made.path)).head


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness.init(tmp_path / "witness", "audit.example/w1")


@pytest.fixture
def log(make_ledger: Any) -> Log:
    log = Log(make_ledger(5))
    log.grow(3)
    return log


def empty(log: Log) -> TreeHead:
    return TreeHead(log.origin, 0, EMPTY_ROOT)


def test_a_witness_cosigns_a_log_that_grows_and_keeps_what_it_cosigned(witness: Witness, log: Log) -> None:
    witness.add_log(log.vkey.encode())
    first = log.latest()
    line, cosigned = witness.cosign(log.request(empty(log)), now=1_800_000_000)
    mine = parse_vkey(Witness.vkey(witness.key(), witness.name))
    verdict = open_note(cosigned, [log.vkey, mine])
    assert verdict.ok and [s.timestamp for s in verdict.verified] == [None, 1_800_000_000]
    assert cosigned.endswith(line) and tree_head_of(cosigned) == first
    log.grow(10)
    _, again = witness.cosign(log.request(first))
    assert tree_head_of(again) == log.latest() and log.latest().size > first.size
    state = witness.logs()[log.origin]
    assert (state.size, state.root, state.checkpoint) == (log.latest().size, log.latest().root, again)
    assert stat.S_IMODE((witness.root / LOGS_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((witness.root / "witness.key").stat().st_mode) == 0o600
    kinds = [located.record.kind for located in records_forward(witness.root / "ledger.jsonl")]
    assert kinds == ["ledger.genesis", "witness.init", "witness.add_log", "witness.cosigned", "witness.cosigned"]
    assert verify_file(witness.root / "ledger.jsonl").status == "intact"


def refused(witness: Witness, request: bytes, reason: str) -> str:
    before = (witness.root / LOGS_FILE).read_bytes()
    with pytest.raises(WitnessError) as caught:
        witness.cosign(request)
    assert caught.value.reason == reason, caught.value
    assert (witness.root / LOGS_FILE).read_bytes() == before  # nothing cosigned, nothing changed
    last = list(records_forward(witness.root / "ledger.jsonl"))[-1].record
    assert (last.kind, last.data["reason"]) == ("witness.refused", reason)  # and the refusal is recorded
    return str(caught.value)


def test_a_rewrite_below_a_cosigned_checkpoint_by_an_insider_with_every_key_is_refused(
        witness: Witness, log: Log) -> None:
    witness.add_log(log.vkey.encode())
    cosigned_head = log.latest()
    witness.cosign(log.request(empty(log)))
    # root on the appliance rewrites record 2 and signs everything again with the appliance key
    resign(log.made.path, log.made.key, lambda seq, data: {**data, "rewritten": True} if seq == 2 else data)
    assert verify_file(log.made.path).status == "intact"  # alone, the rewritten ledger looks sound
    log.grow(4)
    with pytest.raises(Exception, match="does not extend the tree of size"):
        log.request(cosigned_head)  # the appliance cannot even make the proof
    # so the insider forges one: the rewritten tree's own proof from the cosigned size
    leaves = [leaf_hash(line) for line in lines(log.made.path)]
    new = log.latest()
    proof = consistency_proof(cosigned_head.size, new.size, from_leaves(leaves[: new.size].__getitem__))
    note = next(signed_heads(log.made.path)).note
    message = refused(witness, AddCheckpoint(cosigned_head.size, tuple(proof), note).encode(), "inconsistent")
    assert "forked or rewritten" in message
    # or pretends the witness never cosigned anything
    refused(witness, AddCheckpoint(0, (), note).encode(), "stale")


def test_every_other_refusal_names_its_reason(witness: Witness, log: Log) -> None:
    note = next(signed_heads(log.made.path)).note
    refused(witness, AddCheckpoint(0, (), note).encode(), "unknown_log")
    witness.add_log(log.vkey.encode())
    head = log.latest()
    stranger = sign_note(head.text(), head.origin, Ed25519PrivateKey.generate())
    refused(witness, AddCheckpoint(0, (), stranger).encode(), "bad_signature")
    refused(witness, b"old 1\nnot base64\n\n" + note.encode(), "bad_request")
    refused(witness, AddCheckpoint(head.size + 1, (), note).encode(), "bad_request")
    witness.cosign(AddCheckpoint(0, (), note).encode())
    same_size_other_root = sign_note(TreeHead(head.origin, head.size, bytes(32)).text(), head.origin, log.made.key)
    refused(witness, AddCheckpoint(head.size, (), same_size_other_root).encode(), "inconsistent")
    refused(witness, AddCheckpoint(1, (), note).encode(), "stale")


def test_a_witness_refuses_to_be_made_twice_or_to_add_a_log_twice(witness: Witness, log: Log) -> None:
    with pytest.raises(WitnessError, match="already holds a witness"):
        Witness.init(witness.root, "again")
    witness.add_log(log.vkey.encode())
    with pytest.raises(WitnessError, match="already added"):
        witness.add_log(log.vkey.encode())
    with pytest.raises(WitnessError, match="not a verifier key"):
        witness.add_log("anticloud/x+00000000+AAAA")


def test_damaged_state_is_a_clear_error_not_a_cosignature(witness: Witness, log: Log) -> None:
    witness.add_log(log.vkey.encode())
    doc = json.loads((witness.root / LOGS_FILE).read_text())
    doc["logs"][log.origin]["root"] = base64.b64encode(b"short").decode() + "!"
    (witness.root / LOGS_FILE).write_text(json.dumps(doc))
    with pytest.raises(WitnessError, match="damaged"):
        witness.cosign(log.request(empty(log)))

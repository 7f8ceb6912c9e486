"""Checkpoints: what an auditor-held signature catches that the chain alone cannot."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import LedgerCorruptError, LedgerWriter, SignedCheckpoint, append_checkpoint, verify_file
from ledger.checkpoint import Checkpoint, load_checkpoint, sign_checkpoint
from ledger.record import parse_line, seal


def checkpointed(make_ledger: Any, n: int = 4) -> tuple[Any, SignedCheckpoint]:
    made = make_ledger(n)
    with LedgerWriter.open(made.path) as writer:
        signed = append_checkpoint(writer, made.key)
        for i in range(3):
            writer.append("test.after", {"i": i})
    return made, signed


def rewrite(path: Path, edit_seq: int) -> None:
    """The insider's attack: edit one record and recompute every hash after it."""
    lines = path.read_bytes().splitlines()
    prev, out = "0" * 64, []
    for raw in lines:
        record = parse_line(raw)
        data = dict(record.data, tampered=True) if record.seq == edit_seq else record.data
        sealed, line = seal(record.seq, record.kind, data, prev, record.ts)
        prev = sealed.hash
        out.append(line)
    path.write_bytes(b"".join(out))


def test_checkpoint_is_recorded_and_matches(make_ledger: Any) -> None:
    made, signed = checkpointed(make_ledger)
    assert signed.checkpoint.seq == 4
    verdict = verify_file(made.path, checkpoint=signed, public_key=made.public_key)
    assert verdict.status == "intact" and verdict.checkpoints_in_ledger == 1
    assert verdict.checkpoint == {"seq": 4, "hash": signed.checkpoint.hash, "ts": signed.checkpoint.ts,
                                  "matched": True}


def test_truncation_below_the_checkpoint_is_caught(make_ledger: Any) -> None:
    made, signed = checkpointed(make_ledger)
    lines = made.path.read_bytes().splitlines(keepends=True)
    for keep in range(1, 5):  # every record boundary below the checkpointed seq 4
        made.path.write_bytes(b"".join(lines[:keep]))
        assert verify_file(made.path).status == "intact", "without a checkpoint, truncation is invisible"
        verdict = verify_file(made.path, checkpoint=signed)
        assert verdict.fault is not None
        assert (verdict.fault.reason, verdict.fault.seq) == ("truncated_below_checkpoint", 4)


def test_rollback_to_an_older_copy_is_caught(make_ledger: Any, tmp_path: Path) -> None:
    made = make_ledger(2)
    old = tmp_path / "old-copy.jsonl"
    shutil.copy(made.path, old)
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.later", {})
        signed = append_checkpoint(writer, made.key)
    verdict = verify_file(old, checkpoint=signed)
    assert verdict.fault is not None and verdict.fault.reason == "truncated_below_checkpoint"


@pytest.mark.parametrize("edit_seq", [1, 3, 4])
def test_full_rewrite_with_recomputed_hashes_is_caught(make_ledger: Any, edit_seq: int) -> None:
    made, signed = checkpointed(make_ledger)
    lines_before = made.path.read_bytes().splitlines()
    rewrite(made.path, edit_seq)
    # The in-ledger checkpoint record (seq 5) signs the old seq 4, so the chain alone catches it too...
    assert verify_file(made.path).fault is not None
    # ...but the auditor's copy is what cannot be rewritten along with the file.
    verdict = verify_file(made.path, checkpoint=signed)
    assert verdict.fault is not None
    assert verdict.fault.reason == "checkpoint_mismatch" and verdict.fault.seq == 4
    assert verdict.fault.expected == signed.checkpoint.hash
    assert made.path.read_bytes().splitlines()[edit_seq] != lines_before[edit_seq]


def test_rewrite_that_also_drops_in_ledger_checkpoints_needs_the_auditor_copy(make_ledger: Any) -> None:
    made, signed = checkpointed(make_ledger)
    lines = [x for x in made.path.read_bytes().splitlines() if b'"kind":"ledger.checkpoint"' not in x]
    prev, out = "0" * 64, list[bytes]()
    for seq, raw in enumerate(lines):
        record = parse_line(raw)
        sealed, line = seal(seq, record.kind, dict(record.data, edited=seq == 2), prev, record.ts)
        prev, out = sealed.hash, [*out, line]
    made.path.write_bytes(b"".join(out))
    assert verify_file(made.path).status == "intact", "a clean rewrite is self-consistent"
    verdict = verify_file(made.path, checkpoint=signed)
    assert verdict.fault is not None and verdict.fault.reason == "checkpoint_mismatch"


def test_forged_checkpoint_signature_is_caught(make_ledger: Any) -> None:
    made, signed = checkpointed(make_ledger)
    doc = signed.to_json()
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    forged = SignedCheckpoint.from_json({**doc, "signature": base64.b64encode(bytes(sig)).decode()})
    verdict = verify_file(made.path, checkpoint=forged)
    assert verdict.fault is not None and verdict.fault.reason == "bad_signature"


def test_checkpoint_signed_by_another_key_is_caught(make_ledger: Any) -> None:
    made, signed = checkpointed(make_ledger)
    other = sign_checkpoint(signed.checkpoint, Ed25519PrivateKey.generate())
    verdict = verify_file(made.path, checkpoint=other)
    assert verdict.fault is not None and verdict.fault.reason == "bad_signature"
    impostor = Ed25519PrivateKey.generate()
    relabelled = sign_checkpoint(Checkpoint(signed.checkpoint.ledger_id, 4, signed.checkpoint.hash,
                                            signed.checkpoint.ts, "sha3-256:" + "0" * 64), impostor)
    assert verify_file(made.path, checkpoint=relabelled).fault.reason == "bad_signature"  # type: ignore[union-attr]


def test_in_ledger_checkpoint_with_a_bad_signature_is_refused_by_the_writer_and_caught(make_ledger: Any) -> None:
    made = make_ledger(2)
    with LedgerWriter.open(made.path) as writer:
        head = writer.head
        lid = writer.genesis.data["ledger_id"]
        bogus = sign_checkpoint(Checkpoint(lid, head.seq, head.hash, head.ts, writer.genesis.data["key_id"]),
                                Ed25519PrivateKey.generate())
        with pytest.raises(LedgerCorruptError, match="signature does not verify"):
            writer.append("ledger.checkpoint", bogus.to_json())  # the writer obeys the verifier's rules
        assert writer.head == head
    _, line = seal(head.seq + 1, "ledger.checkpoint", bogus.to_json(), head.hash)
    with made.path.open("ab") as handle:  # written around the writer, by someone with the file
        handle.write(line)
    verdict = verify_file(made.path)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("bad_signature", 3)


def test_a_different_appliance_key_is_caught_with_pubkey(make_ledger: Any) -> None:
    made = make_ledger(1)
    other = make_ledger(1)
    verdict = verify_file(made.path, public_key=other.public_key)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("key_mismatch", 0)


def test_checkpoint_file_round_trips(make_ledger: Any, tmp_path: Path) -> None:
    _, signed = checkpointed(make_ledger)
    path = tmp_path / "cp.json"
    path.write_bytes(signed.to_bytes())
    assert load_checkpoint(path) == signed
    assert json.loads(path.read_bytes())["checkpoint"]["type"] == "anticloud.ledger.checkpoint"


@pytest.mark.parametrize(
    ("member", "value"),
    [("v", True), ("seq", True), ("ts", "2026-02-30T00:00:00.000000Z"),
     ("ts", "\u0662\u0660\u0662\u0666-01-02T03:04:05.678901Z")],
    ids=["v-true", "seq-true", "february-30", "arabic-digits"],
)
def test_a_checkpoint_member_of_the_wrong_type_or_form_is_refused(make_ledger: Any, member: str, value: Any) -> None:
    """Python's True == 1 and \\d matches any script's digits: neither may pass for the member's real form."""
    _, signed = checkpointed(make_ledger)
    doc = signed.to_json()
    doc["checkpoint"][member] = value
    with pytest.raises(ValueError, match=member):
        SignedCheckpoint.from_json(doc)


def test_only_the_standard_spelling_of_the_signature_is_accepted(make_ledger: Any) -> None:
    _, signed = checkpointed(make_ledger)
    doc = signed.to_json()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sig = doc["signature"]
    other = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="  # the same 64 bytes to b64decode
    assert base64.b64decode(other) == signed.signature
    with pytest.raises(ValueError, match="standard base64"):
        SignedCheckpoint.from_json({**doc, "signature": other})

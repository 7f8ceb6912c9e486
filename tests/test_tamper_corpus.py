"""The tamper corpus behind SECURITY.md's table: each attack, whether it is detected, by which check,
and whether detecting it needs a checkpoint the auditor holds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import LedgerWriter, SignedCheckpoint, append_checkpoint, verify_file
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.record import parse_line, seal
from tests.conftest import genesis_for

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

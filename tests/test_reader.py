"""Reading a ledger forwards and backwards from the head: the same records as a full parse, in bounded blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ledger.reader
from ledger import (
    LedgerCorruptError,
    LedgerWriter,
    last_record,
    record_at,
    record_with_seq,
    records_backward,
    records_forward,
    records_linked,
    verify_file,
)
from ledger.record import parse_line, seal

KINDS = ["inference.begin", "inference.end", "engine.start", "config.change", "engine.stop", "other.thing"]


def everything(path: Path) -> list[tuple[int, dict[str, Any]]]:
    raw, out, offset = path.read_bytes(), [], 0
    for line in raw.split(b"\n")[:-1]:
        out.append((offset, json.loads(line)))
        offset += len(line) + 1
    return out


@pytest.fixture
def mixed(make_ledger: Any) -> Path:
    made = make_ledger(0)
    with LedgerWriter.open(made.path) as writer:
        for i in range(300):
            kind = KINDS[i % len(KINDS)]
            # Data that holds the envelope's own bytes must not be taken for a record of that kind.
            decoy = ',"kind":"engine.stop","prev":"' if i % 7 == 0 else ""
            writer.append(kind, {"i": i, "pad": "x" * (i * 37 % 900), "decoy": decoy})
        writer.append("other.long", {"pad": "y" * 5000})  # longer than the blocks below
    path: Path = made.path
    return path


@pytest.mark.parametrize("block", [64, 1000, 1 << 20])
@pytest.mark.parametrize("kinds", [None, ["engine.stop"], ["inference."], ["config.change", "engine.start"]])
def test_both_directions_find_exactly_what_a_full_parse_finds(mixed: Path, block: int, kinds: list[str] | None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger.reader, "BLOCK", block)
    with mixed.open("ab") as handle:
        handle.write(b'{"data":{"torn')  # a torn tail is not a record
    expected = [(o, r) for o, r in everything(mixed)
                if kinds is None or any(r["kind"] == k or (k.endswith(".") and r["kind"].startswith(k)) for k in kinds)]
    forward = [(x.offset, x.record.to_json()) for x in records_forward(mixed, kinds)]
    backward = [(x.offset, x.record.to_json()) for x in records_backward(mixed, kinds)]
    assert forward == expected and backward == expected[::-1]
    assert all(record_at(mixed, x.offset).record == x.record for x in records_backward(mixed, kinds))


def test_a_backward_scan_stops_at_the_offset_it_is_given(mixed: Path) -> None:
    everything_ = everything(mixed)
    cut = everything_[200][0]
    got = [x.offset for x in records_backward(mixed, stop_at=cut)]
    assert got == [o for o, _ in everything_[200:]][::-1]
    last = last_record(mixed)
    assert last is not None and last.record.kind == "other.long" and last.end == mixed.stat().st_size


def test_a_bad_record_and_a_wrong_offset_are_refused(mixed: Path) -> None:
    with pytest.raises(LedgerCorruptError, match="no record starts at byte 5"):
        record_at(mixed, 5)
    raw = bytearray(mixed.read_bytes())
    raw[raw.rfind(b'"pad":"y') + 8] = ord("z")
    mixed.write_bytes(bytes(raw))
    with pytest.raises(LedgerCorruptError, match="is bad: record hash does not match"):
        next(records_backward(mixed))


def test_records_linked_reads_what_the_verifier_verified_and_nothing_else(make_ledger: Any) -> None:
    made = make_ledger(20)
    head = verified_head(made.path)
    assert [loc.record for loc in records_linked(made.path, head)] == [loc.record for loc in records_forward(made.path)]
    assert [loc.record.seq for loc in records_linked(made.path, head, ["ledger."])] == [0]
    assert [loc.record.seq for loc in records_linked(made.path, (5, records_at(made.path, 5)))][-1] == 5
    with pytest.raises(LedgerCorruptError, match="changed since it was verified"):
        list(records_linked(made.path, (head[0], "0" * 64)))
    with pytest.raises(LedgerCorruptError, match="ends before record 99"):
        list(records_linked(made.path, (99, "0" * 64)))


def test_records_linked_refuses_a_line_rewritten_with_a_fresh_hash(make_ledger: Any) -> None:
    """A rewrite that keeps each line self-consistent still breaks the link to the next line."""
    made = make_ledger(5)
    head = verified_head(made.path)
    lines = made.path.read_bytes().splitlines(keepends=True)
    old = parse_line(lines[3][:-1])
    forged = seal(old.seq, old.kind, {**old.data, "i": 99}, old.prev, old.ts)[1]
    made.path.write_bytes(b"".join([*lines[:3], forged, *lines[4:]]))
    with pytest.raises(LedgerCorruptError, match="does not link"):
        list(records_linked(made.path, head))


def verified_head(path: Path) -> tuple[int, str]:
    verdict = verify_file(path)
    assert verdict.status == "intact" and verdict.head_seq is not None and verdict.head_hash is not None
    return verdict.head_seq, verdict.head_hash


def records_at(path: Path, seq: int) -> str:
    return next(loc.record.hash for loc in records_forward(path) if loc.record.seq == seq)


def test_record_with_seq_bisects_to_any_record_and_names_one_that_is_not_there(make_ledger: Any) -> None:
    made = make_ledger(300)
    for seq in range(301):
        assert record_with_seq(made.path, seq).record.seq == seq
    for missing in (301, 10_000):
        with pytest.raises(LedgerCorruptError, match=f"no record {missing}"):
            record_with_seq(made.path, missing)

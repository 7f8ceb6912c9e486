"""Summaries computed in the verifier's pass: merged runs give the serial answer, and count only what verified."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from anticloud.audit import (
    SUMMARIES,
    Filter,
    QuestionTally,
    Summary,
    TallyMaker,
    parse_time,
)
from anticloud.audit.anomalies import Anomalies
from ledger import Record, verify_and_tally, verify_file
from ledger.record import parse_line, seal
from ledger.verify import _segments
from tests.test_audit import ALICE, BOB, NOW, day1


def straddling() -> list[Record]:
    """Inferences open across any cut, a breach and an unobserved span open across it, and more
    anomalies than a small listing keeps."""
    script = day1()
    script.add("inference.begin", "2025-03-03T08:00:00.000000Z", id="long", model="gemma", actor=ALICE)
    script.add("airgap.breach", "2025-03-03T08:00:01.000000Z", mode="warn", airgap={"interfaces": [{"name": "eth0"}]})
    script.add("airgap.unobserved", "2025-03-03T08:00:02.000000Z", reason="netlink closed")
    script.add("inference.begin", "2025-03-03T08:00:03.000000Z", id="mid", model="qwen", actor=BOB)
    script.add("airgap.breach", "2025-03-03T08:00:04.000000Z", mode="warn")  # the same breach, still open
    script.add("config.change", "2025-03-03T08:00:05.000000Z", key="api.stall_timeout", old=30, new=60, actor=BOB)
    script.add("inference.end", "2025-03-03T08:00:06.000000Z", id="mid", done_reason="client_disconnected",
               prompt_tokens=4, completion_tokens=2)
    script.add("airgap.restored", "2025-03-03T08:01:01.000000Z", mode="warn")
    script.add("airgap.observed", "2025-03-03T08:02:02.000000Z")
    script.add("request.rejected", "2025-03-03T08:03:00.000000Z", identity="token:alice", actor=ALICE, status=429,
               reason="busy", path="/api/chat")
    script.add("inference.end", "2025-03-03T09:00:00.000000Z", id="long", done_reason="error", error="boom",
               prompt_tokens=9, completion_tokens=0)
    script.add("inference.end", "2025-03-03T09:00:01.000000Z", id="never-begun", done_reason="stop", actor=BOB)
    script.add("model.load", "2025-03-03T09:00:02.000000Z", name="gemma", engine="fake", actor=ALICE)
    return script.records


def makers() -> list[Summary]:
    return [*(make() for make in SUMMARIES.values()), Anomalies(max_rows=3)]


def serial(records: list[Record], query: Filter) -> tuple[list[dict[str, Any]], int, int]:
    tally = TallyMaker(query, tuple(makers()))()
    for record in records:
        tally.feed(record)
    tally.finish()
    return [s.result().to_json() for s in tally.summaries], tally.read, tally.matched


def merged(runs: list[list[Record]], query: Filter) -> tuple[list[dict[str, Any]], int, int]:
    tallies = []
    for run in runs:
        tally = TallyMaker(query, tuple(makers()))()
        for record in run:
            tally.feed(record)
        tallies.append(tally)
    first = tallies[0]
    for later in tallies[1:]:
        first.merge(later)
    first.finish()
    return [s.result().to_json() for s in first.summaries], first.read, first.matched


QUERIES = [Filter(), Filter.build(since=parse_time("2025-03-02", NOW)), Filter.build(persons=["alice"]),
           Filter.build(outcomes=["interrupted", "error"])]


@pytest.mark.parametrize("query", QUERIES, ids=["all", "since", "alice", "unfinished"])
def test_runs_merged_at_any_cuts_answer_as_the_serial_pass(query: Filter) -> None:
    records = straddling()
    expected = serial(records, query)
    assert expected[0][0]["totals"]["requests"] > 0 or query.persons or query.outcomes
    for i, j in itertools.combinations(range(1, len(records)), 2):
        assert merged([records[:i], records[i:j], records[j:]], query) == expected, (i, j)
    for i in range(1, len(records)):
        assert merged([records[:i], records[i:]], query) == expected, i


def test_an_end_is_kept_aside_only_by_a_run_that_does_not_start_at_genesis() -> None:
    records = straddling()
    cut = next(i for i, r in enumerate(records) if r.kind == "inference.end" and r.data["id"] == "long")
    first, later = TallyMaker(Filter(), tuple(makers()))(), TallyMaker(Filter(), tuple(makers()))()
    for record in records[:cut]:
        first.feed(record)
    for record in records[cut:]:
        later.feed(record)
    assert [r.data["id"] for r in later.deferred] == ["long", "never-begun"]
    assert first.deferred == [] and "long" in first.annotator.open
    first.merge(later)
    assert "long" not in first.annotator.open and first.deferred == []  # joined; never-begun is final at once


# -- in the verifier's pass, on real files -------------------------------------------------------------------


class Seqs:
    """A tally that keeps the seq of every record it is fed, to see exactly what was counted."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def feed(self, record: Record) -> None:
        self.seqs.append(record.seq)

    def merge(self, later: Seqs) -> None:
        self.seqs.extend(later.seqs)


def cuts(path: Path, jobs: int) -> list[int]:
    """The seq of each segment's first record, as the verifier cuts ``path``."""
    genesis_end = len(path.read_bytes().split(b"\n", 1)[0]) + 1
    return [seq for _, _, seq in _segments(path, genesis_end, jobs)]


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_a_tally_is_fed_each_verified_record_once_in_order(make_ledger: Any, jobs: int) -> None:
    made = make_ledger(40)
    verdict, tally = verify_and_tally(made.path, Seqs, jobs=jobs)
    assert verdict == verify_file(made.path) and verdict.status == "intact"
    assert tally.seqs == list(range(41))


@pytest.mark.parametrize("jobs", [2, 4])
def test_a_tally_stops_before_the_first_bad_record_in_any_segment(make_ledger: Any, jobs: int) -> None:
    made = make_ledger(40)
    lines = made.path.read_bytes().splitlines(keepends=True)
    starts = cuts(made.path, jobs)
    assert len(starts) == jobs
    for bad in sorted({*starts, *(s + 2 for s in starts)}):
        broken = made.path.with_name(f"broken-{jobs}-{bad}.jsonl")
        broken.write_bytes(b"".join([*lines[:bad], lines[bad].replace(b"record", b"RECORD"), *lines[bad + 1:]]))
        verdict, tally = verify_and_tally(broken, Seqs, jobs=jobs)
        assert verdict.status == "broken" and verdict.fault is not None and verdict.fault.seq == bad
        assert tally.seqs == list(range(bad)) == list(range(verdict.records)), bad


@pytest.mark.parametrize("jobs", [2, 4])
def test_a_segment_whose_first_record_does_not_link_is_not_counted(make_ledger: Any, jobs: int) -> None:
    """Rewritten with a fresh hash, a line is valid on its own: only the link the parent checks refuses
    it (the line after it), and nothing from there on may count."""
    made = make_ledger(40)
    lines = made.path.read_bytes().splitlines(keepends=True)
    for start in cuts(made.path, jobs)[1:]:
        old = parse_line(lines[start - 1][:-1])
        forged = seal(old.seq, old.kind, {**old.data, "i": 999}, old.prev, old.ts)[1]
        relinked = made.path.with_name(f"relinked-{jobs}-{start}.jsonl")
        relinked.write_bytes(b"".join([*lines[:start - 1], forged, *lines[start:]]))
        verdict, tally = verify_and_tally(relinked, Seqs, jobs=jobs)
        assert verdict.fault is not None and (verdict.fault.seq, verdict.fault.reason) == (start, "prev_mismatch")
        assert tally.seqs == list(range(start))


def test_a_torn_tail_is_not_counted(make_ledger: Any) -> None:
    made = make_ledger(30)
    with made.path.open("ab") as handle:
        handle.write(b'{"data":{"i":')
    verdict, tally = verify_and_tally(made.path, Seqs, jobs=3)
    assert verdict.status == "torn" and tally.seqs == list(range(31))


def test_a_tally_maker_makes_fresh_tallies() -> None:
    maker = TallyMaker(Filter(), tuple(makers()))
    one, two = maker(), maker()
    assert isinstance(one, QuestionTally) and one.summaries[0] is not two.summaries[0]
    assert all(s is not p for s, p in zip(one.summaries, maker.summaries, strict=True))

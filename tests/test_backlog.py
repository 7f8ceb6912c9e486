"""The backlog: what a failing ledger could not take, counted and recorded once it can."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anticloud.backlog import Backlog, Outage, is_outage
from ledger import EncodingError, LedgerCorruptError, LedgerPoisonedError, LedgerWriteError

NOSPACE = LedgerWriteError(Path("ledger.jsonl"), "cannot append: No space left on device")


class Ledger:
    """An append that fails while ``full``, and the records it took."""

    def __init__(self) -> None:
        self.full = False
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.full:
            raise LedgerPoisonedError(Path("ledger.jsonl"), "an earlier append failed (No space left on device)")
        self.records.append((kind, data))


def clock() -> Any:
    counter = itertools.count()
    return lambda: f"2026-01-01T00:00:{next(counter):02d}.000000Z"


def test_an_outage_is_recorded_first_with_its_span_error_and_refusals_then_what_was_held() -> None:
    ledger = Ledger()
    backlog = Backlog(ledger, now=clock())
    ledger.full = True
    backlog.failed(NOSPACE, refused=True)  # 00
    backlog.hold("airgap.breach", {"mode": "enforce"})  # seen at 01
    with pytest.raises(LedgerPoisonedError):
        backlog.tell()  # 02: still failing, counted
    backlog.failed(NOSPACE, refused=True)  # 03
    ledger.full = False
    backlog.tell()
    assert ledger.records == [
        ("ledger.outage", {"from": "2026-01-01T00:00:00.000000Z", "until": "2026-01-01T00:00:03.000000Z",
                           "error": str(NOSPACE), "refused": 2, "dropped": 0, "failures": 3}),
        ("airgap.breach", {"mode": "enforce", "seen_at": "2026-01-01T00:00:01.000000Z"})]
    assert not backlog.pending
    backlog.tell()
    assert len(ledger.records) == 2, "told once"


def test_the_last_error_is_named_when_it_differs_from_the_first() -> None:
    ledger = Ledger()
    backlog = Backlog(ledger, now=clock())
    backlog.failed(NOSPACE)
    backlog.failed(LedgerCorruptError(Path("ledger.jsonl"), "the file now at this path is another ledger"))
    backlog.tell()
    data = ledger.records[0][1]
    assert data["error"] == str(NOSPACE) and "another ledger" in data["last_error"] and data["refused"] == 0


def test_past_the_limit_the_oldest_held_changes_are_dropped_and_counted() -> None:
    ledger = Ledger()
    backlog = Backlog(ledger, limit=3, now=clock())
    ledger.full = True
    for n in range(5):
        backlog.hold("airgap.observed", {"n": n})
    ledger.full = False
    backlog.tell()
    assert [k for k, _ in ledger.records] == ["ledger.outage", "airgap.observed", "airgap.observed",
                                             "airgap.observed"]
    assert ledger.records[0][1]["dropped"] == 2 and ledger.records[0][1]["failures"] == 0
    assert [d["n"] for _, d in ledger.records[1:]] == [2, 3, 4]


def test_a_record_that_is_merely_bad_is_no_outage() -> None:
    ledger = Ledger()
    backlog = Backlog(ledger)
    backlog.failed(EncodingError("a lone surrogate"), refused=True)
    assert not is_outage(EncodingError("x")) and is_outage(NOSPACE)
    assert not backlog.pending
    backlog.tell()
    assert ledger.records == []


def test_counts_that_arrive_while_the_outage_is_written_are_kept_for_the_next() -> None:
    ledger = Ledger()
    backlog = Backlog(ledger, now=clock())
    backlog.failed(NOSPACE, refused=True)

    def append(kind: str, data: dict[str, Any]) -> None:
        if kind == "ledger.outage" and len(ledger.records) == 0:
            backlog.failed(NOSPACE, refused=True)  # a request refused while the record was being written
        ledger(kind, data)

    backlog.append = append
    backlog.tell()
    assert ledger.records[0][1]["refused"] == 1
    assert backlog.outage is not None and backlog.outage.refused == 1
    backlog.tell()
    assert [d["refused"] for _, d in ledger.records] == [1, 1]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=40))
def test_no_refusal_is_lost_or_counted_twice(steps: list[tuple[bool, int]]) -> None:
    """Whatever the order of failures, refusals and tells, the outage records add up to the refusals."""
    ledger = Ledger()
    backlog = Backlog(ledger, now=clock())
    refusals = 0
    for full, refused in steps:
        ledger.full = full
        for _ in range(refused):
            backlog.failed(NOSPACE, refused=True)
        refusals += refused
        with contextlib.suppress(LedgerPoisonedError):
            backlog.tell()
    ledger.full = False
    backlog.tell()
    assert sum(d["refused"] for k, d in ledger.records if k == "ledger.outage") == refusals


def test_an_outage_left_over_after_a_tell_starts_where_the_told_one_ended() -> None:
    told = Outage("a", "b", "e1", "e1", refused=1, failures=1)
    now = told.seen("c", "e2", refused=2)
    rest = now.after(told)
    assert rest == Outage("b", "c", "e2", "e2", refused=2, dropped=0, failures=1)
    assert told.after(told) is None

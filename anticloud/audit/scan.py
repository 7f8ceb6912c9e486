"""One streaming pass over a ledger file: the records a question is about, with their facts.

This is the package's only I/O. It reads with `ledger.records_forward`, which checks each
record's own hash and holds one block of the file at a time, and asks it only for the kinds the
summaries read, so that skipping the rest costs a substring search, not a parse.

It reads only what the verifier vouched for (`bounds`): the records up to the verified head, and
never the first bad record of a broken chain or anything after it; records appended after the
verification are left for the next question.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anticloud.audit.facts import Annotator, Facts
from anticloud.audit.filter import Filter
from anticloud.audit.result import Summary
from ledger import Record, Verdict, records_forward


@dataclass(slots=True)
class Coverage:
    """Which records an answer was computed over: seq ``0 .. last_seq`` of the file (or none)."""

    records: int  # in the range read, of every kind: what the verifier counted
    last_seq: int | None
    read: int  # the records parsed (of the kinds the summaries read)
    matched: int  # those that passed the filter
    complete: bool  # False when the verifier found a fault: the answer stops before it

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "last_seq": self.last_seq, "read": self.read, "matched": self.matched,
                "complete": self.complete}


@dataclass(frozen=True, slots=True)
class Bounds:
    end: int | None  # a byte offset: read no line that starts at or after it
    records: int  # read no record whose seq is this or more


def bounds(verdict: Verdict, end: int) -> Bounds:
    """What a question may read of a file whose complete lines ended at ``end`` before ``verdict``."""
    fault = verdict.fault
    if fault is not None and fault.offset is not None:
        end = min(end, fault.offset)
    return Bounds(end, verdict.records)


def wanted_kinds(query: Filter, summaries: Sequence[Summary]) -> list[str] | None:
    """The kinds the pass must read: the summaries', or the filter's for a listing; None for all.
    An ``inference.end`` is attributed through its begin, so reading one reads the begins too."""
    kinds: set[str] = set()
    for summary in summaries:
        if summary.kinds is None:
            kinds = set(query.kinds)
            break
        kinds.update(summary.kinds)
    if not summaries:
        kinds = set(query.kinds)
    if not kinds:
        return None
    if any(k.startswith("inference.") for k in kinds):
        kinds.add("inference.begin")
    return sorted(kinds)


def matching(path: Path, query: Filter, kinds: Iterable[str] | None, limit: Bounds,
             coverage: Coverage) -> Iterator[tuple[Record, Facts]]:
    """The records of ``path`` within ``limit`` that pass ``query``, with their facts, oldest first;
    ``coverage`` is updated as they are read."""
    annotator = Annotator()
    for located in records_forward(path, kinds, stop=limit.end):
        record = located.record
        if record.seq >= limit.records:
            break
        coverage.read += 1
        facts = annotator.facts(record)
        if query.matches(record, facts):
            if facts.begun is not None and record.kind == "inference.begin":
                facts.begun.matched = True
            coverage.matched += 1
            yield record, facts


def summarise(path: Path, query: Filter, summaries: Sequence[Summary], limit: Bounds,
              coverage: Coverage) -> None:
    """Feed every matching record to every summary, in one pass."""
    for record, facts in matching(path, query, wanted_kinds(query, summaries), limit, coverage):
        for summary in summaries:
            summary.feed(record, facts)


def coverage_for(verdict: Verdict, limit: Bounds) -> Coverage:
    records = min(verdict.records, limit.records)
    return Coverage(records, records - 1 if records else None, 0, 0, verdict.fault is None)

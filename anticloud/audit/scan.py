"""One streaming pass over a ledger file: the records a question is about, with their facts.

This is the package's only I/O. A question's summaries are answered in the verifier's own pass
(`answer`, with `ledger.verify_and_tally` and `anticloud.audit.tally`): the file is read once, on
every core, and each summary counts exactly the records the verdict covers.

A listing of the records themselves (`matching`), which must stream them in order, and a
summary of a file already verified (`summarise`), read a second time with `ledger.records_linked`,
after `ledger.verify_file`:
every line's hash is checked and linked to the one before, up to the head the verifier vouched
for, whose hash must be the verdict's, so every byte an answer counts is a byte that verified,
even if the file changed in between. Only the kinds the summaries read have their data decoded.
It holds one block of the file at a time.

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
from anticloud.audit.tally import TallyMaker, wanted_kinds
from ledger import Record, SignedCheckpoint, Verdict, records_linked, verify_and_tally


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
    """The records 0 .. ``records - 1`` verified, the last of them with the hash ``head_hash``."""

    records: int
    head_hash: str | None


def bounds(verdict: Verdict) -> Bounds:
    """What a question may read after ``verdict``: its head, the last record before any fault."""
    return Bounds(verdict.records, verdict.head_hash)


def matching(path: Path, query: Filter, kinds: Iterable[str] | None, limit: Bounds,
             coverage: Coverage) -> Iterator[tuple[Record, Facts]]:
    """The records of ``path`` within ``limit`` that pass ``query``, with their facts, oldest first;
    ``coverage`` is updated as they are read."""
    if not limit.records or limit.head_hash is None:
        return
    annotator = Annotator()
    for located in records_linked(path, (limit.records - 1, limit.head_hash), kinds):
        record = located.record
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


def answer(path: Path, query: Filter, summaries: Sequence[Summary], checkpoint: SignedCheckpoint | None = None,
           public_key: bytes | None = None, jobs: int | None = None) -> tuple[Verdict, list[Summary], Coverage]:
    """Verify ``path`` and answer ``summaries`` (unfed) in the same pass: the verdict, the summaries
    fed every matching record it covers (new objects, in the same order), and what they cover."""
    verdict, tally = verify_and_tally(path, TallyMaker(query, tuple(summaries)), checkpoint=checkpoint,
                                      public_key=public_key, jobs=jobs)
    tally.finish()
    coverage = coverage_for(verdict, bounds(verdict))
    coverage.read, coverage.matched = tally.read, tally.matched
    return verdict, tally.summaries, coverage


def coverage_for(verdict: Verdict, limit: Bounds) -> Coverage:
    records = min(verdict.records, limit.records)
    return Coverage(records, records - 1 if records else None, 0, 0, verdict.fault is None)

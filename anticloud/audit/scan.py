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
verification are left for the next question. A seal fault (`ledger.SealCheck`) names a first bad
record before the chain's head: the pass still links every line up to that head, so that the
bytes it counts are those verified, but counts nothing from the bad record on.
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
    """The records 0 .. ``records - 1`` linked, the last of them with the hash ``head_hash``; of them,
    0 .. ``counted - 1`` are counted (they come before the verdict's first bad record, if any)."""

    records: int
    head_hash: str | None
    counted: int


def bounds(verdict: Verdict) -> Bounds:
    """What a question may read after ``verdict``: its head, and the records before any fault."""
    counted = verdict.records if verdict.fault is None else min(verdict.records, verdict.fault.seq)
    return Bounds(verdict.records, verdict.head_hash, counted)


def matching(path: Path, query: Filter, kinds: Iterable[str] | None, limit: Bounds,
             coverage: Coverage) -> Iterator[tuple[Record, Facts]]:
    """The records of ``path`` within ``limit`` that pass ``query``, with their facts, oldest first;
    ``coverage`` is updated as they are read."""
    if not limit.records or limit.head_hash is None:
        return
    annotator = Annotator()
    for located in records_linked(path, (limit.records - 1, limit.head_hash), kinds):
        record = located.record
        if record.seq >= limit.counted:
            continue  # after the first bad record: linked, to vouch for the bytes before it, never counted
        coverage.read += 1
        facts = annotator.facts(record)
        if mark(query, record, facts):
            coverage.matched += 1
            yield record, facts


def mark(query: Filter, record: Record, facts: Facts) -> bool:
    """Whether ``record`` passes ``query``. A begin that does is marked ``matched``; one that passes all
    but an outcome criterion (a begin has no outcome) is marked ``awaiting``: its end, which has the
    outcome, decides whether the inference is one the question is about."""
    if query.matches(record, facts):
        if facts.begun is not None and record.kind == "inference.begin":
            facts.begun.matched = True
        return True
    if query.outcomes and facts.begun is not None and record.kind == "inference.begin":
        facts.begun.awaiting = query.matches(record, facts, outcome=False)
    return False


def summarise(path: Path, query: Filter, summaries: Sequence[Summary], limit: Bounds,
              coverage: Coverage) -> None:
    """Feed every matching record to every summary, in one pass."""
    for record, facts in matching(path, query, wanted_kinds(query, summaries), limit, coverage):
        for summary in summaries:
            summary.feed(record, facts)


def answer(path: Path, query: Filter, summaries: Sequence[Summary], checkpoint: SignedCheckpoint | None = None,
           public_key: bytes | None = None, jobs: int | None = None) -> tuple[Verdict, list[Summary], Coverage]:
    """Verify ``path`` and answer ``summaries`` (unfed) in the same pass: the verdict, the summaries
    fed every matching record it covers (in the same order), and what they cover. Where the verdict
    stops the answer before records the chain accepted (a seal fault), a second pass answers."""
    verdict, tally = verify_and_tally(path, TallyMaker(query, tuple(summaries)), checkpoint=checkpoint,
                                      public_key=public_key, jobs=jobs)
    limit = bounds(verdict)
    coverage = coverage_for(verdict, limit)
    if limit.counted < verdict.records:
        # A fault found after the chain was replayed (a bad seal): the tally was fed records the
        # answer must not count, so answer from a second pass that stops before the bad record.
        summarise(path, query, summaries, limit, coverage)
        return verdict, list(summaries), coverage
    tally.finish()
    coverage.read, coverage.matched = tally.read, tally.matched
    return verdict, tally.summaries, coverage


def coverage_for(verdict: Verdict, limit: Bounds) -> Coverage:
    records = min(verdict.records, limit.counted)
    return Coverage(records, records - 1 if records else None, 0, 0, verdict.fault is None)

"""A question's summaries over one run of records, so that they can be computed in the verifier's pass.

`ledger.verify_and_tally` cuts a large file into one run per core, verifies each run in a
worker and feeds every record that worker's chain accepted to a `QuestionTally` of its own; the
parent merges the runs' tallies in file order, as far as the chain verified. A question thus
reads the file once, on every core, and counts only records that verified.

A run that starts at genesis is the serial pass itself: each record is annotated (`Annotator`),
filtered and fed to the summaries in order. A run that starts later cannot join an
``inference.end`` (or ``inference.interrupted``) to a begin that lies before it, so it keeps
such an end aside (at most MAX_DEFERRED; past that, it counts it as a serial pass that had
forgotten the begin would); merging it after the run before it joins the end to the begins
still open there, and feeds it then. What crosses a boundary is therefore bounded: the
begins still open (at most `facts.MAX_OPEN`), the ends kept aside, and each summary's own
state (a breach still open), which its ``merge`` carries over.

Only those joined ends reach the summaries out of ledger order, so a summary must give the
same answer whatever order ends arrive in: `Usage` sums them, `Anomalies` keeps its rows by seq,
and the other summaries read no ends. The answer is the serial pass's, unless more than
MAX_OPEN inferences are open at once (then which begins are forgotten may differ), or
MAX_DEFERRED ends at the start of a run name an earlier begin.

Pure: it is fed records and merged, and reads no file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from anticloud.audit.facts import Annotator, Facts
from anticloud.audit.filter import Filter
from anticloud.audit.result import Summary
from ledger import Record

ENDS = frozenset({"inference.end", "inference.interrupted"})
MAX_DEFERRED = 10_000


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


class QuestionTally:
    """The filter and summaries of one question, fed the records of one run in order (a `ledger.Tally`)."""

    def __init__(self, query: Filter, summaries: Sequence[Summary]) -> None:
        self.query = query
        self.summaries = list(summaries)
        kinds = wanted_kinds(query, summaries)
        self.every_kind = kinds is None
        self.exact = frozenset(k for k in kinds or () if not k.endswith("."))
        self.prefixes = tuple(k for k in kinds or () if k.endswith("."))
        self.annotator = Annotator()
        self.origin: int | None = None  # the seq of the run's first record
        self.deferred: list[Record] = []  # ends whose begin may lie before the run, in order
        self.read = 0  # records of the kinds the summaries read
        self.matched = 0  # those that passed the filter

    def feed(self, record: Record) -> None:
        if self.origin is None:
            self.origin = record.seq
        kind = record.kind
        if not (self.every_kind or kind in self.exact or kind.startswith(self.prefixes)):
            return
        self.read += 1
        if self.origin and kind in ENDS and len(self.deferred) < MAX_DEFERRED:
            ident = record.data.get("id")
            if isinstance(ident, str) and ident not in self.annotator.open:
                self.deferred.append(record)
                return
        self._take(record, self.annotator.facts(record))

    def merge(self, later: QuestionTally) -> None:
        """Take in the tally of the run that directly follows this one."""
        if later.origin is None:
            return
        if self.origin is None:
            self.origin = later.origin
        for mine, theirs in zip(self.summaries, later.summaries, strict=True):
            mine.merge(theirs)  # the same summary: the same TallyMaker made both
        for end in later.deferred:  # join them to the begins open before the later run's own
            ident = end.data.get("id")
            if self.origin == 0 or ident in self.annotator.open:
                self._take(end, self.annotator.facts(end))
            else:
                self.deferred.append(end)
        opened = self.annotator.open
        for ident, begun in later.annotator.open.items():
            opened.pop(ident, None)
            opened[ident] = begun
        while len(opened) > self.annotator.max_open:
            del opened[next(iter(opened))]
            self.annotator.forgotten += 1
        self.annotator.forgotten += later.annotator.forgotten
        self.read += later.read
        self.matched += later.matched

    def finish(self) -> None:
        """After the last merge: the ends still kept aside have no begin anywhere before them."""
        deferred, self.deferred = self.deferred, []
        for end in deferred:
            self._take(end, self.annotator.facts(end))

    def _take(self, record: Record, facts: Facts) -> None:
        if not self.query.matches(record, facts):
            return
        if facts.begun is not None and record.kind == "inference.begin":
            facts.begun.matched = True
        self.matched += 1
        for summary in self.summaries:
            summary.feed(record, facts)


@dataclass(frozen=True)
class TallyMaker:
    """Makes a fresh tally of ``summaries`` (unfed prototypes, copied each time) in each worker:
    it must pickle, which a closure does not."""

    query: Filter
    summaries: tuple[Summary, ...]

    def __call__(self) -> QuestionTally:
        return QuestionTally(self.query, copy.deepcopy(self.summaries))

"""Refusals by reason: what was refused, how often, to whom, and when first and last.

A refusal is any record whose outcome is ``refused`` (`anticloud.audit.facts`): a rejected API
request (``request.rejected``, whose ``count`` folds repeats within an interval), a model whose
load-time verification failed, a bundle refused at import, an engine that refused to start.
Rows are grouped by (kind, HTTP status where there is one, reason) and sorted by count.

Memory: one row per distinct reason, at most MAX_GROUPS; past that, further reasons are
folded into one row per kind and status with reason ``*``, as the server folds a flood of
distinct rejections. Each row names at most MAX_PERSONS people, and says whether there were more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anticloud.audit.facts import REFUSAL_KINDS, REFUSED, Facts
from anticloud.audit.result import rows_json, rows_table
from ledger import Record

MAX_GROUPS = 10_000
MAX_PERSONS = 20
OTHERS = "*"


@dataclass(frozen=True, slots=True)
class RefusalRow:
    kind: str
    status: int | None
    reason: str
    count: int
    persons: tuple[str, ...]  # at most MAX_PERSONS, sorted
    more_persons: bool  # whether others than those named were refused too
    first_ts: str
    last_ts: str


@dataclass(frozen=True, slots=True)
class RefusalsReport:
    rows: tuple[RefusalRow, ...]
    total: int
    by_kind: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"summary": "refusals", "rows": rows_json(self.rows), "total": self.total, "by_kind": dict(self.by_kind)}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(RefusalRow, self.rows)


@dataclass(slots=True)
class _Group:
    count: int
    persons: dict[str, None]  # in the order first refused, so that a merge names the ones a serial pass would
    more: bool
    first_ts: str
    last_ts: str


class Refusals:
    kinds = tuple(sorted(REFUSAL_KINDS))

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self.groups: dict[tuple[str, int | None, str], _Group] = {}
        self.max_groups = max_groups

    def feed(self, record: Record, facts: Facts) -> None:
        if facts.outcome != REFUSED:
            return
        data = record.data
        status = data.get("status")
        status = status if type(status) is int else None
        reason = data.get("reason")
        key = (record.kind, status, reason if isinstance(reason, str) else "-")
        group = self.groups.get(key)
        if group is None and len(self.groups) >= self.max_groups:
            key = (record.kind, status, OTHERS)
            group = self.groups.get(key)
        count = data.get("count", 1)
        count = count if type(count) is int and count > 0 else 1
        if group is None:
            group = self.groups[key] = _Group(0, {}, False, record.ts, record.ts)
        group.count += count
        group.last_ts = max(group.last_ts, record.ts)
        group.first_ts = min(group.first_ts, record.ts)
        _name(group, facts.person or "-")

    def merge(self, later: Refusals) -> None:
        for key, theirs in later.groups.items():
            group = self.groups.get(key)
            if group is None and len(self.groups) >= self.max_groups:
                key = (key[0], key[1], OTHERS)
                group = self.groups.get(key)
            if group is None:
                self.groups[key] = theirs
                continue
            group.count += theirs.count
            group.first_ts, group.last_ts = min(group.first_ts, theirs.first_ts), max(group.last_ts, theirs.last_ts)
            for person in theirs.persons:
                _name(group, person)
            group.more = group.more or theirs.more

    def result(self) -> RefusalsReport:
        rows = tuple(RefusalRow(kind, status, reason, g.count, tuple(sorted(g.persons)), g.more, g.first_ts, g.last_ts)
                     for (kind, status, reason), g in self.groups.items())
        rows = tuple(sorted(rows, key=lambda r: (-r.count, r.kind, r.status or 0, r.reason)))
        by_kind: dict[str, int] = {}
        for row in rows:
            by_kind[row.kind] = by_kind.get(row.kind, 0) + row.count
        return RefusalsReport(rows, sum(by_kind.values()), dict(sorted(by_kind.items())))


def _name(group: _Group, person: str) -> None:
    if person not in group.persons:
        if len(group.persons) < MAX_PERSONS:
            group.persons[person] = None
        else:
            group.more = True

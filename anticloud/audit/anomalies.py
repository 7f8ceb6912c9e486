"""What an auditor should look at first: the records that say something went wrong or was unusual.

* an inference that did not finish: ``inference.interrupted``, or an ``inference.end`` whose
  outcome is ``interrupted`` or ``error`` (`anticloud.audit.facts`);
* a torn tail the writer cut and quarantined (``ledger.recovered``), a span in which the ledger
  could not be written (``ledger.outage``), a jump of the wall clock (``clock.jump``);
* the configuration changed outside anticloud (``config.drift``);
* the air gap breached (``airgap.breach``) or not observed (``airgap.unobserved``), and an
  engine that refused to start (``engine.refused``).

Each anomaly is counted under one name: an unfinished inference (an ``inference.interrupted``,
or an end that was interrupted) as ``inference.interrupted``, an end in error as
``inference.error``, any other as its kind. Each count thus equals the number of records that
``anticloud audit records --outcome interrupted`` (``--outcome error``, ``--kind KIND``) lists
under the same filter. The listing keeps at most MAX_ROWS rows, the first ones; the counts are always complete.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from anticloud.audit.facts import ERROR, INTERRUPTED, Facts
from anticloud.audit.result import rows_json, rows_table
from ledger import Record

MAX_ROWS = 500
FLAGGED_KINDS = ("ledger.recovered", "ledger.outage", "clock.jump", "config.drift", "airgap.breach",
                 "airgap.unobserved", "engine.refused")
INTERRUPTED_NAME, ERROR_NAME = "inference.interrupted", "inference.error"
NAMES = (INTERRUPTED_NAME, ERROR_NAME, *FLAGGED_KINDS)
_DETAIL_KEYS = ("reason", "done_reason", "error", "detail", "quarantine", "delta_ms", "accepted", "found", "mode")


@dataclass(frozen=True, slots=True)
class Anomaly:
    ts: str
    seq: int
    anomaly: str  # one of NAMES
    kind: str
    person: str | None
    model: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class AnomalyReport:
    rows: tuple[Anomaly, ...]  # the first MAX_ROWS, oldest first
    counts: dict[str, int]  # every name in NAMES, 0 where none
    total: int
    listed_all: bool

    def to_json(self) -> dict[str, Any]:
        return {"summary": "anomalies", "rows": rows_json(self.rows), "counts": dict(self.counts),
                "total": self.total, "listed_all": self.listed_all}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(Anomaly, self.rows)


def anomaly_of(kind: str, facts: Facts) -> str | None:
    """The anomaly a record is, by its kind and outcome; None for an ordinary record."""
    if kind == "inference.end":
        return INTERRUPTED_NAME if facts.outcome == INTERRUPTED else ERROR_NAME if facts.outcome == ERROR else None
    if kind == INTERRUPTED_NAME or kind in FLAGGED_KINDS:
        return kind
    return None


class Anomalies:
    kinds = ("inference.end", INTERRUPTED_NAME, *FLAGGED_KINDS)

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.rows: list[Anomaly] = []
        self.counts = dict.fromkeys(NAMES, 0)
        self.max_rows = max_rows

    def feed(self, record: Record, facts: Facts) -> None:
        name = anomaly_of(record.kind, facts)
        if name is None:
            return
        self.counts[name] += 1
        if len(self.rows) < self.max_rows or record.seq < self.rows[-1].seq:
            # by seq: an end joined across a merge arrives after records that follow it
            bisect.insort(self.rows, Anomaly(record.ts, record.seq, name, record.kind, facts.person, facts.model,
                                             _detail(record.data)), key=_seq)
            del self.rows[self.max_rows:]

    def merge(self, later: Anomalies) -> None:
        for name, count in later.counts.items():
            self.counts[name] += count
        self.rows = [*self.rows, *later.rows][:self.max_rows]  # later's records all follow ours

    def result(self) -> AnomalyReport:
        total = sum(self.counts.values())
        return AnomalyReport(tuple(self.rows), dict(self.counts), total, total == len(self.rows))


def _seq(row: Anomaly) -> int:
    return row.seq


def _detail(data: dict[str, Any]) -> str:
    parts = [f"{key} {data[key]}" for key in _DETAIL_KEYS if data.get(key) not in (None, "")]
    return "; ".join(parts)[:300]

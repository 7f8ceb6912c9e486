"""Requests per person per day, and per model per day: how much, how it ended, and the tokens.

An inference is counted on the UTC day, under the person and model, of its ``inference.begin``;
its end adds its outcome and tokens to that same row (tokens in: ``prompt_tokens``; out:
``completion_tokens``, where the end records them), provided its begin passed the filter, so
that a row's outcomes never exceed its requests. Under an outcome criterion, which no begin has,
a begin that passes the rest is counted with its end, if the end has the outcome asked for. An
end whose begin did not pass (it lies before ``--since``, say) is counted in
``unattributed_ends``, not in a row.

Refusals are counted on their own day: per person, every refusing record of that person
(a ``request.rejected`` counts ``count`` requests when it folds repeats); per model, the
refusals that name the model (``model.load.refused``).

Memory: one row per (day, person) or (day, model) that occurs, whatever the number of records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anticloud.audit.facts import COMPLETED, ERROR, INTERRUPTED, REFUSED, Facts
from anticloud.audit.result import rows_json, rows_table
from ledger import Record

_OUTCOME_AT = {COMPLETED: 1, INTERRUPTED: 2, ERROR: 3}
NOBODY = "-"


@dataclass(frozen=True, slots=True)
class PersonDay:
    day: str
    person: str
    requests: int
    completed: int
    interrupted: int
    errors: int
    refused: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True, slots=True)
class ModelDay:
    day: str
    model: str
    requests: int
    completed: int
    interrupted: int
    errors: int
    refused: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    """``by`` is "person" or "model"; ``rows`` sorted by day, then name; ``totals`` sums every row."""

    by: str
    rows: tuple[PersonDay, ...] | tuple[ModelDay, ...]
    totals: dict[str, int]
    unattributed_ends: int

    def to_json(self) -> dict[str, Any]:
        return {"summary": "people" if self.by == "person" else "models", "by": self.by,
                "rows": rows_json(self.rows), "totals": dict(self.totals),
                "unattributed_ends": self.unattributed_ends}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(PersonDay if self.by == "person" else ModelDay, self.rows)


class Usage:
    """Counts inferences and refusals per (day, person) or (day, model)."""

    kinds = ("inference.", "request.rejected", "model.load.refused", "model.import.rejected", "engine.refused")

    def __init__(self, by: str) -> None:
        if by not in ("person", "model"):
            raise ValueError(f"usage is by person or by model, not {by!r}")
        self.by = by
        # (day, name) -> [requests, completed, interrupted, errors, refused, tokens in, tokens out]
        self.counts: dict[tuple[str, str], list[int]] = {}
        self.unattributed = 0

    def _row(self, day: str, name: str | None) -> list[int]:
        key = (day, name or NOBODY)
        row = self.counts.get(key)
        if row is None:
            row = self.counts[key] = [0, 0, 0, 0, 0, 0, 0]
        return row

    def feed(self, record: Record, facts: Facts) -> None:
        kind = record.kind
        if kind == "inference.begin":
            self._row(record.ts[:10], facts.person if self.by == "person" else facts.model)[0] += 1
        elif kind in ("inference.end", "inference.interrupted"):
            begun = facts.begun
            if begun is None or not (begun.matched or begun.awaiting):
                self.unattributed += 1
                return
            row = self._row(begun.day, begun.person if self.by == "person" else begun.model)
            if begun.awaiting:
                row[0] += 1  # its begin was left for its end to decide: this end has the outcome asked for
            row[_OUTCOME_AT[facts.outcome or ERROR]] += 1
            data = record.data
            tokens_in, tokens_out = data.get("prompt_tokens"), data.get("completion_tokens")
            if type(tokens_in) is int:
                row[5] += tokens_in
            if type(tokens_out) is int:
                row[6] += tokens_out
        elif facts.outcome == REFUSED:
            name = facts.person if self.by == "person" else facts.model
            if self.by == "model" and name is None:
                return  # a refusal that names no model is no model's
            count = record.data.get("count", 1)
            self._row(record.ts[:10], name)[4] += count if type(count) is int and count > 0 else 1

    def merge(self, later: Usage) -> None:
        for key, values in later.counts.items():
            row = self.counts.get(key)
            if row is None:
                self.counts[key] = values
            else:
                for at, value in enumerate(values):
                    row[at] += value
        self.unattributed += later.unattributed

    def result(self) -> UsageReport:
        row_type = PersonDay if self.by == "person" else ModelDay
        rows = tuple(row_type(day, name, *values) for (day, name), values in sorted(self.counts.items()))
        sums = [sum(values[i] for values in self.counts.values()) for i in range(7)]
        names = ("requests", "completed", "interrupted", "errors", "refused", "tokens_in", "tokens_out")
        return UsageReport(self.by, rows, dict(zip(names, sums, strict=True)), self.unattributed)  # type: ignore[arg-type]

"""The shape every audit answer shares, so that a table, CSV, JSON and a report show the same numbers.

A summary (`Summary`) is fed the records that passed the filter, in ledger order, with their
`Facts`, and keeps only what its answer needs: counters keyed by what the answer lists, never
the records themselves. Summaries of consecutive runs of the ledger merge (`merge`), so that
each core can summarise its own run in the verifier's pass (`anticloud.audit.tally`).
Its `Result` is a plain frozen dataclass: ``to_json()`` is the answer as ``--json`` prints it
and a report renders it, and ``table()`` the same rows for people and CSV.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, Protocol, Self

from anticloud.audit.facts import Facts
from ledger import Record


class Result(Protocol):
    """An answer: its rows for a table or CSV, and itself as JSON."""

    def to_json(self) -> dict[str, Any]: ...

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]: ...


class Summary(Protocol):
    """An accumulator of one answer over one streaming pass."""

    @property
    def kinds(self) -> tuple[str, ...] | None:
        """The kinds it reads (exact, or prefixes ending in "."); None for every kind. The scan reads
        only these lines, which for most summaries skips almost the whole ledger unparsed."""

    def feed(self, record: Record, facts: Facts) -> None: ...

    def merge(self, later: Self) -> None:
        """Take in ``later``, the same summary of the records that directly follow this one's. It may
        then be fed ends that close an inference begun before ``later``'s run, out of ledger order."""

    def result(self) -> Result: ...


def rows_table(row_type: type[Any], rows: Sequence[Any]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """Columns named after ``row_type``'s fields, and each row's values in that order."""
    names = tuple(f.name for f in dataclasses.fields(row_type))
    return names, [tuple(getattr(row, name) for name in names) for row in rows]


def rows_json(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Each row as an object (shallow: a row holds plain values, and asdict's deep copy is slow)."""
    if not rows:
        return []
    names = [f.name for f in dataclasses.fields(rows[0])]
    return [{name: _plain(getattr(row, name)) for name in names} for row in rows]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def cell(value: Any) -> str:
    """One value as a table or CSV cell: JSON for what is not a plain string or number, '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(value)

"""Which records an audit question is about: criteria that compose.

Every criterion given must hold (AND); the values given for one criterion are alternatives
(OR): ``--person alice --person bob --outcome refused`` is the refusals of alice or bob.

* time: ``since <= ts < until``, compared as the ledger's own timestamps (UTC, microseconds);
* person: the record's person (`anticloud.audit.facts`), or ``uid:N`` for any record of that uid,
  whatever name it carries;
* model: the model the record is about (an end's is its begin's);
* kind: exactly, or every kind under a prefix written ``model.*`` (or ``model.``);
* outcome: ``completed``, ``refused``, ``interrupted`` or ``error``: records without one never match;
* text: a case-insensitive substring of the record's kind or of its data as JSON.

`parse_time` reads the times people write: RFC 3339 (``2025-03-01T12:00:00Z``; without an
offset, UTC), a date (its midnight, UTC; as ``until``, the midnight after it, so that the day
is included), or a duration back from now as Ollama and the token lifetimes write them
(``7d``, ``24h``, ``90m``, ``1h30m``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from anticloud import durations
from anticloud.audit.facts import OUTCOMES, Facts
from anticloud.errors import AuditQueryError
from ledger import Record

_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_UID = re.compile(r"uid:([0-9]+)\Z")


def parse_time(text: str, now: datetime, until: bool = False) -> datetime:
    """An instant from what a person wrote (see the module docstring); AuditQueryError if none."""
    try:
        return _parse_time(text.strip(), now, until)
    except OverflowError:  # a date at the calendar's end, or a duration reaching before year 1
        raise AuditQueryError(f"{text.strip()!r} is out of range: times run from year 1 to 9999") from None


def _parse_time(text: str, now: datetime, until: bool) -> datetime:
    if _DATE.match(text):
        try:
            day = datetime.fromisoformat(text).replace(tzinfo=UTC)
        except ValueError:
            raise AuditQueryError(f"{text!r} is not a real date") from None
        return day + timedelta(days=1) if until else day
    if text[:1].isdigit() and ("T" in text or " " in text):
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise AuditQueryError(f"{text!r} is not an RFC 3339 time such as 2025-03-01T12:00:00Z") from None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    try:
        back = durations.seconds(text)
    except ValueError:
        raise AuditQueryError(f"{text!r} is neither a date, an RFC 3339 time, nor a duration such as 7d or 24h"
                              ) from None
    if back < 0:
        raise AuditQueryError(f"{text!r}: a duration counts back from now, so it cannot be negative")
    return now - timedelta(seconds=back)


def ledger_ts(moment: datetime) -> str:
    """``moment`` written as the ledger writes timestamps, so that strings compare as instants."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Filter:
    """The criteria of one question; an empty Filter keeps every record."""

    since: str | None = None  # ledger timestamps (`ledger_ts`)
    until: str | None = None
    persons: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()  # exact kinds, and prefixes ending in "."
    outcomes: frozenset[str] = frozenset()
    text: str | None = None
    _uids: frozenset[int] = field(init=False, repr=False, compare=False)
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        uids = frozenset(int(m.group(1)) for p in self.persons if (m := _UID.match(p)))
        object.__setattr__(self, "_uids", uids)
        object.__setattr__(self, "_exact", frozenset(k for k in self.kinds if not k.endswith(".")))
        object.__setattr__(self, "_prefixes", tuple(sorted(k for k in self.kinds if k.endswith("."))))

    @classmethod
    def build(cls, since: datetime | None = None, until: datetime | None = None, persons: Iterable[str] = (),
              models: Iterable[str] = (), kinds: Iterable[str] = (), outcomes: Iterable[str] = (),
              text: str | None = None) -> Filter:
        """A Filter from what a caller was given, checked: AuditQueryError names what is wrong."""
        if since is not None and until is not None and until <= since:
            raise AuditQueryError(f"the range is empty: until ({ledger_ts(until)}) is not after since "
                                  f"({ledger_ts(since)})")
        for outcome in outcomes:
            if outcome not in OUTCOMES:
                raise AuditQueryError(f"{outcome!r} is not an outcome: one of {', '.join(OUTCOMES)}")
        for person in persons:
            if not person.strip():
                raise AuditQueryError("a person is a token name, a user name, or uid:N; not empty")
        return cls(ledger_ts(since) if since else None, ledger_ts(until) if until else None,
                   frozenset(persons), frozenset(models), frozenset(kind_pattern(k) for k in kinds),
                   frozenset(outcomes), text.lower() if text else None)

    def matches(self, record: Record, facts: Facts, outcome: bool = True) -> bool:
        """Whether ``record`` passes every criterion (with ``outcome`` False: every one but the outcome)."""
        if self.since is not None and record.ts < self.since:
            return False
        if self.until is not None and record.ts >= self.until:
            return False
        if self.kinds and not (record.kind in self._exact or record.kind.startswith(self._prefixes)):
            return False
        if self.persons and not (facts.person in self.persons or facts.uid in self._uids):
            return False
        if self.models and facts.model not in self.models:
            return False
        if outcome and self.outcomes and facts.outcome not in self.outcomes:
            return False
        return self.text is None or self.text in record.kind or self.text in _searchable(record.data)

    def to_json(self) -> dict[str, Any]:
        """The criteria, as an answer states what it answers."""
        return {"since": self.since, "until": self.until, "persons": sorted(self.persons),
                "models": sorted(self.models), "kinds": sorted(k + "*" if k.endswith(".") else k for k in self.kinds),
                "outcomes": sorted(self.outcomes), "text": self.text}


def kind_pattern(text: str) -> str:
    """``model.load`` as itself, ``model.*`` or ``model.`` as the prefix ``model.``."""
    prefix = text.endswith(("*", "."))
    name = text.rstrip("*").rstrip(".") if prefix else text
    if not _KIND.match(name):
        raise AuditQueryError(f"{text!r} is not a record kind (such as inference.end) or a prefix (such as model.*)")
    return name + "." if prefix else name


def _searchable(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).lower()

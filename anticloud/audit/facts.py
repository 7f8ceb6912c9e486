"""What an auditor asks of one record: who acted, on which model, and how it ended.

Pure rules over `ledger.Record`s, read in ledger order:

* The **person** of a record follows the identity contract: the token's person name if
  ``actor.token`` exists, else ``actor.user``, else ``"uid:<uid>"``, else ``"anonymous"``.
  A record older than that contract has no ``actor``; the ``client`` of ``inference.begin``
  (or the ``identity`` of ``request.rejected``), ``"token:NAME"``, ``"uid:N"`` or
  ``"anonymous"``, stands in for it. A record with neither names no person (None).
* The **outcome** of a record that concludes something: ``inference.end`` is ``completed``
  (done reason ``stop`` or ``length``), ``error`` (``error``) or ``interrupted`` (anything else:
  a client that went away or stalled, a stopping engine, Ctrl-C); ``inference.interrupted`` is
  ``interrupted``; ``request.rejected``, ``model.load.refused``, ``model.import.rejected`` and
  ``engine.refused`` are ``refused``. Other records have no outcome (None).
* ``inference.end`` and ``inference.interrupted`` name only the id of their ``inference.begin``:
  `Annotator` joins them to it, so that they carry its person, model and day. It holds only the
  inferences still open, and at most MAX_OPEN of them (the oldest is forgotten first), so its
  memory does not grow with the ledger even where a crash left begins that nothing closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anticloud import actor
from ledger import Record

COMPLETED, REFUSED, INTERRUPTED, ERROR = "completed", "refused", "interrupted", "error"
OUTCOMES = (COMPLETED, REFUSED, INTERRUPTED, ERROR)
REFUSAL_KINDS = frozenset({"request.rejected", "model.load.refused", "model.import.rejected", "engine.refused"})
FINISHED = frozenset({"stop", "length"})
MODEL_NAMED = frozenset({"model.import", "model.load", "model.unload", "model.remove"})  # data.name is a model
MAX_OPEN = 100_000


@dataclass(slots=True)
class Opened:
    """An ``inference.begin`` not yet ended: who asked, of which model, on which (UTC) day."""

    seq: int
    person: str | None
    uid: int | None
    model: str | None
    day: str
    matched: bool = False  # whether the begin passed the caller's filter (set by the scan, `mark`)
    awaiting: bool = False  # it passed all but an outcome criterion: its end decides (`mark`)


@dataclass(slots=True)
class Facts:
    """One record's answers; ``begun`` is the begin an end or interruption closes, if it was seen."""

    person: str | None
    uid: int | None
    model: str | None
    outcome: str | None
    begun: Opened | None = None


def person_of(data: dict[str, Any]) -> tuple[str | None, int | None]:
    """(person, uid) of a record's ``data``: the person by `anticloud.actor.person`, the rule stated
    once, and the uid the actor (or an older record's ``uid:N`` client) names; (None, None) if nobody."""
    name = actor.person(data)
    acting = data.get("actor")
    if isinstance(acting, dict):
        uid = acting.get("uid")
        return name, uid if type(uid) is int else None
    if name is not None and name.startswith("uid:") and name[4:].isdigit():
        return name, int(name[4:])
    return name, None


def outcome_of(kind: str, data: dict[str, Any]) -> str | None:
    """The outcome of a record that concludes an inference or refuses something, else None."""
    if kind == "inference.end":
        reason = data.get("done_reason")
        if reason == "error" or "error" in data:
            return ERROR
        return COMPLETED if isinstance(reason, str) and reason in FINISHED else INTERRUPTED
    if kind == "inference.interrupted":
        return INTERRUPTED
    return REFUSED if kind in REFUSAL_KINDS else None


def as_list(value: Any) -> list[Any]:
    """The items of a field the docs say is a list; none if a record holds anything else there. Pure."""
    return value if isinstance(value, list) else []


def model_of(kind: str, data: dict[str, Any]) -> str | None:
    """The model a record is about, where its own data names one."""
    name = data.get("name") if kind in MODEL_NAMED else data.get("model")
    return name if isinstance(name, str) else None


class Annotator:
    """Turns records, in ledger order, into their `Facts`, joining ends to their begins."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        self.open: dict[str, Opened] = {}
        self.max_open = max_open
        self.forgotten = 0  # begins dropped to keep the bound: their ends then name no person

    def facts(self, record: Record) -> Facts:
        kind, data = record.kind, record.data
        if kind == "inference.begin":
            person, uid = person_of(data)
            model = model_of(kind, data)
            opened = Opened(record.seq, person, uid, model, record.ts[:10])
            ident = data.get("id")
            if isinstance(ident, str):
                if len(self.open) >= self.max_open:
                    del self.open[next(iter(self.open))]
                    self.forgotten += 1
                self.open[ident] = opened
            return Facts(person, uid, model, None, opened)
        if kind in ("inference.end", "inference.interrupted"):
            ident = data.get("id")
            begun = self.open.pop(ident, None) if isinstance(ident, str) else None
            person, uid = person_of(data)
            if begun is not None:
                person, uid = begun.person, begun.uid
            return Facts(person, uid, begun.model if begun else model_of(kind, data), outcome_of(kind, data), begun)
        person, uid = person_of(data)
        return Facts(person, uid, model_of(kind, data), outcome_of(kind, data))

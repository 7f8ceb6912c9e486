"""One ledger record read as a security event: who, what, on which model, with what outcome.

Every export format is a rendering of an `Event`, so who a record's person is and how grave
it is are decided here once:

* **person**: `anticloud.actor.person`, the identity rule stated once; a record that names
  nobody gets ``""``.
* **outcome and severity**: `outcome_of` classifies a record, and `SEVERITY` maps each outcome
  to one level, which every format spells in its own scale (`Level`). Breaches and refusals
  are high, errors medium, interrupted work low, everything else informational.

`Correlator` carries what an ``inference.end`` or ``inference.interrupted`` does not repeat
(the model and the person of its ``inference.begin``), in bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from anticloud import actor
from ledger import Record, encode_checked


@dataclass(frozen=True, slots=True)
class Level:
    """One severity, as each format writes it."""

    name: str
    ocsf_id: int  # OCSF severity_id: 1 Informational, 2 Low, 3 Medium, 4 High
    cef: int  # CEF 0-10: 0-3 low, 4-6 medium, 7-8 high, 9-10 very high
    syslog: int  # RFC 5424 severity: 6 Informational, 5 Notice, 4 Warning, 3 Error


INFORMATIONAL = Level("informational", 1, 1, 6)
LOW = Level("low", 2, 3, 5)
MEDIUM = Level("medium", 3, 5, 4)
HIGH = Level("high", 4, 8, 3)

# The one table: every outcome a record can have, and how grave it is.
SEVERITY: dict[str, Level] = {
    "success": INFORMATIONAL,
    "interrupted": LOW,
    "error": MEDIUM,
    "refused": HIGH,
    "breach": HIGH,
}

REFUSALS = frozenset({"engine.refused", "model.load.refused", "model.import.rejected"})
# config.drift: the configuration was edited around the appliance (the engine refuses to start
# until it is accepted); airgap.breach: a network appeared while serving.
BREACHES = frozenset({"airgap.breach", "config.drift"})
# airgap.unobserved: the network could not be checked (inferences are refused meanwhile);
# ledger.recovered: a crash tore the ledger's last line.
ERRORS = frozenset({"airgap.unobserved", "ledger.recovered"})
COMPLETED = frozenset({"stop", "length"})  # an inference.end done_reason that is a normal end


def outcome_of(kind: str, data: dict[str, Any]) -> str:
    """The outcome of one record (a key of `SEVERITY`)."""
    if kind in BREACHES:
        return "breach"
    if kind in REFUSALS:
        return "refused"
    if kind in ERRORS:
        return "error"
    if kind == "request.rejected":
        status = data.get("status")
        return "error" if isinstance(status, int) and status >= 500 and status != 503 else "refused"
    if kind == "inference.end":
        reason = data.get("done_reason")
        if not isinstance(reason, str):  # a copy of a ledger may hold anything here
            return "interrupted"
        return "success" if reason in COMPLETED else "error" if reason == "error" else "interrupted"
    if kind == "inference.interrupted":
        return "interrupted"
    return "success"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Event:
    """A record with what every format needs already worked out."""

    record: Record
    person: str
    uid: int | None  # the acting unix uid, where the record names one
    model: str
    outcome: str
    inference: str  # the inference id linking begin, end and interrupted; "" for other records
    reason: str  # why something was refused, failed or ended (a record's reason/error/done_reason)

    @property
    def level(self) -> Level:
        return SEVERITY[self.outcome]

    @property
    def time_ms(self) -> int:
        """The record's ``ts`` in milliseconds since the epoch (its microseconds truncated)."""
        moment = datetime.fromisoformat(self.record.ts)  # the ledger's ts form, always UTC with "Z"
        return int(moment.timestamp()) * 1000 + moment.microsecond // 1000

    @property
    def line(self) -> str:
        """The ledger line itself (without its newline): the record exactly as it was chained."""
        return encode_checked(self.record.to_json()).decode()  # parsed from a line: already in the profile

    def summary(self) -> str:
        """One line saying what happened, for a SIEM's message column."""
        who = f" by {self.person}" if self.person else ""
        model = f" on {self.model}" if self.model else ""
        why = f": {self.reason}" if self.reason and self.outcome != "success" else ""
        return f"{self.record.kind}{who}{model} ({self.outcome}){why}"


class Correlator:
    """Turns records into events, remembering each open inference's model and person so that
    its end says them too. At most ``limit`` inferences are remembered (the oldest is forgotten
    first), so a ledger full of ends filtered out of an export cannot grow it without bound."""

    def __init__(self, limit: int = 100_000) -> None:
        self._open: OrderedDict[str, tuple[str, str, int | None]] = OrderedDict()
        self._limit = limit

    def event(self, record: Record) -> Event:
        data = record.data
        person = actor.person(data) or ""
        # model.* records name their model "name"; elsewhere "name" is a token's or a key's
        model = _text(data.get("model")) or (_text(data.get("name")) if record.kind.startswith("model.") else "")
        acting = data.get("actor")
        uid = acting.get("uid") if isinstance(acting, dict) else None
        uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else None
        ident = _text(data.get("id"))
        if record.kind == "inference.begin" and ident:
            self._open[ident] = (model, person, uid)
            if len(self._open) > self._limit:
                self._open.popitem(last=False)
        elif record.kind in ("inference.end", "inference.interrupted") and ident in self._open:
            begun_model, begun_person, begun_uid = self._open.pop(ident)
            model = model or begun_model
            person, uid = person or begun_person, uid if uid is not None else begun_uid
        reason = _text(data.get("reason")) or _text(data.get("error"))
        if record.kind == "inference.end" and not reason:
            reason = _text(data.get("done_reason"))
        return Event(record, person, uid, model, outcome_of(record.kind, data), ident, reason)

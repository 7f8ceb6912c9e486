"""The air gap's history: every breach, restoration, unobserved span and refused start, in order.

Events come from ``airgap.breach`` / ``airgap.restored`` and ``airgap.unobserved`` /
``airgap.observed`` (the serving engine's watch, `anticloud.watch`), from ``engine.refused``
with a network reachable (a start the guard refused), and from ``engine.start`` (the air gap the
engine started under, so that a start in ``warn`` mode with a network is on the timeline too).

A restoration says how long the breach before it lasted (``lasted_s``), as does an ``observed``
for the span it ends; a breach still open at the end of the answer is ``open_breach``.
The timeline holds one row per event: the air gap changes rarely, whatever the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from anticloud.audit.facts import Facts, as_list
from anticloud.audit.result import rows_json, rows_table
from ledger import Record

EVENTS = {"airgap.breach": "breach", "airgap.restored": "restored", "airgap.unobserved": "unobserved",
          "airgap.observed": "observed", "engine.start": "engine_start"}


@dataclass(frozen=True, slots=True)
class AirGapEvent:
    ts: str
    seq: int
    event: str  # breach, restored, unobserved, observed, refused_start, engine_start
    mode: str | None  # airgap.mode in force: enforce or warn
    person: str | None
    detail: str
    lasted_s: float | None  # for restored and observed: how long the span it ends lasted


@dataclass(frozen=True, slots=True)
class AirGapReport:
    events: tuple[AirGapEvent, ...]
    breaches: int
    restorations: int
    unobserved: int
    refused_starts: int
    breached_s: float  # the sum of the breaches' spans that ended within the answer
    open_breach: bool

    def to_json(self) -> dict[str, Any]:
        return {"summary": "airgap", "events": rows_json(self.events), "breaches": self.breaches,
                "restorations": self.restorations, "unobserved": self.unobserved,
                "refused_starts": self.refused_starts, "breached_s": self.breached_s, "open_breach": self.open_breach}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(AirGapEvent, self.events)


class AirGapTimeline:
    kinds = ("airgap.", "engine.refused", "engine.start")

    def __init__(self) -> None:
        self.events: list[AirGapEvent] = []
        self.counts = {"breach": 0, "restored": 0, "unobserved": 0, "refused_start": 0}
        self.breached_s = 0.0
        self.breach_since: str | None = None
        self.unobserved_since: str | None = None

    def feed(self, record: Record, facts: Facts) -> None:
        data = record.data
        event = EVENTS.get(record.kind)
        if record.kind == "engine.refused":
            if not isinstance(data.get("airgap"), dict):
                return  # refused for another reason: drift, a lock
            event = "refused_start"
        if event is None:
            return
        lasted = None
        if event == "breach":
            self.breach_since = self.breach_since or record.ts
        elif event == "restored" and self.breach_since is not None:
            lasted = _seconds(self.breach_since, record.ts)
            self.breached_s += lasted
            self.breach_since = None
        elif event == "unobserved":
            self.unobserved_since = self.unobserved_since or record.ts
        elif event == "observed" and self.unobserved_since is not None:
            lasted, self.unobserved_since = _seconds(self.unobserved_since, record.ts), None
        if event in self.counts:
            self.counts[event] += 1
        mode = data.get("mode")
        self.events.append(AirGapEvent(record.ts, record.seq, event, mode if isinstance(mode, str) else None,
                                       facts.person, _detail(event, data), lasted))

    def merge(self, later: AirGapTimeline) -> None:
        """A breach (or unobserved span) still open here is closed by ``later``'s first restoration
        (observation), which ``later`` could not time: time it, as a serial pass would have."""
        breach, unobserved = self.breach_since, self.unobserved_since
        events = later.events
        for at, event in enumerate(events):
            if breach is not None and event.event == "restored":
                lasted = _seconds(breach, event.ts)
                self.breached_s += lasted - (event.lasted_s or 0.0)
                events[at], breach = replace(event, lasted_s=lasted), None
            elif unobserved is not None and event.event == "observed":
                events[at], unobserved = replace(event, lasted_s=_seconds(unobserved, event.ts)), None
            if breach is None and unobserved is None:
                break
        self.events.extend(events)
        for name, count in later.counts.items():
            self.counts[name] += count
        self.breached_s += later.breached_s
        self.breach_since = breach or later.breach_since
        self.unobserved_since = unobserved or later.unobserved_since

    def result(self) -> AirGapReport:
        return AirGapReport(tuple(self.events), self.counts["breach"], self.counts["restored"],
                            self.counts["unobserved"], self.counts["refused_start"], round(self.breached_s, 6),
                            self.breach_since is not None)


def _detail(event: str, data: dict[str, Any]) -> str:
    if event == "engine_start":
        return f"started {data.get('airgap', '?')}" + (" in a network namespace" if data.get("namespace") else "")
    evidence = data.get("airgap")
    if isinstance(evidence, dict):
        found = [f"interface {i.get('name')}" for i in as_list(evidence.get("interfaces")) if isinstance(i, dict)]
        found += [f"route {r}" for r in as_list(evidence.get("routes"))]
        return ("; ".join(found) or "network reachable")[:300]
    reason = data.get("reason")
    return str(reason)[:300] if reason is not None else ""


def _seconds(start: str, end: str) -> float:
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())

"""What the server tells its operator: one concise line on stderr per event they may have to act on.

The ledger proves what happened; journald (or the terminal) is where an operator looks. Each
record the engine appends is turned into at most one line (`line`, a pure function of the
record): starts, stops and refusals with their reasons, loads and unloads, breaches and
restorations, drift and configuration changes, rejected requests, and generations that
failed. Routine records (each inference's begin and end, seals) make no line.

Invariants: no line holds a secret or any prompt or output text (records hold hashes unless
content recording is on, and this module reads only the named fields of each kind, never
``prompt``, ``messages`` or ``output``); text that clients or files control is escaped and
bounded, so a line cannot forge another or drive the terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from ledger import LedgerWriter, Record

MAX_FIELD = 200


def attach(writer: LedgerWriter, stream: TextIO | None = None) -> None:
    """Print a line on ``stream`` (stderr) for each significant record ``writer`` appends."""
    out = stream or sys.stderr

    def tell(record: Record) -> None:
        text = line(record)
        if text is not None:
            out.write(f"anticloud: {text}\n")
            out.flush()

    writer.observers.append(tell)


def line(record: Record) -> str | None:
    """The operator's line for ``record``, or None for a routine one."""
    describe = _LINES.get(record.kind)
    return None if describe is None else describe(record.data)


def _f(value: Any) -> str:
    """A field fit for one line: non-printable characters escaped, length bounded."""
    text = value if isinstance(value, str) else str(value)
    text = text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "..."
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _evidence(data: dict[str, Any]) -> str:
    airgap = data.get("airgap")
    if not isinstance(airgap, dict):
        return ""
    found = [f"{i.get('name')} up" for i in airgap.get("interfaces", []) if isinstance(i, dict)]
    found += [str(r) for r in airgap.get("routes", [])[:3]]
    return f" ({_f('; '.join(found))})" if found else ""


def _rejected(d: dict[str, Any]) -> str:
    repeated = f" x{d['count']} since {d.get('from')}" if "count" in d else ""
    who = _f(d.get("identity"))
    return f"refused {_f(d.get('path'))} ({d.get('status')}) for {who}{repeated}: {_f(d.get('reason'))}"


def _ended(d: dict[str, Any]) -> str | None:
    if d.get("done_reason") != "error":
        return None
    return f"generation {_f(d.get('id'))} failed: {_f(d.get('error', 'unknown error'))}"


_LINES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "engine.start": lambda d: (f"engine started (pid {d.get('pid')}, engine {_f(d.get('engine'))}, air gap "
                               f"{_f(d.get('airgap'))}{', own network namespace' if d.get('namespace') else ''}, "
                               f"config {_f(str(d.get('config', ''))[:24])})"),
    "engine.stop": lambda d: f"engine stopped: {_f(d.get('reason'))}",
    "model.load": lambda d: (f"loaded {_f(d.get('name'))} in {d.get('duration_ms')} ms (weights hash verified, "
                             f"{_f(d.get('weights'))})"),
    "model.unload": lambda d: f"unloaded {_f(d.get('name'))} ({_f(d.get('reason'))})",
    "model.load.refused": lambda d: f"refused to load {_f(d.get('model'))}: {_f(d.get('reason'))}",
    "model.import": lambda d: f"imported {_f(d.get('name'))}",
    "model.remove": lambda d: f"removed {_f(d.get('name'))}",
    "airgap.breach": lambda d: f"AIR GAP BREACHED: a network is reachable{_evidence(d)}; inferences are refused",
    "airgap.restored": lambda d: "air gap restored: no network is reachable; inferences resume",
    "airgap.unobserved": lambda d: f"the network cannot be checked ({_f(d.get('reason'))}); inferences are refused",
    "airgap.observed": lambda d: "the network can be checked again",
    "config.drift": lambda d: "config.toml was changed outside anticloud; review it, then `anticloud config accept`",
    "config.change": lambda d: f"configuration changed: {_f(d.get('key'))} {_f(d.get('old'))} -> {_f(d.get('new'))}",
    "config.accept": lambda d: f"configuration accepted: {_f(str(d.get('digest', ''))[:24])}",
    "trust.revoke": lambda d: f"publisher key revoked: {_f(d.get('name') or d.get('key_id'))}",
    "token.revoke": lambda d: f"token revoked: {_f(d.get('name'))}",
    "request.rejected": _rejected,
    "inference.end": _ended,
    "inference.interrupted": lambda d: f"generation {_f(d.get('id'))} interrupted: {_f(d.get('reason'))}",
    "ledger.recovered": lambda d: (f"the ledger's torn tail ({d.get('length')} bytes at {d.get('offset')}) was "
                                   "quarantined and recovered"),
}

"""Lifecycles: of models (imported, loaded, unloaded, refused, rejected, removed) and of the keys
and tokens that grant trust and access (publisher keys trusted and revoked, tokens created and
revoked, auditors enrolled for sealing).

Each answer is a timeline, one row per event, and per subject a count of each event. Loads and
unloads follow the engine's keep-alive, not the requests, so the timeline grows with the
changes of state, not with the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from anticloud.audit.facts import Facts, as_list
from anticloud.audit.result import rows_json, rows_table
from ledger import Record

MODEL_EVENTS = {"model.import": "import", "model.import.rejected": "import_rejected", "model.load": "load",
                "model.unload": "unload", "model.load.refused": "load_refused", "model.remove": "remove"}
KEY_EVENTS = {"trust.add": "key_trusted", "trust.revoke": "key_revoked", "token.create": "token_created",
              "token.revoke": "token_revoked", "seal.enroll": "auditor_enrolled"}


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    ts: str
    seq: int
    event: str
    subject: str  # the model, key, token or auditor
    person: str | None  # who acted
    detail: str


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """``what`` is "models" or "keys"; ``counts`` maps each subject to its events' counts."""

    what: str
    events: tuple[LifecycleEvent, ...]
    counts: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.what, "events": rows_json(self.events),
                "counts": {subject: dict(c) for subject, c in self.counts.items()}}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(LifecycleEvent, self.events)


class _Timeline:
    names: dict[str, str]
    what: str

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self.counts: dict[str, dict[str, int]] = {}

    def feed(self, record: Record, facts: Facts) -> None:
        event = self.names.get(record.kind)
        if event is None:
            return
        subject, detail = self.describe(record, facts)
        self.events.append(LifecycleEvent(record.ts, record.seq, event, subject, facts.person, detail))
        counts = self.counts.setdefault(subject, {})
        counts[event] = counts.get(event, 0) + 1

    def merge(self, later: Self) -> None:
        self.events.extend(later.events)
        for subject, theirs in later.counts.items():
            counts = self.counts.setdefault(subject, {})
            for event, count in theirs.items():
                counts[event] = counts.get(event, 0) + count

    def describe(self, record: Record, facts: Facts) -> tuple[str, str]:
        raise NotImplementedError

    def result(self) -> Lifecycle:
        return Lifecycle(self.what, tuple(self.events), dict(sorted(self.counts.items())))


class ModelLifecycle(_Timeline):
    kinds = tuple(MODEL_EVENTS)
    names = MODEL_EVENTS
    what = "models"

    def describe(self, record: Record, facts: Facts) -> tuple[str, str]:
        data = record.data
        subject = facts.model or _bundle_name(data)
        if record.kind == "model.import":
            return subject, f"manifest {data.get('manifest')}, {data.get('bytes')} bytes, signed by " + \
                ", ".join(str(s) for s in as_list(data.get("signers")))
        if record.kind == "model.load":
            return subject, f"engine {data.get('engine')}, n_ctx {data.get('n_ctx')}, {data.get('duration_ms')} ms"
        if record.kind == "model.unload":
            return subject, f"{data.get('reason')}"
        return subject, str(data.get("reason", data.get("manifest", "")))[:300]


class KeyLifecycle(_Timeline):
    kinds = tuple(KEY_EVENTS)
    names = KEY_EVENTS
    what = "keys"

    def describe(self, record: Record, facts: Facts) -> tuple[str, str]:
        data = record.data
        if record.kind.startswith("trust."):
            return f"key {data.get('name')}", str(data.get("key_id", ""))
        if record.kind.startswith("token."):
            expires = f", expires {data['expires']}" if data.get("expires") else ""
            return f"token {data.get('name')}", f"id {data.get('token_id')}{expires}"
        return f"auditor {data.get('auditor')}", f"fingerprint {data.get('fingerprint')}"


def _bundle_name(data: dict[str, Any]) -> str:
    bundle = data.get("bundle")
    return f"bundle {bundle}" if isinstance(bundle, str) else "?"

"""Configuration history: who changed which setting, when, from what to what.

* ``config.change`` (``anticloud config set``): one row, with its ``why`` and ``takes_effect``;
* ``config.init`` / ``config.accept``: one row per setting in ``changes`` (what differs from the
  configuration accepted before), or one row saying what was accepted when nothing differs;
* ``config.drift``: the file changed outside anticloud; old and new are the accepted and the
  found digests (the engine refused to start on it);
* ``config.upgrade``: one row per setting an upgrade of anticloud added at its default;
* ``appliance.install`` / ``appliance.upgrade``: the appliance's own version, old and new.

One row per change: the history is as long as the changes, not the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anticloud.audit.facts import Facts, as_list
from anticloud.audit.result import rows_json, rows_table
from ledger import Record


@dataclass(frozen=True, slots=True)
class ConfigChange:
    ts: str
    seq: int
    kind: str
    person: str | None
    key: str
    old: Any
    new: Any
    note: str


@dataclass(frozen=True, slots=True)
class ConfigHistory:
    rows: tuple[ConfigChange, ...]
    drifts: int

    def to_json(self) -> dict[str, Any]:
        return {"summary": "config", "rows": rows_json(self.rows), "changes": len(self.rows), "drifts": self.drifts}

    def table(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return rows_table(ConfigChange, self.rows)


class ConfigChanges:
    kinds = ("config.", "appliance.install", "appliance.upgrade")

    def __init__(self) -> None:
        self.rows: list[ConfigChange] = []
        self.drifts = 0

    def feed(self, record: Record, facts: Facts) -> None:
        kind, data = record.kind, record.data

        def row(key: str, old: Any, new: Any, note: str = "") -> None:
            self.rows.append(ConfigChange(record.ts, record.seq, kind, facts.person, key, old, new, note))

        if kind == "config.change":
            notes = [str(data[k]) for k in ("why",) if isinstance(data.get(k), str)]
            if data.get("takes_effect"):
                notes.append(f"takes effect: {data['takes_effect']}")
            row(str(data.get("key", "?")), data.get("old"), data.get("new"), "; ".join(notes))
        elif kind in ("config.init", "config.accept"):
            changes = data.get("changes")
            listed = [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []
            for change in listed:
                row(str(change.get("key", "?")), change.get("old"), change.get("new"))
            if not listed:
                row("(configuration)", None, data.get("digest"),
                    "initial configuration" if kind == "config.init" else "accepted, nothing changed")
        elif kind == "config.drift":
            self.drifts += 1
            row("(config.toml)", data.get("accepted"), data.get("found"), "changed outside anticloud")
        elif kind == "config.upgrade":
            for key in as_list(data.get("added")):
                row(str(key), None, "(default)", "added by an upgrade of anticloud")
        elif kind in ("appliance.install", "appliance.upgrade"):
            before, after = data.get("from"), data.get("to")
            row("(appliance version)", before.get("version") if isinstance(before, dict) else None,
                after.get("version") if isinstance(after, dict) else None,
                str(data.get("direction", "install")) + (" (forced)" if data.get("forced") else ""))

    def merge(self, later: ConfigChanges) -> None:
        self.rows.extend(later.rows)
        self.drifts += later.drifts

    def result(self) -> ConfigHistory:
        return ConfigHistory(tuple(self.rows), self.drifts)

"""Erasing sealed content by destroying its keys: scopes, legal holds, retention, and the order
that makes a crash harmless.

The order of an erasure, each step durable before the next:

1. the plan (which key groups and which data keys go) is computed from the keyring, and refused
   (``content.refused``) if a legal hold in force covers any of it;
2. the intent is written to ``keyring/erasing.json``;
3. ``content.erased`` is appended: no record, no erasure;
4. the keys are destroyed (overwritten, fsynced, unlinked), then, if asked, the content files;
5. the intent is removed.

A crash before 3 leaves the old state (`finish` drops an intent no record confirms); a crash
after 3 leaves a recorded erasure whose keys may still exist, and `finish`, run before every
erasure and at every engine start, destroys them. So an erasure is never unrecorded, and a
recorded one always completes.

Holds are the ledger's: ``content.hold`` records not followed by a ``content.release`` of the
same ``hold``. Scopes are pure data: `covers` decides whether a hold's scope reaches a group or
a data key, and each rule is stated there once.
"""

from __future__ import annotations

import fcntl
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anticloud.errors import ContentSealError, ErasureHeld
from anticloud.fsutil import atomic_write
from anticloud.vault import crypto
from anticloud.vault.keyring import Entry, Group, Keyring
from anticloud.vault.store import ContentStore
from ledger import ERASED_KIND, LedgerWriter, Record, records_backward, records_forward

HOLD = "content.hold"
RELEASE = "content.release"
REFUSED = "content.refused"
Scope = dict[str, Any]  # {"person", "before"?} | {"seq", "inference", "key"} | {"retention", "before"}


def parse_day(text: str) -> datetime:
    """A ``YYYY-MM-DD`` as midnight UTC; ValueError naming it otherwise."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a date written YYYY-MM-DD") from None


def month_bounds(month: str) -> tuple[datetime, datetime]:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _ts(entry: Entry) -> datetime:
    return datetime.strptime(entry.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def covers_group(scope: Scope, group: Group) -> bool:
    """Whether ``scope`` reaches any data key of ``group``."""
    if "key" in scope:
        return bool(scope["key"] == group.group)
    if "person" in scope and scope["person"] != group.person:
        return False
    before = scope.get("before")
    return before is None or month_bounds(group.month)[0] < parse_day(before)


def covers_entry(scope: Scope, group: Group, entry: Entry) -> bool:
    """Whether ``scope`` reaches the data key ``entry`` of ``group``."""
    if "inference" in scope:
        return bool(scope["inference"] == entry.inference)
    if "person" in scope and scope["person"] != group.person:
        return False
    before = scope.get("before")
    return before is None or _ts(entry) < parse_day(before)


@dataclass(slots=True)
class Plan:
    """What an erasure destroys: whole key groups, and single data keys of groups that stay."""

    scope: Scope
    groups: list[Group] = field(default_factory=list)
    entries: dict[str, set[str]] = field(default_factory=dict)  # group -> inferences

    @property
    def empty(self) -> bool:
        return not self.groups and not self.entries

    def inferences(self) -> list[str]:
        return sorted(i for found in self.entries.values() for i in found)


def plan(keyring: Keyring, scope: Scope) -> Plan:
    """The groups a scope takes whole (every key in it is in scope) and the single keys it takes
    from the others. Retention and person scopes take a month whole once it ended before their date."""
    out = Plan(scope)
    for group in keyring.all_groups():
        if not covers_group(scope, group):
            continue
        before = scope.get("before")
        whole = "inference" not in scope and (before is None or month_bounds(group.month)[1] <= parse_day(before))
        if whole:
            out.groups.append(group)
            continue
        taken = {e.inference for e in keyring.entries(group.group) if covers_entry(scope, group, e)}
        if taken:
            out.entries[group.group] = taken
    return out


def place_hold(writer: LedgerWriter, scope: Scope, reason: str) -> tuple[str, Record]:
    """Record a legal hold on ``scope``; it is in force from its record on. Returns its id and record."""
    ident = secrets.token_hex(4)
    return ident, writer.append(HOLD, {"hold": ident, "scope": scope, "reason": reason})


def release_hold(writer: LedgerWriter, ledger: Path, hold: str, reason: str) -> Record:
    """Record the end of a hold in force."""
    if hold not in holds_in_force(ledger):
        raise ContentSealError(f"no hold {hold} is in force (see `anticloud content holds`)")
    return writer.append(RELEASE, {"hold": hold, "reason": reason})


def holds_in_force(ledger: Path) -> dict[str, Scope]:
    """The legal holds the ledger has in force: hold id -> its scope."""
    holds: dict[str, Scope] = {}
    for located in records_forward(ledger, [HOLD, RELEASE]):
        data = located.record.data
        hold, scope = data.get("hold"), data.get("scope")
        if located.record.kind == RELEASE:
            holds.pop(str(hold), None)
        elif isinstance(hold, str) and isinstance(scope, dict) and _scope_ok(scope):
            holds[hold] = scope
        else:  # a hold whose scope cannot be read holds everything: erasure waits for a person to look
            holds[str(hold)] = {}
    return holds


def _scope_ok(scope: Scope) -> bool:
    """Whether a recorded scope is one this module states: a person (and a day), or a record."""
    if "inference" in scope or "key" in scope:
        return isinstance(scope.get("inference"), str) and isinstance(scope.get("key"), str)
    try:
        before = scope.get("before")
        return isinstance(scope.get("person"), str) and (before is None or bool(parse_day(before)))
    except (ValueError, TypeError):
        return False


def held_by(keyring: Keyring, p: Plan, holds: dict[str, Scope]) -> dict[str, list[str]]:
    """Hold id -> the key groups of ``p`` it covers (in whole or in part)."""
    found: dict[str, list[str]] = {}
    by_id = {g.group: g for g in keyring.all_groups()}
    for hold, scope in holds.items():
        hit = [g.group for g in p.groups if covers_group(scope, g) and _any_entry(keyring, scope, g)]
        hit += [name for name, taken in p.entries.items()
                if any(covers_entry(scope, by_id[name], e) for e in keyring.entries(name) if e.inference in taken)]
        if hit:
            found[hold] = sorted(set(hit))
    return found


def _any_entry(keyring: Keyring, scope: Scope, group: Group) -> bool:
    entries = keyring.entries(group.group)
    return not entries or any(covers_entry(scope, group, e) for e in entries)


@dataclass(frozen=True, slots=True)
class Erased:
    erasure: str
    record_seq: int
    keys: list[str]
    inferences: list[str]
    files_deleted: int


class Eraser:
    """Carries out erasures for one home's keyring, content store and ledger."""

    def __init__(self, keyring: Keyring, store: ContentStore, ledger: Path, writer: LedgerWriter) -> None:
        self.keyring, self.store, self.ledger, self.writer = keyring, store, ledger, writer

    @property
    def intent_path(self) -> Path:
        return self.keyring.root / "erasing.json"

    def erase(self, scope: Scope, request: str, delete_ciphertext: bool, skip_held: bool = False) -> Erased | None:
        """Erase what ``scope`` covers (see the module's order); None if it covers nothing.
        ErasureHeld, recorded as content.refused, if a hold covers any of it, unless ``skip_held``
        (retention), which leaves the held groups and names them in the record."""
        self.finish()
        with self.keyring.locked(fcntl.LOCK_EX):
            p = plan(self.keyring, scope)
            held = held_by(self.keyring, p, holds_in_force(self.ledger))
            kept: list[str] = []
            if held and not skip_held:
                self.writer.append(REFUSED, {"scope": scope, "request": request, "holds": sorted(held)})
                raise ErasureHeld(f"legal hold {', '.join(sorted(held))} covers this scope; nothing was erased")
            if held:
                kept = sorted({g for groups in held.values() for g in groups})
                p.groups = [g for g in p.groups if g.group not in kept]
                p.entries = {k: v for k, v in p.entries.items() if k not in kept}
            if p.empty:
                return None
            erasure = secrets.token_hex(8)
            keys = [g.group for g in p.groups]
            # The inferences whose files go are fixed now: after a crash the keys naming them may be gone.
            shred = sorted({e.inference for g in keys for e in self.keyring.entries(g)} | set(p.inferences()))
            intent = {"erasure": erasure, "groups": keys, "entries": {k: sorted(v) for k, v in p.entries.items()},
                      "shred": shred if delete_ciphertext else []}
            atomic_write(self.intent_path, json.dumps(intent).encode(), 0o600)
            data: dict[str, Any] = {"erasure": erasure, "scope": scope, "keys": keys,
                                    "inferences": p.inferences(), "request": request,
                                    "ciphertext": "deleted" if delete_ciphertext else "kept"}
            if kept:
                data["held"] = kept
            # If the append fails, the intent stays: the record may be durable all the same (a failure
            # after the write), and `finish` decides from the ledger whether to destroy or to drop it.
            record = self.writer.append(ERASED_KIND, data)
            deleted = self._destroy(intent)
            return Erased(erasure, record.seq, keys, p.inferences(), deleted)

    def finish(self) -> str | None:
        """Complete an erasure a crash interrupted after it was recorded, or drop one that was
        never recorded. Returns the erasure's id if one was completed."""
        if not self.intent_path.exists():
            return None
        with self.keyring.locked(fcntl.LOCK_EX):
            try:
                intent = json.loads(self.intent_path.read_bytes())
            except (OSError, ValueError):  # torn before it was ever acted on: nothing was recorded
                self.intent_path.unlink(missing_ok=True)
                return None
            if _recorded(self.ledger, str(intent["erasure"])) is None:
                self.intent_path.unlink()
                return None
            self._destroy(intent)
            return str(intent["erasure"])

    def expire(self, retention: int, now: datetime, request: str = "retention") -> Erased | None:
        """Erase every month that ended more than ``retention`` seconds before ``now``; 0 keeps all."""
        if retention <= 0:
            return None
        cutoff = datetime.fromtimestamp(now.timestamp() - retention, UTC)
        before = f"{cutoff.year:04d}-{cutoff.month:02d}-01"  # months wholly before the cutoff's month
        return self.erase({"retention": retention, "before": before}, request, delete_ciphertext=True,
                          skip_held=True)

    def _destroy(self, intent: dict[str, Any]) -> int:
        """Carry out a recorded intent; every step may already have been done by an interrupted run."""
        for group in intent["groups"]:
            self.keyring.destroy_group(group)
        for group, taken in intent["entries"].items():
            self.keyring.destroy_entries(group, set(taken))
        deleted = sum(self.store.delete(crypto.content_id(i, f)) for i in intent["shred"] for f in crypto.FIELDS)
        self.intent_path.unlink(missing_ok=True)
        return deleted


def _recorded(ledger: Path, erasure: str) -> Record | None:
    """The content.erased record of ``erasure``: an intent is written just before its record, so
    the newest few are enough to look at."""
    for n, located in enumerate(records_backward(ledger, [ERASED_KIND])):
        if located.record.data.get("erasure") == erasure:
            return located.record
        if n >= 16:
            break
    return None


def scope_of(person: str | None, before: str | None, seq: int | None,
             record_at: Callable[[int], Record]) -> Scope:
    """An erasure's or a hold's scope from the command line's options; a seq must name a sealed record."""
    if (person is None) == (seq is None):
        raise ContentSealError("name either a person (--person, with --before if you like) or a record (--seq)")
    if person is not None:
        if before is not None:
            parse_day(before)
        return {"person": person} | ({"before": before} if before else {})
    if before is not None:
        raise ContentSealError("--before goes with --person, not with --seq")
    assert seq is not None
    record = record_at(seq)
    refs = record.data.get("sealed")
    if not isinstance(refs, dict) or not refs:
        raise ContentSealError(f"record {seq} ({record.kind}) holds no sealed content")
    ref = next(iter(refs.values()))
    return {"seq": seq, "inference": str(ref["id"]).rpartition(".")[0], "key": str(ref["key"])}


__all__ = ["HOLD", "REFUSED", "RELEASE", "Erased", "Eraser", "Plan", "Scope", "covers_entry",
           "covers_group", "held_by", "holds_in_force", "parse_day", "place_hold", "plan", "release_hold",
           "scope_of"]

"""The state in force: the configuration and trust that the ledger last recorded.

`anticloud config set|accept` and `anticloud keys revoke` run in processes of their own. A
running engine governs every operation by what they recorded (`anticloud.follow`).

Invariants:

* A configuration or trust change recorded by another process is in force for every record
  that follows it: before each governed operation the engine takes over what was recorded
  (`Governor.refresh`), and the records it writes are built under the ledger's lock only once
  nothing new was recorded (`Governor.append`).
* Settings take effect at once, except those that shape a loaded model (compute, per-model,
  trust, GGUF and template policy), which unload the loaded models so the next use loads them
  under the new settings, and ``engine.name``, which takes effect at the next start (its
  ``config.change`` says so). A revoked publisher key unloads the loaded models; the next
  load re-checks signatures and is refused. A removed model is unloaded once idle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anticloud.clock import ClockWatch
from anticloud.config import Config, merge
from anticloud.errors import Busy, LoadRefused, ModelError
from anticloud.follow import LedgerFollower, StateChanged
from anticloud.pool import ModelPool
from anticloud.watch import AirGapWatch
from ledger import LedgerWriter, Record

# Sections that shape a loaded model: a change to one unloads the loaded models, so that the
# next use loads them under it rather than keep serving what the old settings admitted.
RELOAD_SECTIONS = ("compute", "models", "trust", "gguf", "chat_templates")
REVOKED = "trust.revoke"
REMOVED = "model.remove"
_TRIES = 8


class Governor:
    """Keeps ``config`` what the ledger last recorded, and appends records built under it."""

    def __init__(self, ledger: Path, writer: LedgerWriter, follower: LedgerFollower, config: Config,
                 gap: AirGapWatch, pool: ModelPool, clock: ClockWatch | None = None) -> None:
        self.ledger, self.writer, self.follower, self.config = ledger, writer, follower, config
        self.gap, self.pool, self.clock = gap, pool, clock
        self._lock = threading.Lock()
        self._stale: dict[str, str] = {}  # loaded models to unload as soon as idle -> why

    def refresh(self) -> None:
        """Put in force what other processes recorded since the last look, and unload the models
        that a change made stale once nobody uses them. Cheap when nothing was recorded."""
        with self._lock:
            for record in self.follower.take():
                if record.kind == REVOKED:
                    self._stale.update(dict.fromkeys(self._loaded(), REVOKED))
                elif record.kind == REMOVED and record.data.get("name") in self._loaded():
                    self._stale[str(record.data["name"])] = REMOVED
                elif record.kind.startswith("config."):
                    self._apply(Config(merge(record.data["config"], f"ledger record {record.seq}")))
            for name, reason in list(self._stale.items()):
                if self.pool.drop_idle(name, reason):
                    del self._stale[name]

    def _apply(self, config: Config) -> None:
        old, self.config = self.config, config
        self.gap.set_mode(config.get("airgap", "mode"))
        if self.clock is not None:
            self.clock.threshold = config.get("clock", "jump_threshold")
        self.pool.keep_alive = config.get("engine", "keep_alive")
        self.pool.max_loaded = config.get("engine", "max_loaded")
        self.pool.queue_size = config.get("engine", "queue_size")
        if any(old.doc.get(section) != config.doc.get(section) for section in RELOAD_SECTIONS):
            for name in self._loaded():
                self._stale.setdefault(name, "config.change")

    def _loaded(self) -> list[str]:
        return [str(slot["name"]) for slot in self.pool.status()]

    def check_fresh(self, name: str) -> None:
        """Refuse a model that a recorded change made stale, until it is unloaded."""
        reason = self._stale.get(name)
        if reason == REVOKED:
            raise LoadRefused(f"refusing {name}: a publisher key was revoked since it was loaded; it is being "
                              "unloaded and will be verified again", {"model": name, "reason": reason})
        if reason == REMOVED:
            raise ModelError(f"{name} was removed from the store; it is being unloaded")
        if reason is not None:
            raise Busy(f"{name} is being reloaded after a recorded configuration change; try again shortly")

    def append(self, kind: str, build: Callable[[], dict[str, Any]],
               check: Callable[[], None] = lambda: None) -> Record:
        """Append a record built from the state in force, which no configuration or trust record
        can precede unseen: the builder runs under the ledger's lock, after checking that nothing
        new was recorded since `refresh`; if something was, take it over and build again."""
        def derived(head: Record) -> dict[str, Any]:
            if self.follower.pending(os.stat(self.ledger).st_size):
                raise StateChanged("a configuration or trust change was recorded meanwhile")
            return build()

        for _ in range(_TRIES):
            self.refresh()
            check()
            try:
                return self.writer.append_derived(kind, derived)
            except StateChanged:
                continue
        raise Busy("the configuration or trust store keeps changing; try again shortly")

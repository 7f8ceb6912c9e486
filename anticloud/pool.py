"""The model pool: load on first use, keep idle models for keep_alive, at most max_loaded.

Invariants: each loaded model runs one generation at a time; at most ``queue_size`` requests
wait for it, and the next is told `Busy` at once rather than queued without bound; a model
is evicted (least recently used first) or expired only while nobody uses or awaits it.
Loading and unloading go through the callbacks, which verify and record them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from anticloud.engines import LoadedModel
from anticloud.errors import Busy


@dataclass
class Slot:
    name: str
    model: LoadedModel
    info: dict[str, object]  # what the loader learned (manifest digest, n_ctx, ...), for records
    loaded_at: float
    last_used: float
    waiting: int = 0
    busy: threading.Lock = field(default_factory=threading.Lock)
    keep_alive: float | None = None  # this model's own, set by a request; negative: for ever

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and not self.busy.locked()


Loader = Callable[[str], tuple[LoadedModel, dict[str, object]]]
Unloader = Callable[[Slot, str], None]  # (slot, reason)


class ModelPool:
    def __init__(self, load: Loader, unload: Unloader, max_loaded: int, keep_alive: float, queue_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load, self._unload = load, unload
        self.max_loaded, self.keep_alive, self.queue_size = max_loaded, keep_alive, queue_size
        self._clock = clock
        self._slots: dict[str, Slot] = {}
        self._mutex = threading.Lock()

    @contextmanager
    def use(self, name: str) -> Iterator[Slot]:
        """The loaded model, held for one generation. Raises Busy when its queue is full."""
        with self._mutex:
            slot = self._slots.get(name) or self._admit(name)
            if slot.waiting >= self.queue_size:
                raise Busy(f"{name} is busy: {slot.waiting} request(s) already waiting; try again shortly")
            slot.waiting += 1
        slot.busy.acquire()
        with self._mutex:
            slot.waiting -= 1
        try:
            yield slot
        finally:
            slot.last_used = self._clock()
            slot.busy.release()

    def _admit(self, name: str) -> Slot:
        while len(self._slots) >= self.max_loaded:
            idle = [s for s in self._slots.values() if s.idle]
            if not idle:
                raise Busy(f"{self.max_loaded} model(s) loaded and all in use; try again shortly")
            self._drop(min(idle, key=lambda s: s.last_used), "evicted")
        model, info = self._load(name)
        now = self._clock()
        slot = self._slots[name] = Slot(name, model, info, now, now)
        return slot

    def sweep(self) -> None:
        """Unload the models idle for longer than keep_alive."""
        with self._mutex:
            now = self._clock()
            for slot in list(self._slots.values()):
                keep = self.keep_alive if slot.keep_alive is None else slot.keep_alive
                if slot.idle and 0 <= keep <= now - slot.last_used:
                    self._drop(slot, "keep_alive")

    def drop_idle(self, name: str, reason: str) -> bool:
        """Unload ``name`` now unless someone uses or awaits it; True once it is not loaded."""
        with self._mutex:
            slot = self._slots.get(name)
            if slot is not None and not slot.idle:
                return False
            if slot is not None:
                self._drop(slot, reason)
            return True

    def close(self) -> None:
        with self._mutex:
            for slot in list(self._slots.values()):
                self._drop(slot, "shutdown")

    def _drop(self, slot: Slot, reason: str) -> None:
        del self._slots[slot.name]
        self._unload(slot, reason)

    def status(self) -> list[dict[str, object]]:
        with self._mutex:
            now = self._clock()
            return [{"name": s.name, "busy": s.busy.locked(), "waiting": s.waiting,
                     "expires_in": self._expires_in(s, now)} for s in self._slots.values()]

    def _expires_in(self, slot: Slot, now: float) -> float | None:
        keep = self.keep_alive if slot.keep_alive is None else slot.keep_alive
        return None if keep < 0 else max(0.0, round(keep - (now - slot.last_used), 1))

"""The model pool: load on first use, keep idle models for keep_alive, at most max_loaded.

Invariants:

* Each loaded model runs at most ``model.parallel`` operations at a time (the generations its
  engine decodes together); at most ``queue_size`` more requests wait for it (or for its load),
  and the next is told `Busy` at once rather than queued without bound.
* At most ``max_loaded`` models are loaded, loading or unloading at any moment; a model is
  evicted (least recently used first) or expired only while nobody uses or awaits it.
* The pool's mutex is never held while a model loads or unloads. Hashing and loading weights
  can take minutes; meanwhile `sweep`, `status` and requests for other models go on, and
  requests for the model being loaded wait for that one load instead of starting another.
  A load that fails fails for every request waiting on it.

Loading and unloading go through the callbacks, which verify and record them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from anticloud.engines import LoadedModel
from anticloud.errors import Busy


@dataclass
class Slot:
    name: str
    model: LoadedModel
    info: dict[str, object]  # what the loader learned (manifest digest, n_ctx, ...), for records
    loaded_at: float
    last_used: float
    waiting: int = 0  # claimed it, and wait for one of its places or for it to load
    users: int = 0  # hold one of its ``model.parallel`` places
    keep_alive: float | None = None  # this model's own, set by a request; negative: for ever

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and self.users == 0

    @property
    def full(self) -> bool:
        return self.users >= self.model.parallel


@dataclass
class _Loading:
    """A load in progress; the requests that arrived meanwhile wait for its outcome."""

    waiting: int = 0
    slot: Slot | None = None
    error: BaseException | None = None


Loader = Callable[[str], tuple[LoadedModel, dict[str, object]]]
Unloader = Callable[[Slot, str], None]  # (slot, reason)


class ModelPool:
    def __init__(self, load: Loader, unload: Unloader, max_loaded: int, keep_alive: float, queue_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load, self._unload = load, unload
        self.max_loaded, self.keep_alive, self.queue_size = max_loaded, keep_alive, queue_size
        self._clock = clock
        self._slots: dict[str, Slot] = {}
        self._loading: dict[str, _Loading] = {}
        self._leaving: set[str] = set()  # being unloaded: their memory is not free yet
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)  # a load or an unload finished

    @contextmanager
    def use(self, name: str) -> Iterator[Slot]:
        """The loaded model, one of its places held for one operation. Raises Busy when its queue is full."""
        slot = self._claim(name)
        with self._changed:
            self._changed.wait_for(lambda: not slot.full)
            slot.waiting -= 1
            slot.users += 1
        try:
            yield slot
        finally:
            with self._changed:
                slot.last_used = self._clock()
                slot.users -= 1
                self._changed.notify_all()

    def _claim(self, name: str) -> Slot:
        """The slot for ``name``, counted in its ``waiting``: found, awaited, or loaded here."""
        with self._changed:
            while True:
                if (slot := self._slots.get(name)) is not None:
                    if slot.waiting >= self.queue_size:
                        raise Busy(f"{name} is busy: {slot.waiting} request(s) already waiting; try again shortly")
                    slot.waiting += 1
                    return slot
                if (loading := self._loading.get(name)) is not None:
                    return self._await(name, loading)
                if name in self._leaving or self._room_is_being_freed():
                    self._changed.wait()  # an unload under way will make room
                    continue
                victim = self._make_room()
                loading = self._loading[name] = _Loading()
                break
        return self._load_here(name, loading, victim)

    def _await(self, name: str, loading: _Loading) -> Slot:
        if loading.waiting >= self.queue_size:
            raise Busy(f"{name} is loading: {loading.waiting} request(s) already waiting; try again shortly")
        loading.waiting += 1
        self._changed.wait_for(lambda: loading.slot is not None or loading.error is not None)
        if loading.error is not None:
            raise loading.error
        assert loading.slot is not None
        return loading.slot  # the loader counted this request in the slot's waiting

    def _full(self) -> bool:
        return len(self._slots) + len(self._loading) + len(self._leaving) >= self.max_loaded

    def _room_is_being_freed(self) -> bool:
        return self._full() and bool(self._leaving) and not any(s.idle for s in self._slots.values())

    def _make_room(self) -> Slot | None:
        """Under the mutex: None if there is room, else the idle slot to evict (now leaving).

        Raises Busy when every loaded model is in use.
        """
        if not self._full():
            return None
        idle = [s for s in self._slots.values() if s.idle]
        if not idle:
            raise Busy(f"{self.max_loaded} model(s) loaded and all in use; try again shortly")
        victim = min(idle, key=lambda s: s.last_used)
        self._leave([victim])
        return victim

    def _load_here(self, name: str, loading: _Loading, victim: Slot | None) -> Slot:
        """Outside the mutex: unload the victim, load ``name``, and hand the slot to its waiters."""
        try:
            if victim is not None:
                self._unload_outside(victim, "evicted")
            model, info = self._load(name)
        except BaseException as exc:
            with self._changed:
                del self._loading[name]
                loading.error = exc
                self._changed.notify_all()
            raise
        now = self._clock()
        with self._changed:
            slot = Slot(name, model, info, now, now, waiting=1 + loading.waiting)
            self._slots[name] = slot
            del self._loading[name]
            loading.slot = slot
            self._changed.notify_all()
        return slot

    def _unload_outside(self, slot: Slot, reason: str) -> None:
        """Unload a slot already moved to ``_leaving``, then free its place."""
        try:
            self._unload(slot, reason)
        finally:
            with self._changed:
                self._leaving.discard(slot.name)
                self._changed.notify_all()

    def sweep(self) -> None:
        """Unload the models idle for longer than keep_alive."""
        with self._mutex:
            now = self._clock()
            expired = [s for s in self._slots.values() if s.idle and 0 <= self._keep(s) <= now - s.last_used]
            self._leave(expired)
        self._unload_all(expired, "keep_alive")

    def drop_idle(self, name: str, reason: str) -> bool:
        """Unload ``name`` now unless someone uses, awaits or is loading it; True once it is not loaded."""
        with self._mutex:
            slot = self._slots.get(name)
            if name in self._loading or (slot is not None and not slot.idle):
                return False
            if slot is not None:
                self._leave([slot])
        if slot is not None:
            self._unload_outside(slot, reason)
        return True

    def close(self, grace: float | None = None) -> None:
        """Unload every model, once the loads under way have finished.

        With ``grace``, a model still generating is unloaded only once its generation ends,
        waiting up to ``grace`` seconds; one still busy then is left loaded, because unloading
        weights under a running generation would crash the process, not stop it."""
        with self._changed:
            self._changed.wait_for(lambda: not self._loading)
            slots = list(self._slots.values())
            self._leave(slots)
        if grace is None:
            self._unload_all(slots, "shutdown")
            return
        with self._changed:
            self._changed.wait_for(lambda: all(s.users == 0 for s in slots), grace)
            held = [s for s in slots if s.users == 0]
            for slot in held:
                slot.users = slot.model.parallel  # nobody starts on it now
        self._unload_all(held, "shutdown")

    def _leave(self, slots: list[Slot]) -> None:
        for slot in slots:
            del self._slots[slot.name]
            self._leaving.add(slot.name)

    def _unload_all(self, slots: list[Slot], reason: str) -> None:
        """Unload every slot even if one fails (each failure would leak a model); raise the first."""
        first: BaseException | None = None
        for slot in slots:
            try:
                self._unload_outside(slot, reason)
            except BaseException as exc:  # noqa: BLE001 -- raised below, after the other unloads
                first = first or exc
        if first is not None:
            raise first

    def status(self) -> list[dict[str, object]]:
        with self._mutex:
            now = self._clock()
            return [{"name": s.name, "busy": s.users > 0, "running": s.users, "waiting": s.waiting,
                     "expires_in": self._expires_in(s, now)} for s in self._slots.values()]

    def _keep(self, slot: Slot) -> float:
        return self.keep_alive if slot.keep_alive is None else slot.keep_alive

    def _expires_in(self, slot: Slot, now: float) -> float | None:
        keep = self._keep(slot)
        return None if keep < 0 else max(0.0, round(keep - (now - slot.last_used), 1))

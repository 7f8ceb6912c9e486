"""The model pool: loads happen outside its mutex, and its bounds hold while they do."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from anticloud.errors import Busy
from anticloud.pool import ModelPool, Slot
from tests.waiting import join, poll

DEADLINE = 30.0


class Model:
    """What the pool needs of a loaded model: how many operations it runs at once."""

    def __init__(self, parallel: int) -> None:
        self.parallel = parallel


class Loads:
    """A loader whose loads each wait until the test lets them finish."""

    def __init__(self) -> None:
        self.parallel = 1
        self.started: list[str] = []
        self.unloaded: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.fail: Exception | None = None
        self._cv = threading.Condition()

    def load(self, name: str) -> tuple[Any, dict[str, object]]:
        with self._cv:
            self.started.append(name)
            self._cv.notify_all()
        assert self.release.wait(DEADLINE), "the test never released the load"
        if self.fail is not None:
            raise self.fail
        return Model(self.parallel), {"name": name}

    def unload(self, slot: Slot, reason: str) -> None:
        self.unloaded.append((slot.name, reason))

    def wait_started(self, count: int) -> None:
        with self._cv:
            assert self._cv.wait_for(lambda: len(self.started) >= count, DEADLINE), self.started


@pytest.fixture
def loads() -> Iterator[Loads]:
    loads = Loads()
    yield loads
    loads.release.set()


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as exc:  # noqa: BLE001 -- handed to the test, which asserts on it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def use(pool: ModelPool, name: str) -> Callable[[], object]:
    def work() -> object:
        with pool.use(name) as slot:
            return slot
    return work


def finishes(work: Callable[[], object]) -> list[object]:
    thread, out = in_thread(work)
    join(thread, DEADLINE, "a call that must not block behind a load")
    return out


def test_sweep_status_and_other_models_do_not_wait_behind_a_slow_load(loads: Loads) -> None:
    pool = ModelPool(loads.load, loads.unload, max_loaded=2, keep_alive=300, queue_size=4)
    first, _ = in_thread(use(pool, "big"))
    loads.wait_started(1)
    assert finishes(pool.sweep) == [None]
    assert finishes(pool.status) == [[]]  # a model being loaded is not listed yet
    other, out = in_thread(use(pool, "small"))  # another model starts its own load meanwhile
    loads.wait_started(2)
    loads.release.set()
    join(first, DEADLINE, "the slow load's request")
    join(other, DEADLINE, "the other model's request")
    assert isinstance(out[0], Slot) and sorted(loads.started) == ["big", "small"]


def test_requests_for_a_model_being_loaded_share_its_one_load_and_its_bounded_queue(loads: Loads) -> None:
    pool = ModelPool(loads.load, loads.unload, max_loaded=1, keep_alive=300, queue_size=2)
    threads = [in_thread(use(pool, "m")) for _ in range(3)]
    loads.wait_started(1)
    poll(lambda: _waiting(pool, 2), DEADLINE, "two requests to wait on the load", interval=0.01)
    with pytest.raises(Busy, match="m is loading: 2 request"):
        use(pool, "m")()
    with pytest.raises(Busy, match="1 model"):  # the one place is taken by the load
        use(pool, "other")()
    loads.release.set()
    for thread, _ in threads:
        join(thread, DEADLINE, "a request that shared the load")
    assert loads.started == ["m"]
    assert all(isinstance(out[0], Slot) for _, out in threads)
    assert pool.status()[0]["waiting"] == 0 and not pool.status()[0]["busy"]


def _waiting(pool: ModelPool, count: int) -> bool:
    with pool._mutex:
        loading = pool._loading.get("m")
        return loading is not None and loading.waiting >= count


def test_a_failed_load_fails_every_request_waiting_on_it_and_leaves_no_trace(loads: Loads) -> None:
    pool = ModelPool(loads.load, loads.unload, max_loaded=1, keep_alive=300, queue_size=4)
    loads.fail = RuntimeError("the weights do not match")
    threads = [in_thread(use(pool, "m")) for _ in range(2)]
    loads.wait_started(1)
    loads.release.set()
    for thread, _ in threads:
        join(thread, DEADLINE, "a request on the failed load")
    assert [str(out[0]) for _, out in threads] == ["the weights do not match"] * 2
    assert loads.started == ["m"] and pool.status() == []
    loads.fail = None
    assert isinstance(use(pool, "m")(), Slot)  # the next request tries again


def test_only_idle_models_are_evicted_least_recently_used_first(loads: Loads) -> None:
    loads.release.set()
    clock = iter(range(1000))
    pool = ModelPool(loads.load, loads.unload, max_loaded=2, keep_alive=300, queue_size=4,
                     clock=lambda: float(next(clock)))
    use(pool, "a")()
    use(pool, "b")()
    use(pool, "a")()  # b is now the least recently used
    use(pool, "c")()
    assert loads.unloaded == [("b", "evicted")]
    with pool.use("a"), pool.use("c"), pytest.raises(Busy, match="all in use"):
        use(pool, "d")()


def test_an_unload_that_fails_still_frees_its_place(loads: Loads) -> None:
    loads.release.set()

    def failing_unload(slot: Slot, reason: str) -> None:
        raise OSError("No space left on device")

    pool = ModelPool(loads.load, failing_unload, max_loaded=1, keep_alive=0, queue_size=4)
    use(pool, "a")()
    with pytest.raises(OSError):
        pool.sweep()
    assert pool.status() == []
    assert isinstance(use(pool, "b")(), Slot)


def test_a_model_that_runs_several_at_once_admits_that_many_then_queues_then_refuses(loads: Loads) -> None:
    loads.parallel = 2
    loads.release.set()
    pool = ModelPool(loads.load, loads.unload, max_loaded=1, keep_alive=300, queue_size=1)
    hold, inside = threading.Event(), threading.Semaphore(0)

    def holds() -> object:
        with pool.use("m") as slot:
            inside.release()
            assert hold.wait(DEADLINE)
            return slot

    first, second = in_thread(holds), in_thread(holds)
    for _ in range(2):
        assert inside.acquire(timeout=DEADLINE), "two operations run at once on a model of parallel 2"
    assert pool.status()[0]["running"] == 2
    third = in_thread(holds)
    poll(lambda: pool.status()[0]["waiting"] == 1, DEADLINE, "the third to wait for a place", interval=0.01)
    with pytest.raises(Busy, match="1 request"):
        use(pool, "m")()
    assert not pool.drop_idle("m", "keep_alive"), "a model in use is not unloaded"
    hold.set()
    for thread, out in (first, second, third):
        join(thread, DEADLINE, "an operation")
        assert isinstance(out[0], Slot)
    assert pool.status()[0] | {"expires_in": None} == {"name": "m", "busy": False, "running": 0, "waiting": 0,
                                                      "expires_in": None}

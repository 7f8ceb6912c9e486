"""The air-gap watch: what a running engine knows of its network, and how fresh that knowledge is.

Invariants (fail closed):

* An inference may start only on a fresh, successful check: the last check read the
  network's state and found it isolated (or ``airgap.mode`` is "warn"), and it was made
  within ``stale_after`` seconds. A check that fails for any reason (netlink unreadable, no
  descriptor left, a bug) refuses inferences like a breach until a check succeeds; a watch
  thread that is stuck or dead refuses them too, because its last check goes stale.
* The ledger is told of every change, once: ``airgap.breach`` / ``airgap.restored`` when the
  verdict changes, ``airgap.unobserved`` / ``airgap.observed`` around a span without a
  successful check (however many checks failed in it). Changes wait in the engine's backlog
  (`anticloud.backlog`) until the ledger can take them (a full disk), are written in order,
  and say when they were seen; each tick also lets the backlog record a ledger outage as soon
  as the ledger is writable again, without waiting for a request.
* The watch thread never ends on an error: whatever a tick raises, it ticks again after
  ``interval``. Unloading idle models runs in a thread of its own, so a failing or slow
  unload cannot delay a check.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from anticloud import airgap
from anticloud.backlog import Backlog
from anticloud.errors import AirGapBreached, AirGapUnobserved
from ledger import LedgerError

# A check older than this many intervals (plus slack for a loaded machine) no longer counts.
STALE_INTERVALS, STALE_SLACK = 3, 2.0


@dataclass(frozen=True)
class AirGapState:
    verdict: airgap.AirGap  # the last successful check's
    mode: str
    unobserved: str | None = None  # why the network is not known right now, or None

    @property
    def label(self) -> str:
        if self.unobserved is not None:
            return "warn: network unobserved" if self.mode == "warn" else "unobserved"
        if self.verdict.isolated:
            return "isolated"
        return "warn: network reachable" if self.mode == "warn" else "breached"


class AirGapWatch:
    """The air-gap state of a running engine, the checks that update it, and their records."""

    def __init__(self, verdict: airgap.AirGap, mode: str, backlog: Backlog,
                 clock: Callable[[], float] = time.monotonic, link: airgap.ClusterLink | None = None) -> None:
        self._backlog, self._clock = backlog, clock
        self._link = link  # the guard's one exception, checked again at every tick (`airgap.assess`)
        self._state = AirGapState(verdict, mode)
        self._checked_at = clock()
        self.stale_after: float | None = None  # set while a watch thread runs
        self._failed_checks = 0
        self._failed_since = 0.0
        self._lock = threading.Lock()  # guards the state

    @property
    def state(self) -> AirGapState:
        return self._state

    def set_mode(self, mode: str) -> None:
        """A recorded change of ``airgap.mode``, in force from the next inference on."""
        with self._lock:
            self._state = replace(self._state, mode=mode)

    # -- what a check found ------------------------------------------------------------------------

    def observed(self, network: airgap.NetworkState) -> None:
        """A successful check: record what changed since the last one."""
        verdict = airgap.assess(network, self._link)
        with self._lock:
            was = self._state
            mode = was.mode
            if was.unobserved is not None:
                self._queue("airgap.observed", {"mode": mode, "failed_checks": self._failed_checks,
                                                "unobserved_ms": round((self._clock() - self._failed_since) * 1000)})
                self._failed_checks = 0
            if was.verdict.isolated and not verdict.isolated:
                self._queue("airgap.breach", {"airgap": verdict.to_json(), "mode": mode})
            elif not was.verdict.isolated and verdict.isolated:
                self._queue("airgap.restored", {"mode": mode})
            self._state = AirGapState(verdict, mode)
            self._checked_at = self._clock()

    def failed(self, reason: str) -> None:
        """A check that could not be made: refuse until one can; record the span's start once."""
        with self._lock:
            if self._state.unobserved is None:
                self._failed_since = self._clock()
                self._queue("airgap.unobserved", {"reason": reason[:500], "mode": self._state.mode})
            self._failed_checks += 1
            self._state = replace(self._state, unobserved=reason)

    def _queue(self, kind: str, data: dict[str, Any]) -> None:
        self._backlog.hold(kind, data)

    def tell(self) -> None:
        """Append the changes not yet in the ledger, oldest first (`Backlog.tell`). Raises
        LedgerError; what could not be appended stays held for the next call."""
        self._backlog.tell()

    # -- the gate every inference passes -------------------------------------------------------------

    def allow(self) -> AirGapState:
        """The state to record with an inference; raises if the inference must be refused."""
        stale = self.stale_after is not None and self._clock() - self._checked_at > self.stale_after
        if stale and self._state.unobserved is None:
            # The watch thread is stuck or gone: nobody else will notice, so record it here.
            self.failed(f"no successful check of the network for over {self.stale_after:.0f} s")
            with contextlib.suppress(LedgerError):  # the refusal stands; the record waits for the ledger
                self.tell()
        state = self._state
        if state.mode == "enforce" and state.unobserved is not None:
            raise AirGapUnobserved(f"refusing inference: the network cannot be checked: {state.unobserved}")
        if state.mode == "enforce" and not state.verdict.isolated:
            raise AirGapBreached("refusing inference: a network became reachable: "
                                 + "; ".join(state.verdict.reasons()))
        return state

    # -- the thread ---------------------------------------------------------------------------------------

    def run(self, interval: float, stop: threading.Event, read_state: Callable[[], airgap.NetworkState],
            heal: Callable[[], object]) -> threading.Thread:
        """Check every ``interval`` seconds until ``stop``, in a thread that outlives any error;
        after each check, ``heal`` reopens a failed ledger and writes the backlog."""
        self.stale_after = STALE_INTERVALS * interval + STALE_SLACK
        self._checked_at = self._clock()

        def tick() -> None:
            try:
                self.observed(read_state())
            except Exception as exc:  # noqa: BLE001 -- netlink, descriptors, memory, a bug: whatever it is, refuse
                self.failed(f"{type(exc).__name__}: {exc}".splitlines()[0])
            heal()  # after a full disk: reopen the ledger, then record the outage and what waits

        return every("airgap-watch", interval, stop, tick)


def every(name: str, interval: float, stop: threading.Event, tick: Callable[[], object]) -> threading.Thread:
    """Run ``tick`` every ``interval`` seconds until ``stop``; an error is reported, never fatal."""
    def loop() -> None:
        while not stop.wait(interval):
            try:
                tick()
            except Exception as exc:  # noqa: BLE001 -- a watch that dies would leave a stale verdict in force
                if not isinstance(exc, LedgerError):  # a full ledger is expected, and retried quietly
                    print(f"anticloud: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def sweeper(interval: float, stop: threading.Event, sweep: Callable[[], None]) -> threading.Thread:
    """Unload idle models every ``interval`` seconds, apart from the checks of the network."""
    return every("pool-sweep", interval, stop, sweep)

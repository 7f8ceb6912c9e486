"""Rejected requests, recorded compactly: a flood cannot grow the ledger without bound.

Invariants:

* Every rejected request is counted in the ledger: the first of a kind (identity, path,
  status, reason) in an interval is recorded in full as ``request.rejected``; the repeats are
  counted and written as one ``request.rejected`` with ``count`` and the interval's bounds
  when a later rejection finds the interval over, on `flush` (periodically and when the
  server stops). The sum of ``count`` (1 for a record without one) is the number of rejected
  requests.
* A count whose record could not be written is kept for the next flush, never dropped.
* Past ``max_kinds`` kinds in one interval, every new kind is folded into one per (identity,
  actor, status), with ``*`` for its path and reason: what a client controls (the path, and text
  that reaches the reason, such as a method name or a JSON error's offset) buys no extra
  records, and an interval writes at most ``max_kinds`` records plus two (the first in
  full, then the count) per identity, actor and status. The actor (`anticloud.actor`) is
  derived from the identity and the socket peer's uid, which the kernel gives, not the client.
* Every record names its actor itself: counts are written after their requests are gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ledger import utc_timestamp

Who = tuple[tuple[str, Any], ...]  # the actor (anticloud.actor), hashable: its members in order
Kind = tuple[str, str, int, str, Who]  # identity, path, status, reason, actor
Append = Callable[[dict[str, Any]], None]
MAX_REASON = 500


class RejectionLog:
    def __init__(self, append: Append, interval: float = 60.0, max_kinds: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._append, self.interval, self.max_kinds, self._clock = append, interval, max_kinds, clock
        self._lock = threading.Lock()
        self._started = clock()
        self._since = utc_timestamp()
        self._seen: set[Kind] = set()
        self._repeats: dict[Kind, int] = {}
        self._carried: list[dict[str, Any]] = []  # counts whose record failed: written with the next flush

    def record(self, identity: str, path: str, status: int, reason: str, actor: Mapping[str, Any]) -> None:
        """Count one rejection by ``actor``; write it in full if it is the first of its kind this interval.
        Raises the ledger's error if that record cannot be written (the rejection still stands)."""
        who: Who = tuple(sorted(actor.items()))
        kind: Kind = (identity, path, status, reason[:MAX_REASON], who)
        with self._lock:
            due = self._roll_if_due()
            if kind not in self._seen and len(self._seen) >= self.max_kinds:
                kind = (identity, "*", status, "*", who)
            first = kind not in self._seen
            if first:
                self._seen.add(kind)
            else:
                self._repeats[kind] = self._repeats.get(kind, 0) + 1
        self._write(due)
        if first:
            try:
                self._append(_data(kind))
            except BaseException:  # not written in full: counted instead, for the next flush
                with self._lock:
                    self._repeats[kind] = self._repeats.get(kind, 0) + 1
                raise

    def flush(self, force: bool = False) -> None:
        """Write the counts of an interval that is over (every count, with ``force``)."""
        with self._lock:
            due = self._roll() if force else self._roll_if_due()
        self._write(due)

    def _roll_if_due(self) -> list[dict[str, Any]]:
        return self._roll() if self._clock() - self._started >= self.interval else []

    def _roll(self) -> list[dict[str, Any]]:
        until = utc_timestamp()
        due = self._carried + [{**_data(kind), "count": n, "from": self._since, "until": until}
                               for kind, n in self._repeats.items()]
        self._started, self._since, self._carried = self._clock(), until, []
        self._seen, self._repeats = set(), {}
        return due

    def _write(self, due: list[dict[str, Any]]) -> None:
        for at, data in enumerate(due):
            try:
                self._append(data)
            except BaseException:
                with self._lock:
                    self._carried.extend(due[at:])
                raise


def _data(kind: Kind) -> dict[str, Any]:
    """The record of a kind: its actor is written out, since counts are flushed outside its request."""
    identity, path, status, reason, who = kind
    return {"identity": identity, "path": path, "status": status, "reason": reason, "actor": dict(who)}

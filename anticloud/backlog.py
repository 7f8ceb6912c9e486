"""What the ledger could not take while it failed: held, counted, and recorded once it can.

No record, no operation: while the ledger cannot be written (a full disk, an I/O error, the
file replaced under the writer) every operation is refused. That failure is itself an event
an auditor must be able to see, but it cannot be recorded while it lasts. One rule covers
everything the failure leaves unrecorded:

* changes the running engine observed on its own (the air gap, the clock) wait here, oldest
  first, each saying when it was seen (``seen_at``); past `MAX_HELD` the oldest are dropped
  and counted, so a long failure cannot grow memory without bound;
* every operation refused for want of a record, and every failure seen, is counted into one
  outage: when it was first and last seen, the first error, the last one if it differs;
* once the ledger takes records again, `Backlog.tell` writes ``ledger.outage`` first, then the
  held changes in order. Whatever could not be written stays for the next `tell`; counts that
  arrive while a `tell` is writing are kept for the next outage record, never lost.

The counting (`Outage`) is pure; `Backlog` adds the lock and the append it is given.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ledger import LedgerCorruptError, LedgerError, LedgerReadError, LedgerWriteError, utc_timestamp

OUTAGE = "ledger.outage"
MAX_HELD = 64  # changes held while the ledger cannot be written; older ones are counted, not kept
# The errors that mean the ledger file cannot take records, as opposed to one record's own fault
# (EncodingError) or a retry signal: only these open or extend an outage.
OUTAGE_ERRORS = (LedgerWriteError, LedgerReadError, LedgerCorruptError)

Append = Callable[[str, dict[str, Any]], object]


@dataclass(frozen=True, slots=True)
class Outage:
    """A span in which the ledger could not be written, as far as the appliance saw it."""

    since: str  # the first failure seen
    until: str  # the last failure seen
    error: str  # the first failure's error
    last_error: str
    refused: int = 0  # operations refused for want of a record
    dropped: int = 0  # held changes dropped, oldest first, past MAX_HELD
    failures: int = 0  # failures seen: refused operations, failed writes of held changes, failed reopens

    def seen(self, at: str, error: str | None, refused: int = 0, dropped: int = 0) -> Outage:
        """This outage, extended by a failure seen ``at`` (``error`` None: no failure, only a count)."""
        failed = error is not None
        return replace(self, until=at, last_error=error if error is not None else self.last_error,
                       refused=self.refused + refused, dropped=self.dropped + dropped,
                       failures=self.failures + failed)

    def after(self, told: Outage) -> Outage | None:
        """What is left of this outage once ``told`` (an earlier copy of it) was recorded: the
        counts that arrived meanwhile, or None if there were none."""
        if (self.failures, self.refused, self.dropped) == (told.failures, told.refused, told.dropped):
            return None
        return Outage(told.until, self.until, self.last_error, self.last_error, self.refused - told.refused,
                      self.dropped - told.dropped, self.failures - told.failures)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"from": self.since, "until": self.until, "error": self.error,
                                "refused": self.refused, "dropped": self.dropped, "failures": self.failures}
        if self.last_error != self.error:
            data["last_error"] = self.last_error
        return data


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the ledger cannot take records (rather than that one record was bad)."""
    return isinstance(exc, OUTAGE_ERRORS)


def _line(error: BaseException | str) -> str:
    text = str(error).strip()
    if isinstance(error, BaseException):
        text = text or type(error).__name__
    return text.splitlines()[0][:500] if text else "unknown"


class Backlog:
    """The changes and counts the ledger owes, recorded by `tell` as soon as it takes them."""

    def __init__(self, append: Append, limit: int = MAX_HELD, now: Callable[[], str] = utc_timestamp) -> None:
        self.append, self.limit, self._now = append, limit, now
        self._held: deque[tuple[str, dict[str, Any]]] = deque()
        self._outage: Outage | None = None
        self._lock = threading.Lock()  # guards the queue and the outage
        self._telling = threading.Lock()  # one writer of the backlog at a time, in order

    @property
    def outage(self) -> Outage | None:
        """The outage not yet recorded, if any."""
        return self._outage

    @property
    def pending(self) -> bool:
        return self._outage is not None or bool(self._held)

    def hold(self, kind: str, data: dict[str, Any]) -> None:
        """Keep a change to record, stamped with when it was seen (`tell` writes it)."""
        with self._lock:
            if len(self._held) >= self.limit:
                self._held.popleft()
                self._count(None, dropped=1)
            self._held.append((kind, {**data, "seen_at": self._now()}))

    def failed(self, error: BaseException | str, refused: bool = False) -> None:
        """A failure of the ledger, seen now; with ``refused``, an operation refused because of it.
        An error that is not an outage (`is_outage`) is not counted."""
        if isinstance(error, BaseException) and not is_outage(error):
            return
        with self._lock:
            self._count(_line(error), refused=int(refused))

    def _count(self, error: str | None, refused: int = 0, dropped: int = 0) -> None:
        at = self._now()
        first = error or "held changes were dropped while the ledger could not be written"
        self._outage = (self._outage or Outage(at, at, first, first)).seen(at, error, refused, dropped)

    def tell(self) -> None:
        """Record the outage (if any), then the held changes, oldest first. Raises LedgerError;
        what could not be recorded stays for the next call, and the failure is counted."""
        with self._telling:
            try:
                self._tell_outage()
                self._tell_held()
            except LedgerError as exc:
                self.failed(exc)
                raise

    def _tell_outage(self) -> None:
        told = self._outage
        if told is None:
            return
        self.append(OUTAGE, told.to_json())
        with self._lock:
            assert self._outage is not None  # only a tell, under _telling, clears it
            self._outage = self._outage.after(told)

    def _tell_held(self) -> None:
        while True:
            with self._lock:
                if not self._held:
                    return
                kind, data = self._held[0]
            self.append(kind, data)
            with self._lock:
                if self._held and self._held[0][0] == kind and self._held[0][1] is data:
                    self._held.popleft()

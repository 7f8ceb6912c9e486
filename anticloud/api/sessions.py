"""Console sessions: a person's token exchanged once for an HttpOnly cookie, ended by the person
(sign-out, lock), by idleness, or by the token's revocation.

Invariants:

* The token itself is never kept: a session holds the token's name and short id, and is checked
  against the live tokens on every use, so revoking the token ends its sessions at once.
* The cookie's value is 32 random bytes; the store keeps only its SHA3-256, so nothing in memory
  (or a core dump) can be replayed as a cookie, and a lookup is by digest, not by comparing secrets.
* A session unused for ``idle_timeout`` seconds is over: the next request through it is refused
  (401), and the sweep names it so that its end is recorded (``session.end``, reason "idle").
* Pure over a clock passed in: no I/O here; the console routes record what happens.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "anticloud_session"


def _digest(value: str) -> str:
    return hashlib.sha3_256(value.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    """One signed-in person: whose token, since when, and when last used (monotonic seconds)."""

    ident: str  # the first 12 hex digits of the cookie's digest: what records name
    person: str
    token_id: str
    started: float
    last_used: float


class Sessions:
    """The live sessions of one server."""

    def __init__(self, idle_timeout: Callable[[], float], clock: Callable[[], float]) -> None:
        self.idle_timeout, self.clock = idle_timeout, clock
        self._by_digest: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, person: str, token_id: str) -> tuple[str, Session]:
        """A new session for ``person``; returns the cookie's value (given to the browser only) and the session."""
        value = secrets.token_urlsafe(32)
        digest, now = _digest(value), self.clock()
        session = Session(digest[:12], person, token_id, now, now)
        with self._lock:
            self._by_digest[digest] = session
        return value, session

    def use(self, value: str, live: Callable[[Session], bool]) -> tuple[Session | None, str | None]:
        """The session of cookie ``value``, marked used now, and None; or the session it was and
        why it ended just now ("idle", "token revoked"); or (None, None) for a cookie naming none."""
        digest, now = _digest(value), self.clock()
        with self._lock:
            session = self._by_digest.get(digest)
            if session is None:
                return None, None
            if now - session.last_used > self.idle_timeout():
                return self._by_digest.pop(digest), "idle"
            if not live(session):
                return self._by_digest.pop(digest), "token revoked"
            session.last_used = now
            return session, None

    def end(self, value: str) -> Session | None:
        with self._lock:
            return self._by_digest.pop(_digest(value), None)

    def sweep(self) -> list[Session]:
        """Remove and return the sessions idle past the timeout (their ends are still to be recorded)."""
        now, limit = self.clock(), self.idle_timeout()
        with self._lock:
            over = [d for d, s in self._by_digest.items() if now - s.last_used > limit]
            return [self._by_digest.pop(d) for d in over]

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._by_digest.values())

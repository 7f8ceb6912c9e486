"""Console sessions: a person's token exchanged once for an HttpOnly cookie, ended by the person
(sign-out, lock), by idleness, or by the token's revocation.

Invariants:

* The token itself is never kept: a session holds the token's name and short id, and is checked
  against the live tokens on every use, so revoking the token ends its sessions at once.
* A session has two secrets, both needed on every request: the cookie (HttpOnly, so no script
  reads it) and a key the page holds in memory and sends as ``X-Anticloud-Session``. Browsers do
  not keep cookies apart by port, so any other server on the loopback may be sent the cookie; it
  cannot be sent the key, which only this origin's page ever holds. The store keeps the SHA3-256
  of each, never the secrets: a lookup is by the cookie's digest, the key's compared in constant time.
* A session unused for ``idle_timeout`` seconds is over: the next request through it is refused
  (401), and the sweep names it so that its end is recorded (``session.end``, reason "idle").
* Pure over a clock passed in: no I/O here; the console routes record what happens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "anticloud_session"
KEY_HEADER = "x-anticloud-session"


def _digest(value: str) -> str:
    return hashlib.sha3_256(value.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    """One signed-in person: whose token, since when, and when last used (monotonic seconds)."""

    ident: str  # the first 12 hex digits of the cookie's digest: what records name
    key_digest: str  # of the key the page sends beside the cookie
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

    def start(self, person: str, token_id: str) -> tuple[str, str, Session]:
        """A new session for ``person``: the cookie's value and the page's key (given to the browser
        only), and the session."""
        value, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        digest, now = _digest(value), self.clock()
        session = Session(digest[:12], _digest(key), person, token_id, now, now)
        with self._lock:
            self._by_digest[digest] = session
        return value, key, session

    def use(self, value: str, key: str, live: Callable[[Session], bool]) -> tuple[Session | None, str | None]:
        """The session of cookie ``value`` and page key ``key``, marked used now, and None; or the
        session it was and why it ended just now ("idle", "token revoked"); or (None, None) for a
        cookie naming no session, or a key that is not its own."""
        digest, now = _digest(value), self.clock()
        with self._lock:
            session = self._by_digest.get(digest)
            if session is None or not hmac.compare_digest(session.key_digest, _digest(key)):
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

"""Connections: how many at once, how long one may sit idle, and how to cut one off.

Invariants:

* At most ``limit()`` connections are open at once: past it a request is answered 503
  (uvicorn's ``limit_concurrency``) and a new connection is closed as soon as it is accepted.
  The limit is what RLIMIT_NOFILE leaves after `RESERVE` descriptors kept for the
  appliance's own work (the air-gap watch's netlink socket, the ledger, model files) and for
  the connections accepted past the limit and not yet closed, so no number of clients can
  starve the watch of a descriptor, nor the server of the one it accepts with.
* A connection that has not begun a request within ``timeout_keep_alive`` seconds is
  closed; uvicorn itself only times out connections that already served one.
* A request can find its connection's abort (`current_abort`): a stream whose reader stopped
  reading has a full send buffer, which closing gracefully would wait on for ever.
"""

from __future__ import annotations

import contextvars
import resource
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from anticloud.errors import EngineRefused

BACKLOG = 16  # the listen queue, and how many connections asyncio accepts in one turn of the loop
# A connection past the limit still holds a descriptor from its accept until its abort closes it,
# four turns of the loop later (accept; the task that builds its transport; connection_made;
# connection_lost). A flood keeps that many batches in flight, so the reserve covers them beside
# the appliance's own descriptors; with BACKLOG 128 a flood ran the process out of descriptors,
# and asyncio then stops accepting for a second at a time.
ACCEPT_TURNS = 4
OWN = 64  # the ledger, the watch's netlink socket, model files, pipes
RESERVE = OWN + ACCEPT_TURNS * BACKLOG  # descriptors no client can take
MAX_CONNECTIONS = 1024  # enough for a team on one machine; each connection costs memory too
MIN_CONNECTIONS = 8
IDLE_TIMEOUT = 5  # seconds: a fresh connection's wait for its request, and keep-alive between requests

_ABORT: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("anticloud_abort", default=None)


def limit() -> int:
    """Raise the soft descriptor limit to the hard one and return the connections allowed within it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the reserve is taken from it
    allowed = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else min(MAX_CONNECTIONS, soft - RESERVE)
    if allowed < MIN_CONNECTIONS:
        raise EngineRefused(f"refusing to start: {soft} file descriptors allowed (ulimit -n); the appliance keeps "
                            f"{RESERVE} for itself and needs {MIN_CONNECTIONS} more for connections")
    return allowed


def current_abort() -> Callable[[], None] | None:
    """Within a request: close its connection at once, discarding what is still to be sent."""
    return _ABORT.get()


def bounded(base: type[H11Protocol]) -> type[H11Protocol]:
    """uvicorn's HTTP protocol ``base`` (the one that identifies the peer) with the bounds above."""

    class BoundedProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
                transport.abort()  # its descriptor is back at once; the request would only get a 503
                return
            self.loop.call_later(self.timeout_keep_alive, self._close_if_no_request)
            self.app = _WithAbort(self.app, transport.abort)  # type: ignore[has-type]

        def _close_if_no_request(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return BoundedProtocol


class _WithAbort:
    def __init__(self, app: Any, abort: Callable[[], None]) -> None:
        self.app, self.abort = app, abort

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        token = _ABORT.set(self.abort)
        try:
            await self.app(scope, receive, send)
        finally:
            _ABORT.reset(token)

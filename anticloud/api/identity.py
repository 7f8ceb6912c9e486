"""Who is asking on the unix socket: the peer's real uid, or no uid identity at all (fail closed).

The kernel translates a peer's credentials (SO_PEERCRED) into the user namespace of the
process that *reads* them. Inside ``--isolate``'s namespace, which maps only the operator,
everyone else reads as the overflow uid (65534) and the operator as 0: recording those would
put every other person's requests under one wrong name. So the uid is established in one of
two ways, and anything else is refused rather than mis-attributed:

* `CredentialOracle`: under ``--isolate``, the launcher stays in the initial user namespace
  (anticloud.isolation, anticloud.peercred). For each accepted connection the engine passes the connection's
  descriptor to it over a socketpair (SCM_RIGHTS); it reads SO_PEERCRED there, where the
  uid is the real one, and answers. If it cannot answer, the connection has no uid identity.
* `LocalCredentials`: anywhere else, SO_PEERCRED read here, translated through this
  process's ``uid_map`` to the parent namespace; identical in the initial namespace. A uid
  the map does not hold (the overflow uid) is no identity.

uvicorn does not pass the connection's socket to the application, so a thin subclass of its
HTTP protocol establishes the uid when the connection is made and adds it, or the reason it
could not, to the scope of every request on it (``PEER_UID`` or ``PEER_PROBLEM``).
"""

from __future__ import annotations

import socket
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from anticloud.errors import IdentityUnavailable
from anticloud.peercred import Credentials, LocalCredentials

PEER_UID = "anticloud.peer_uid"
PEER_PROBLEM = "anticloud.peer_problem"


def peer_protocol(credentials: Credentials) -> type[H11Protocol]:
    """uvicorn's HTTP protocol, adding the peer's real uid (or why there is none) to every request's scope."""

    class PeerCredProtocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                try:
                    self.app = _WithPeer(self.app, credentials.uid_of(sock))
                except (IdentityUnavailable, OSError) as exc:
                    self.app = _WithPeer(self.app, None, f"the caller's uid cannot be established: {exc}")

    return PeerCredProtocol


class _WithPeer:
    """Adds the peer's uid, or the reason it is unknown, to every request's scope."""

    def __init__(self, app: Any, uid: int | None, problem: str | None = None) -> None:
        self.app = app
        self.extra: dict[str, Any] = {PEER_UID: uid} if problem is None else {PEER_PROBLEM: problem}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, **self.extra}, receive, send)


PeerCredProtocol = peer_protocol(LocalCredentials())

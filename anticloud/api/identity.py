"""Who is asking: the peer's uid on the unix socket (SO_PEERCRED), or a per-person bearer token.

uvicorn does not pass the connection's socket to the application, so a thin subclass of its
HTTP protocol reads the peer's credentials when the connection is made and adds them to the
scope of every request on it.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

PEER_UID = "anticloud.peer_uid"
_UCRED = struct.Struct("3i")  # pid, uid, gid


class PeerCredProtocol(H11Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            self.app = _WithPeer(self.app, uid)


class _WithPeer:
    def __init__(self, app: Any, uid: int) -> None:
        self.app, self.uid = app, uid

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app({**scope, PEER_UID: self.uid}, receive, send)

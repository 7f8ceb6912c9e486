"""Where the link's connections arrive: a listening socket whose every connection is served on a
thread of its own, and remembered until it ends so that another thread can cut it off (a
breach, a shutdown). Used by both ends of the link (`relay.Tunnel`, `relay.Gate`)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from anticloud.cluster.stream import PlainStream
from anticloud.errors import ClusterError

__all__ = ["Connection", "Listener", "show"]

JOIN_SECONDS = 10.0


class Connection:
    """The sockets of one accepted connection, so that another thread can cut them all off."""

    def __init__(self, sock: socket.socket) -> None:
        self._lock = threading.Lock()
        self._sockets = [sock]
        self._cut = False
        self.reason: str | None = None  # why it ended, once known: the first of a cut and `settle`

    def add(self, sock: socket.socket) -> None:
        """Another socket of the connection's (the one to the RPC server, say); cut at once if
        the connection already is."""
        with self._lock:
            self._sockets.append(sock)
            cut = self._cut
        if cut:
            PlainStream(sock).abort()

    def cut(self, reason: str) -> None:
        with self._lock:
            self._cut = True
            self.reason = self.reason or reason
            sockets = list(self._sockets)
        for sock in sockets:
            PlainStream(sock).abort()

    def settle(self, reason: str) -> str:
        """Why the connection ended: ``reason``, unless it was cut off first."""
        with self._lock:
            self.reason = self.reason or reason
            return self.reason


class Listener:
    """A listening socket whose connections are each served on a thread of their own and
    remembered until they end."""

    def __init__(self, address: tuple[str, int], serve: Callable[[Connection, socket.socket, str], None]):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            self._socket = socket.create_server(address, family=family)
        except OSError as exc:
            raise ClusterError(f"cannot listen on {show(address)}: {exc.strerror}") from None
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._serve = serve
        self._lock = threading.Lock()
        self._open: dict[Connection, threading.Thread] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"listener {show(self.address)}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, address = self._socket.accept()
            except OSError:
                self._closing.wait(0.1)  # out of descriptors, say: do not spin
                continue
            connection = Connection(sock)
            thread = threading.Thread(target=self._run, args=(connection, sock, address[0]), daemon=True)
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    return
                self._open[connection] = thread
            thread.start()

    def _run(self, connection: Connection, sock: socket.socket, peer: str) -> None:
        try:
            self._serve(connection, sock, peer)
        finally:
            sock.close()
            with self._lock:
                self._open.pop(connection, None)

    def cut_all(self, reason: str) -> None:
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            connection.cut(reason)

    def close(self, reason: str) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._socket.close()
        self._thread.join(JOIN_SECONDS)
        self.cut_all(reason)
        with self._lock:
            threads = list(self._open.values())
        for thread in threads:
            thread.join(JOIN_SECONDS)


def show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

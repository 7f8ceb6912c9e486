"""The server's sockets: its unix socket, created 0660 from its first instant and never at the cost
of another file, and loopback TCP sockets bound here or handed over by whoever started the engine.

Invariants: `bind_unix` removes what is at the path only if it is a socket that no server
answers on (a stale one left by a crash); a regular file (the ledger, say), a directory or a
live socket is refused with one line. The socket is created under a umask that leaves it
0660, so nobody outside its owner and group can connect even for an instant. Its group is
the server's, or the directory's when that directory is setgid: that is how a group of
people is given the socket (README, "The HTTP API"). `remove_if_ours` removes it at the end
only if the path still names the socket this server made.

A TCP socket reaches an engine that has no network of its own (``--isolate``, or systemd's
``PrivateNetwork=yes``) by being bound *outside* its namespace and handed over already
listening: by systemd (socket activation, sd_listen_fds(3): ``LISTEN_PID``, ``LISTEN_FDS``,
descriptors from 3) or by ``serve --isolate --port``'s launcher (`HANDED_ENV`). A socket stays
in the namespace it was created in, so the engine can accept connections from the host's
loopback on it and nothing more: it cannot open a connection anywhere. `adopt` refuses any
handed socket that is not a listening stream socket on a loopback address or a unix path.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from anticloud.api import loopback_only
from anticloud.errors import EngineRefused
from anticloud.isolation import HANDED_ENV

SOCKET_MODE = 0o660
SD_LISTEN_FDS_START = 3


def check_path(path: Path) -> None:
    """Raise EngineRefused unless ``path`` is free, or holds a socket nobody answers on (which it removes)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EngineRefused(f"refusing to listen on {path}: it exists and is not a socket; choose another --uds path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:  # stale: nothing listens on it any more
            path.unlink()
            return
        except OSError as exc:
            raise EngineRefused(f"refusing to listen on {path}: cannot tell whether it is in use "
                                f"({exc.strerror or exc})") from None
    raise EngineRefused(f"refusing to listen on {path}: a server is answering on it")


@dataclass
class UnixListener:
    """A listening unix socket and what is needed to remove exactly it at the end."""

    sock: socket.socket
    path: Path
    inode: int

    def close(self) -> None:
        self.sock.close()
        remove_if_ours(self.path, self.inode)


def bind_unix(path: Path) -> UnixListener:
    """A unix socket bound at ``path`` with mode 0660, already listening.

    Listening at once keeps "the socket file exists" meaning "connections are accepted" (they
    wait in the backlog until the server takes them), as clients and tests rely on.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(str(path))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(previous)
    return UnixListener(sock, path, os.lstat(path).st_ino)


def remove_if_ours(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still the socket this server bound (and not something put there since)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        path.unlink(missing_ok=True)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (a loopback address), or EngineRefused in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise EngineRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def handed() -> list[socket.socket]:
    """The listening sockets this process was handed (systemd's, or the launcher's), each checked by
    `adopt`. The variables are removed, so the engine's own children inherit nothing."""
    fds: list[int] = []
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        count = os.environ.get("LISTEN_FDS", "0")
        fds += range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + (int(count) if count.isdigit() else 0))
    fds += [int(fd) for fd in os.environ.get(HANDED_ENV, "").split(",") if fd.isdigit()]
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", HANDED_ENV):
        os.environ.pop(name, None)
    return [adopt(fd) for fd in fds]


def adopt(fd: int) -> socket.socket:
    """The socket at ``fd`` if it is a listening stream socket on loopback or a unix path, else EngineRefused."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise EngineRefused(f"descriptor {fd}, handed over to listen on, is not a socket: {exc.strerror}") from None
    os.set_inheritable(fd, False)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        raise EngineRefused(f"descriptor {fd}, handed over to listen on, is not a listening stream socket")
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not loopback_only(str(sock.getsockname()[0])):
        where = describe(sock)
        sock.close()
        raise EngineRefused(f"refusing the socket handed over on {where}: the appliance listens on loopback only")
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        sock.close()
        raise EngineRefused(f"descriptor {fd}, handed over to listen on, is neither TCP nor a unix socket")
    return sock


def describe(sock: socket.socket) -> str:
    """Where ``sock`` listens, for people: ``http://127.0.0.1:11434`` or ``unix socket PATH``."""
    if sock.family == socket.AF_UNIX:
        return f"unix socket {sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"

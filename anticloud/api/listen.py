"""The server's unix socket: created 0660 from its first instant, and never at the cost of another file.

Invariants: `bind_unix` removes what is at the path only if it is a socket that no server
answers on (a stale one left by a crash); a regular file (the ledger, say), a directory or a
live socket is refused with one line. The socket is created under a umask that leaves it
0660, so nobody outside its owner and group can connect even for an instant. Its group is
the server's, or the directory's when that directory is setgid: that is how a group of
people is given the socket (README, "The HTTP API"). `remove_if_ours` removes it at the end
only if the path still names the socket this server made.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from anticloud.errors import EngineRefused

SOCKET_MODE = 0o660


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

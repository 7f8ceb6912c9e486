"""A unix socket peer's real uid, across user namespaces: the rules and the credential oracle.

The kernel translates a peer's credentials (SO_PEERCRED) into the user namespace of the
process that reads them, so a process inside a namespace that maps few uids cannot see most
callers' real uid. `translate` is the pure rule for one hop out of a namespace;
`LocalCredentials` applies it here; `CredentialOracle` asks a process in the initial user
namespace (the ``--isolate`` launcher, which runs `answer_oracle_questions`) instead. The
oracle's wire format: the engine sends one byte with one descriptor (SCM_RIGHTS) over a
SOCK_SEQPACKET socketpair; the answer is SO_PEERCRED's 12 bytes (pid, uid, gid as native
ints), or anything else for "unknown". Nothing here imports the web server.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Protocol

from anticloud.errors import IdentityUnavailable

UCRED = struct.Struct("3i")  # pid, uid, gid: SO_PEERCRED's layout, and the oracle's answer
ORACLE_TIMEOUT = 5.0


class Credentials(Protocol):
    def uid_of(self, conn: Any) -> int:
        """The real uid of the process at the other end of unix socket ``conn``; IdentityUnavailable if unknown."""
        ...


def translate(uid: int, uid_map: str) -> int | None:
    """The uid in the parent namespace of ``uid`` as seen here, from ``/proc/self/uid_map`` text. Pure."""
    for line in uid_map.splitlines():
        inside, outside, count = (int(x) for x in line.split())
        if inside <= uid < inside + count:
            return outside + uid - inside
    return None


def real_uid(uid: int | None = None) -> int:
    """This process's uid (or ``uid``, as seen here) in the parent user namespace."""
    uid = os.getuid() if uid is None else uid
    translated = translate(uid, Path("/proc/self/uid_map").read_text())
    if translated is None:
        raise IdentityUnavailable(f"uid {uid} has no mapping outside this user namespace")
    return translated


class LocalCredentials:
    """SO_PEERCRED read in this process, translated out of its user namespace."""

    def __init__(self, uid_map: str | None = None) -> None:
        self._uid_map = uid_map

    def uid_of(self, conn: Any) -> int:
        _pid, uid, _gid = UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))
        uid_map = self._uid_map if self._uid_map is not None else Path("/proc/self/uid_map").read_text()
        translated = translate(uid, uid_map)
        if translated is None:
            raise IdentityUnavailable(f"uid {uid} as seen here has no mapping outside the engine's user namespace")
        return translated


class CredentialOracle:
    """Asks the launcher, in the initial user namespace, for a connection's real uid."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._channel.settimeout(ORACLE_TIMEOUT)
        self._lock = threading.Lock()  # one question and its answer at a time
        self._broken = False

    def uid_of(self, conn: Any) -> int:
        try:
            with self._lock:
                if self._broken:
                    raise IdentityUnavailable("the credential oracle stopped answering earlier")
                try:
                    socket.send_fds(self._channel, [b"?"], [conn.fileno()])
                    answer = self._channel.recv(UCRED.size + 1)
                except OSError:
                    # A late answer would pair with the next question: never ask this channel again.
                    self._broken = True
                    self._channel.close()
                    raise
        except OSError as exc:
            raise IdentityUnavailable(f"the credential oracle did not answer ({exc.strerror or exc})") from None
        if len(answer) != UCRED.size:
            raise IdentityUnavailable("the credential oracle could not read it")
        _pid, uid, _gid = UCRED.unpack(answer)
        return int(uid)


def answer_oracle_questions(channel: socket.socket) -> None:
    """The launcher's side: answer each descriptor received with its SO_PEERCRED, until the engine closes."""
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(channel, 16, 1)
        except OSError:
            return
        if not message:
            return
        answer = b"!"  # anything but UCRED.size bytes means "unknown"
        for fd in fds:
            try:
                peer = socket.socket(fileno=fd)
            except OSError:  # not a socket
                os.close(fd)
                continue
            with peer:
                try:
                    if peer.family == socket.AF_UNIX:
                        answer = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
                except OSError:
                    pass
        try:
            channel.send(answer)
        except OSError:
            return

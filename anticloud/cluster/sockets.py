"""Whose is a loopback TCP socket? Read from the kernel's tables, never by connecting to it.

Any local process can connect to a loopback port, or take one that is free. The link's two
loopback ends are therefore checked against this process's own descriptors: the tunnel
carries only connections that llama.cpp in this process made, and the gate hands sessions
only to an RPC server that this process listens with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"
CONNECTED = "connected"  # any state but listening: a connection's end, however far its close has gone
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


@dataclass(frozen=True, slots=True)
class Entry:
    local: str  # "0100007F:C3D5"
    state: str
    inode: int


def parse(table: str) -> list[Entry]:
    """The entries of a /proc/net/tcp table. Pure."""
    found = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9:
            found.append(Entry(fields[1], fields[3], int(fields[9])))
    return found


def held(entries: list[Entry], port: int, state: str, inodes: set[int]) -> bool:
    """Whether 127.0.0.1:``port`` in ``state`` (`LISTEN` or `CONNECTED`) is a socket among ``inodes``. Pure."""
    wanted = f"{LOOPBACK}:{port:04X}"
    return any(e.local == wanted and e.inode in inodes
               and (e.state != LISTEN if state == CONNECTED else e.state == state) for e in entries)


def own_inodes() -> set[int]:
    """The socket inodes of this process's open descriptors."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def ours(port: int, state: str, table: Path = Path("/proc/net/tcp")) -> bool:
    """Whether this process holds 127.0.0.1:``port`` (listening, or the local end of a connection)."""
    return held(parse(table.read_text()), port, state, own_inodes())


def listening(port: int, table: Path = Path("/proc/net/tcp")) -> bool:
    """Whether anyone listens on 127.0.0.1:``port``."""
    wanted = f"{LOOPBACK}:{port:04X}"
    return any(e.local == wanted and e.state == LISTEN for e in parse(table.read_text()))

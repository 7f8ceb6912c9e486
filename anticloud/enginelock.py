"""One engine per home: an exclusive ``flock`` on ``HOME/engine.lock``, held for the engine's life.

Invariants:

* `acquire` is the first thing an engine does with a home, before any start record or the
  scan that closes a crashed engine's open inferences: a second engine on the same home
  would otherwise record the first one's running inferences as interrupted. The lock is held
  by the process that runs the engine (under ``--isolate``, the namespaced child, never the
  launcher), and the kernel drops it when that process ends, however it ends.
* Who holds the lock is read from the kernel, never from a file someone could leave behind:
  `holder` takes the pids that ``/proc/locks`` lists on the lock's inode and keeps the one
  with an open descriptor on this very path carrying that lock. A pid file is therefore only
  a claim; `anticloud stop` signals a pid only if `holder` proves it is this home's engine.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from anticloud.errors import EngineRunning
from anticloud.home import Home


class EngineLock:
    """The held lock; `release` (or the process's end) lets the next engine start."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def acquire(home: Home) -> EngineLock:
    """Take this home's engine lock without waiting, or raise EngineRunning naming the holder."""
    path = home.engine_lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        # Only to name it: from inside another user namespace the holder's descriptors cannot be read.
        pid = holder(home, prove=False)
        who = f"another engine (pid {pid})" if pid is not None else "another engine"
        raise EngineRunning(f"refusing to start: {who} is running on {home.root}; stop it with `anticloud stop` "
                            "or send it your requests", pid) from None
    except BaseException:
        os.close(fd)
        raise
    return EngineLock(fd)


def flock_pids(table: str, inode: int) -> list[int]:
    """The pids holding (not waiting for) an exclusive flock on ``inode`` in ``/proc/locks`` text. Pure.

    The device column is left out on purpose: on btrfs and overlayfs it need not match what
    stat reports, and `holder` proves the path through the pid's own descriptors instead.
    """
    pids = []
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4143 fe:00:2149812 0 EOF"; a waiter has "->" after the number.
        if len(fields) < 6 or fields[1:4] != ["FLOCK", "ADVISORY", "WRITE"]:
            continue
        device_inode = fields[5].rsplit(":", 1)
        if len(device_inode) == 2 and device_inode[1] == str(inode) and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def holder(home: Home, prove: bool = True) -> int | None:
    """The pid of this home's running engine, proven from the kernel's own tables, or None.

    ``prove=False`` trusts the inode match in /proc/locks alone: enough to name a holder in a
    message, never to signal one.
    """
    path = home.engine_lock
    try:
        inode = path.stat().st_ino
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    target = os.path.realpath(path)
    return next((pid for pid in flock_pids(table, inode) if not prove or _holds(pid, target)), None)


def _holds(pid: int, target: str) -> bool:
    """Whether ``pid`` has ``target`` open with an exclusive flock on that descriptor."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != target:
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        # "lock:\t1: FLOCK  ADVISORY  WRITE 4143 fe:00:2149812 0 EOF": the locks this descriptor owns.
        if any(line.split()[2:5] == ["FLOCK", "ADVISORY", "WRITE"] for line in info.splitlines()
               if line.startswith("lock:")):
            return True
    return False

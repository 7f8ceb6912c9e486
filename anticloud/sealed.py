"""Sealed in-memory copies of files: bytes that nobody, root included, can change while they are held.

A model's weights are copied once from the store into a memfd, which is then sealed
(``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``). From then on the kernel
refuses every write, truncation, growth and writable shared mapping of it, through any
descriptor or ``/proc/PID/fd/N`` path, and refuses to lift the seals. The caller hashes the
sealed copy, not the file it came from, so the digest is of the very pages llama.cpp maps.

Invariants:

* A copy larger than the memory this process may still fill (``MemAvailable``, bounded by
  its cgroup's limit) is refused with ``ENOMEM`` before any is reserved: reserving shared
  memory past that point is answered by the OOM killer, not by an error.
* The memory is reserved before anything is read (``posix_fallocate``): a copy that does
  not fit fails at once with ``OSError``, before llama.cpp could fault on a missing page.
* The size is sealed before the copy, the content after it; sealing the content fails
  (EBUSY) if any writable mapping of the memfd exists anywhere, so no writer outlives it.
* A source that ends early is an error, never a shorter copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_NAMES = ((fcntl.F_SEAL_WRITE, "write"), (fcntl.F_SEAL_SHRINK, "shrink"), (fcntl.F_SEAL_GROW, "grow"),
          (fcntl.F_SEAL_SEAL, "seal"))
_CHUNK = 1 << 30  # sendfile moves at most ~2 GiB per call


class ShortSource(OSError):
    """The source file ended before the size it was expected to have."""


def room(meminfo: str, limit: str | None, usage: str | None) -> int | None:
    """Bytes that may still be filled, from /proc/meminfo's text and the cgroup's limit and usage
    (None where unknown, or ``max``). Pure."""
    found = [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    if limit is not None and usage is not None and limit.strip().isdigit() and usage.strip().isdigit():
        found.append(max(0, int(limit) - int(usage)))
    return min(found) if found else None


def memory_room() -> int | None:
    """`room` for this process: cgroup v2's memory.max, else v1's limit_in_bytes."""
    def read(path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    meminfo = read(Path("/proc/meminfo")) or ""
    for line in (read(Path("/proc/self/cgroup")) or "").splitlines():
        hierarchy, controllers, where = line.split(":", 2)
        base = (Path("/sys/fs/cgroup") if hierarchy == "0" and not controllers else
                Path("/sys/fs/cgroup/memory") if "memory" in controllers.split(",") else None)
        if base is None:
            continue
        group = base / where.lstrip("/")
        v2 = hierarchy == "0"
        limit = read(group / ("memory.max" if v2 else "memory.limit_in_bytes"))
        usage = read(group / ("memory.current" if v2 else "memory.usage_in_bytes"))
        if limit is not None:
            return room(meminfo, limit, usage)
    return room(meminfo, None, None)


def sealed_copy(src: int, size: int, label: str) -> int:
    """Copy bytes ``[0, size)`` of ``src`` into a new memfd, seal it and return its descriptor."""
    free = memory_room()
    if free is not None and size > free:
        raise OSError(errno.ENOMEM, f"{size} bytes do not fit in the {free} bytes of memory available")
    fd = os.memfd_create(label, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        copied = 0
        while copied < size:  # in the kernel, page cache to memfd: no user-space buffer
            n = os.sendfile(fd, src, copied, min(_CHUNK, size - copied))
            if n == 0:
                raise ShortSource(f"the file ended at byte {copied} of {size} while it was copied")
            copied += n
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def seals_of(fd: int) -> list[str]:
    """The seals the kernel reports on ``fd`` (not the ones we meant to set), by name."""
    held = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    return [name for bit, name in _NAMES if held & bit]


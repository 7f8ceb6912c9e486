"""Sealed in-memory copies of files: bytes that nobody, root included, can change while they are held.

A model's weights are copied once from the store into a memfd, which is then sealed
(``F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``). From then on the kernel
refuses every write, truncation, growth and writable shared mapping of it, through any
descriptor or ``/proc/PID/fd/N`` path, and refuses to lift the seals. The caller hashes the
sealed copy, not the file it came from, so the digest is of the very pages llama.cpp maps.

Invariants:

* The memory is reserved before anything is read (``posix_fallocate``): a copy that does
  not fit fails at once with ``OSError``, before llama.cpp could fault on a missing page.
* The size is sealed before the copy, the content after it; sealing the content fails
  (EBUSY) if any writable mapping of the memfd exists anywhere, so no writer outlives it.
* A source that ends early is an error, never a shorter copy.
"""

from __future__ import annotations

import fcntl
import os

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_NAMES = ((fcntl.F_SEAL_WRITE, "write"), (fcntl.F_SEAL_SHRINK, "shrink"), (fcntl.F_SEAL_GROW, "grow"),
          (fcntl.F_SEAL_SEAL, "seal"))
_CHUNK = 1 << 30  # sendfile moves at most ~2 GiB per call


class ShortSource(OSError):
    """The source file ended before the size it was expected to have."""


def sealed_copy(src: int, size: int, label: str) -> int:
    """Copy bytes ``[0, size)`` of ``src`` into a new memfd, seal it and return its descriptor."""
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


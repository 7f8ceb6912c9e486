"""SHA3-256 of file contents, read once through an already open file descriptor.

Reading through the caller's descriptor is the point: the bytes hashed are the bytes of
the inode the caller goes on to use, whatever happens to the path meanwhile. Every stored
hash names its algorithm: ``sha3-256:<hex>``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from ledger import SHA3_TAG

BLOCK = 4 << 20  # large enough that the hash, not the system calls, sets the pace
Progress = Callable[[int], None]


def sha3_tag(hex_digest: str) -> str:
    return SHA3_TAG + hex_digest


def hash_fd(fd: int, progress: Progress | None = None) -> tuple[str, int]:
    """Hash from offset 0 to the end; return ``("sha3-256:<hex>", size)``."""
    return copy_and_hash(fd, None, progress)


def copy_and_hash(src: int, dst: int | None, progress: Progress | None = None) -> tuple[str, int]:
    """Hash ``src`` from offset 0 and, if ``dst`` is given, write every byte to it in the same pass."""
    digest = hashlib.sha3_256()
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(src, [buffer], offset):
        chunk = view[:n]
        digest.update(chunk)
        while dst is not None and chunk:
            chunk = chunk[os.write(dst, chunk):]
        offset += n
        if progress is not None:
            progress(n)
    return sha3_tag(digest.hexdigest()), offset

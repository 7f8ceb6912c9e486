"""Filling a (small, namespaced tmpfs) file system, for the full-disk tests' child scripts."""

from __future__ import annotations

import os
from pathlib import Path


def fill(path: Path) -> None:
    """Write to ``path`` until the file system is full, and keep the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        os.close(fd)

"""Crash recovery: finding the last whole line, and quarantining a torn tail before it is cut.

A crash in the middle of an append leaves a torn final line (bytes after the last ``\\n``).
Before the writer truncates it, the bytes are copied to ``<ledger>.torn-<offset>`` and made
durable (written aside, then linked into place, so a failure midway leaves no partial file
that would block every later recovery); the ``ledger.recovered`` record then names their
offset, length and SHA3-256. A crash between the truncation and that record leaves only the
quarantine file, from which the next open finishes the recovery.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ledger.errors import LedgerCorruptError, LedgerWriteError
from ledger.files import fsync_dir, write_new_file
from ledger.record import sha3_tag

_SCAN_CHUNK = 1 << 16


def quarantine_path(ledger: Path, offset: int) -> Path:
    return ledger.with_name(f"{ledger.name}.torn-{offset}")


def recovered_data(ledger: Path, offset: int, torn: bytes) -> dict[str, Any]:
    """The data of the ``ledger.recovered`` record for ``torn`` bytes cut at ``offset``."""
    return {"offset": offset, "length": len(torn), "sha3_256": sha3_tag(torn),
            "quarantine": quarantine_path(ledger, offset).name}


def quarantine(ledger: Path, fd: int, offset: int, torn: bytes) -> None:
    """Copy ``torn`` aside durably, then cut it from the ledger open as ``fd`` at ``offset``."""
    held = quarantine_path(ledger, offset)
    try:
        if held.exists():
            if held.read_bytes() != torn:
                raise LedgerCorruptError(ledger, f"{held.name} exists and holds other bytes")
        else:
            partial = held.with_name(f".{held.name}.partial")
            partial.unlink(missing_ok=True)
            write_new_file(partial, torn)
            os.link(partial, held)
            partial.unlink()
            fsync_dir(ledger.parent)
        os.ftruncate(fd, offset)
        os.fsync(fd)
    except OSError as exc:
        raise LedgerWriteError(ledger, f"cannot quarantine a torn tail: {exc.strerror}") from None


def last_line_start(fd: int, size: int, ledger: Path) -> int:
    """Offset of the last complete line before ``size``, scanning back from there."""
    ends: list[int] = []
    pos = size
    while pos > 0 and len(ends) < 2:
        start = max(0, pos - _SCAN_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        at = len(chunk)
        while len(ends) < 2 and (at := chunk.rfind(b"\n", 0, at)) >= 0:
            ends.append(start + at + 1)
        pos = start
    if not ends:
        raise LedgerCorruptError(ledger, "no complete record: not a ledger, or its genesis is lost")
    return ends[1] if len(ends) == 2 else 0


def line_ending_at(fd: int, end: int) -> bytes | None:
    """The line (without ``\\n``) whose ``\\n`` is the byte before ``end``, or None if there is none."""
    if end < 1 or os.pread(fd, 1, end - 1) != b"\n":
        return None
    pos, tail = end - 1, b""
    while pos > 0:
        start = max(0, pos - _SCAN_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return chunk[at + 1:] + tail
        tail, pos = chunk + tail, start
    return tail

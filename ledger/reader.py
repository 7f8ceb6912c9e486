"""Reading records out of a ledger file, forwards or backwards from the head, in bounded memory.

These readers check each record's own hash (`ledger.record.parse_line`) but not the links
between records: that is the verifier's job (`ledger.verify`). They are for finding the
records an application needs (the last one of a kind, the ones since some point) without
reading the whole file: a backward scan costs what lies between the head and what it looks
for, not the size of the ledger.

A torn final line (bytes after the last ``\\n``) is not a record and is never returned.
Filtering by kind looks at the raw bytes first, and parses only the lines that may match,
so skipping records costs a substring search, not a parse.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import LedgerCorruptError, LedgerReadError
from ledger.record import GENESIS_PREV, Record, RecordFault, check_kind, envelope, parse_line

BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Located:
    """A record, the byte offset at which its line starts, and that line's length with its ``\\n``."""

    offset: int
    length: int
    record: Record

    @property
    def end(self) -> int:
        """The offset just past this record's line: where the next record starts."""
        return self.offset + self.length


def records_backward(path: Path, kinds: Iterable[str] | None = None, stop_at: int = 0) -> Iterator[Located]:
    """The records of ``path``, newest first, down to the one that starts at ``stop_at`` or later.

    ``kinds`` keeps only records whose kind is one of them; a kind ending in ``.`` stands
    for every kind it begins (``"inference."``).
    """
    wanted = _Kinds(kinds)
    with _open(path) as fd:
        end = _complete_end(fd)
        carry = b""  # the start of a line whose beginning lies in an earlier block
        pos = end
        while pos > stop_at:
            start = max(stop_at, pos - BLOCK)
            buf = os.pread(fd, pos - start, start) + carry
            if len(buf) != pos - start + len(carry):
                raise LedgerReadError(f"{path} shrank while it was read")
            cut = buf.find(b"\n") + 1 if start > stop_at else 0
            if start > stop_at and cut == 0:  # one line longer than a block: keep gathering it
                carry, pos = buf, start
                continue
            lines_end = len(buf)
            for line_start, line_end in reversed(list(wanted.lines(buf, cut, lines_end))):
                located = _parse(path, buf[line_start:line_end], start + line_start)
                if wanted.matches(located.record.kind):
                    yield located
            carry, pos = buf[:cut], start


def records_forward(path: Path, kinds: Iterable[str] | None = None, start: int = 0,
                    stop: int | None = None) -> Iterator[Located]:
    """The records of ``path`` from the one that starts at byte ``start`` on, oldest first.

    ``stop`` ends the scan at the last complete line before that byte, as `complete_end` finds
    it: a follower reads up to what it has seen, not what is being appended meanwhile.
    """
    wanted = _Kinds(kinds)
    with _open(path) as fd:
        end = _complete_end(fd, stop)
        pos, carry = start, b""
        while pos < end:
            chunk = os.pread(fd, min(BLOCK, end - pos), pos)
            if not chunk:
                raise LedgerReadError(f"{path} shrank while it was read")
            buf_start = pos - len(carry)
            buf = carry + chunk
            pos += len(chunk)
            complete = buf.rfind(b"\n") + 1
            for line_start, line_end in wanted.lines(buf, 0, complete):
                located = _parse(path, buf[line_start:line_end], buf_start + line_start)
                if wanted.matches(located.record.kind):
                    yield located
            carry = buf[complete:]


def records_linked(path: Path, head: tuple[int, str], kinds: Iterable[str] | None = None) -> Iterator[Located]:
    """The records of ``path`` from genesis on, oldest first, re-read after `ledger.verify_file`
    accepted the file: every line's hash is checked and linked to the line before it (``prev``,
    and ``seq`` counting up), but only the lines of the wanted ``kinds`` have their ``data``
    decoded, by the standard JSON decoder, without the canonical-form checks the verifier made.

    It reads up to the record ``head`` names, (seq, hash) as the verdict gives it, and checks
    that record's hash: since every line is linked to the one before it, every byte read is then
    a byte the verifier verified, whatever happened to the file in between. Costs one SHA3-256
    per line and one JSON decode per wanted line. A line that breaks a link, a head with another
    hash, or a file that ends before the head raises LedgerCorruptError.
    """
    last, head_hash = head
    wanted = _Kinds(kinds)
    prev, seq = GENESIS_PREV, 0
    with _open(path) as fd:
        end = _complete_end(fd)
        pos, carry = 0, b""
        while pos < end:
            chunk = os.pread(fd, min(BLOCK, end - pos), pos)
            if not chunk:
                break
            buf_start = pos - len(carry)
            buf = carry + chunk
            pos += len(chunk)
            complete = buf.rfind(b"\n") + 1
            at = 0
            while at < complete:
                nl = buf.index(b"\n", at, complete)
                line = buf[at:nl]
                try:
                    digest, kind, linked, number, ts, data_end = envelope(line)
                except RecordFault as rf:
                    raise LedgerCorruptError(path, f"record at byte {buf_start + at} is bad: {rf.detail}") from None
                if linked != prev or number != seq:
                    raise LedgerCorruptError(path, f"record at byte {buf_start + at} does not link to the one "
                                                   f"before it (seq {number}, expected {seq})")
                if number == last and digest != head_hash:
                    raise LedgerCorruptError(path, f"record {number} has changed since it was verified")
                if wanted.matches(kind):
                    record = Record(number, ts, kind, json.loads(line[8:data_end]), linked, digest)
                    yield Located(buf_start + at, nl + 1 - at, record)
                if number == last:
                    return
                prev, seq, at = digest, seq + 1, nl + 1
            carry = buf[complete:]
    raise LedgerCorruptError(path, f"the ledger ends before record {last}, which was verified")


def complete_end(path: Path, stop: int | None = None) -> int:
    """The offset just past the last ``\\n`` before byte ``stop`` (default: the end of the file):
    where the records end and a torn or still growing line, if any, begins."""
    with _open(path) as fd:
        return _complete_end(fd, stop)


def record_at(path: Path, offset: int) -> Located:
    """The record whose line starts at byte ``offset``. Raises LedgerCorruptError if there is none."""
    with _open(path) as fd:
        if offset < 0 or (offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"):
            raise LedgerCorruptError(path, f"no record starts at byte {offset}")
        line, pos = b"", offset
        while (chunk := os.pread(fd, BLOCK, pos)) and b"\n" not in chunk:
            line, pos = line + chunk, pos + len(chunk)
        if b"\n" not in chunk:
            raise LedgerCorruptError(path, f"no complete record starts at byte {offset}")
        line += chunk[:chunk.index(b"\n") + 1]
    return _parse(path, line, offset)


def record_with_seq(path: Path, seq: int) -> Located:
    """Record ``seq``, found by bisecting the file on the seq of the line after a byte (O(log n)
    reads: seqs grow with offsets in any ledger the verifier accepts). LedgerCorruptError if the
    ledger has no such record, or the bisection finds another one (the file is not in order)."""
    with _open(path) as fd:
        lo, hi = 0, _complete_end(fd)  # record seq, if it is there, starts in [lo, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            located = _record_after(path, fd, mid, hi)
            if located is not None and located.record.seq == seq:
                return located
            if located is not None and located.record.seq < seq:
                lo = located.end
            else:  # no line starts in [mid, located): the record starts before mid
                hi = mid
    raise LedgerCorruptError(path, f"the ledger has no record {seq}")


def _record_after(path: Path, fd: int, pos: int, stop: int) -> Located | None:
    """The first complete record that starts at or after byte ``pos`` and before ``stop``."""
    start = pos
    if pos > 0 and os.pread(fd, 1, pos - 1) != b"\n":
        while start < stop:
            block = os.pread(fd, min(1 << 16, stop - start), start)
            at = block.find(b"\n")
            if at >= 0:
                start += at + 1
                break
            start += len(block)
    if start >= stop:
        return None
    return record_at(path, start)


def last_record(path: Path) -> Located | None:
    """The last complete record of ``path``, or None if it holds none."""
    return next(records_backward(path), None)


# -- internals ---------------------------------------------------------------------------------------


class _Kinds:
    """Which kinds a scan keeps, and a byte pattern that finds the lines that may hold them."""

    def __init__(self, kinds: Iterable[str] | None) -> None:
        self.exact: frozenset[str] = frozenset()
        self.prefixes: tuple[str, ...] = ()
        self.pattern: re.Pattern[bytes] | None = None
        if kinds is None:
            return
        kinds = list(kinds)
        for kind in kinds:
            check_kind(kind.removesuffix("."))
        self.exact = frozenset(k for k in kinds if not k.endswith("."))
        self.prefixes = tuple(k for k in kinds if k.endswith("."))
        # Every record's envelope holds `,"kind":"K","prev":"` once, after its data. The same
        # bytes may also occur inside data, so a hit is only a candidate, checked after parsing.
        # Their common beginning goes outside the alternation, so that the regular expression
        # engine searches for it as a literal: `,"kind":"config.` is rare, `,"kind":"` is in every line.
        common = _common_beginning(kinds)
        choices = [re.escape(k[len(common):].encode()) for k in sorted(self.exact)]
        choices += [re.escape(k[len(common):].encode()) + rb"[a-z0-9_.]*" for k in self.prefixes]
        self.pattern = re.compile(rb',"kind":"' + re.escape(common.encode()) + b"(?:" + b"|".join(choices)
                                  + rb')","prev":"')

    def matches(self, kind: str) -> bool:
        return self.pattern is None or kind in self.exact or kind.startswith(self.prefixes)

    def lines(self, buf: bytes, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """(start, end past its ``\\n``) of the lines in ``buf[lo:hi]`` that may hold a wanted kind."""
        if self.pattern is None:
            at = lo
            while at < hi:
                nl = buf.index(b"\n", at, hi)
                yield at, nl + 1
                at = nl + 1
            return
        last = -1
        for hit in self.pattern.finditer(buf, lo, hi):
            line_start = buf.rfind(b"\n", lo, hit.start()) + 1 or lo
            if line_start == last:
                continue
            last = line_start
            yield line_start, buf.index(b"\n", hit.end(), hi) + 1


def _common_beginning(words: list[str]) -> str:
    common = words[0] if words else ""
    for word in words[1:]:
        while not word.startswith(common):
            common = common[:-1]
    return common


@contextmanager
def _open(path: Path) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LedgerReadError(f"cannot read ledger {path}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _complete_end(fd: int, stop: int | None = None) -> int:
    """The offset just past the last ``\\n`` before ``stop`` (or the end): where a torn tail begins.

    The last line is almost always whole, so the first read is one small block, growing to
    BLOCK only for a long line: an engine asks this before every operation."""
    pos = os.fstat(fd).st_size if stop is None else min(stop, os.fstat(fd).st_size)
    size = 4096
    while pos > 0:
        start = max(0, pos - size)
        at = os.pread(fd, pos - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        pos, size = start, min(size * 4, BLOCK)
    return 0


def _parse(path: Path, line: bytes, offset: int) -> Located:
    """``line`` ends with its ``\\n``."""
    try:
        return Located(offset, len(line), parse_line(line[:-1]))
    except RecordFault as rf:
        raise LedgerCorruptError(path, f"record at byte {offset} is bad: {rf.detail}") from None

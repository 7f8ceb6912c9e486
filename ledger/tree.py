"""The Merkle tree of a ledger, kept on disk beside it: appends in O(log n), proofs in milliseconds.

``<ledger>.tree`` holds every perfect subtree hash of the ledger's tree (`ledger.merkle`) in
post-order, the order in which appending leaves completes them, so the file only ever grows::

    header  16 bytes  b"anticloud-tree1\\n"
             8 bytes  end: the ledger byte offset just past the last line the tree holds (u64 BE)
             8 bytes  leaves: how many lines it holds (u64 BE)
    nodes   32 bytes each; the tree of n leaves has 2n - popcount(n) of them

The subtree of level L and index i (leaves i*2^L .. (i+1)*2^L - 1) is written right after the
leaf that completes it: node 2(m-1) - popcount(m-1) + L, with m = (i+1)*2^L. Any range a proof
names is O(log n) of these folded (`ledger.merkle.perfect_ranges`), read with one pread each.

The file is derived data, never trusted over the ledger:

* it is bound to its ledger by its first leaf (record 0) and its last (the line ending at
  ``end``), checked whenever it is opened to follow the ledger; a file that fails, or whose
  header and nodes disagree (a crash between their writes), is rebuilt from the ledger;
* nodes are written before the header that counts them, and without an fsync of their own (the
  ledger's records are durable already): a crash leaves surplus nodes, cut on the next open, or
  a header the nodes lag, rebuilt;
* the root the appliance signs is computed from the ledger's lines (`TreeFile.audit`, O(n),
  without the lock, then the few lines since under it), never read from this file, and the
  file is rebuilt if a node differs; a proof is verified against the signed root before it
  is handed out.

Only a process holding the ledger's exclusive lock follows (writes) the tree.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import LedgerError, LedgerReadError
from ledger.merkle import EMPTY_ROOT, HASH_SIZE, Frontier, leaf_hash, node_hash, perfect_ranges

MAGIC = b"anticloud-tree1\n"
_HEADER = struct.Struct(">16sQQ")
HEADER_SIZE = _HEADER.size
_CHUNK = 1 << 20
_PENDING_NODES = 4096  # nodes computed before they are written (or compared): 128 KiB


class TreeError(LedgerError):
    """The tree file cannot be used as it is (the caller rebuilds it from the ledger)."""


@contextmanager
def following(ledger: Path, rebuild: bool = False) -> Iterator[TreeFile]:
    """The ledger's tree, brought up to its last complete line (or, with ``rebuild``, built anew
    from the ledger) under the ledger's lock: appends wait meanwhile. For readers such as a prover."""
    try:
        fd = os.open(ledger, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LedgerReadError(f"cannot read ledger {ledger}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with TreeFile.open(ledger) as tree:
            if rebuild:
                tree.rebuild(fd, os.fstat(fd).st_size)
            else:
                tree.follow(fd, os.fstat(fd).st_size)
            yield tree
    finally:
        os.close(fd)  # and with it the lock


def tree_path(ledger: Path) -> Path:
    return ledger.with_name(f"{ledger.name}.tree")


def node_count(leaves: int) -> int:
    """How many nodes the tree of ``leaves`` leaves keeps: 2n - popcount(n)."""
    return 2 * leaves - leaves.bit_count()


def node_index(level: int, index: int) -> int:
    """Where the perfect subtree (level, index) lies among the nodes, in post-order."""
    last = ((index + 1) << level) - 1  # the leaf that completes it
    return node_count(last) + level


@dataclass(slots=True)
class TreeCheck:
    """What `TreeFile.audit` found: the leaves it recomputed from the ledger, the first node of the
    file that differed (None: the file is sound that far), and the tree of those lines."""

    leaves: int
    first_bad_node: int | None
    frontier: Frontier
    end: int  # the ledger offset just past the last line recomputed

    def extend(self, ledger_fd: int, stop: int) -> None:
        """Go on computing the tree from the ledger's lines in [end, stop)."""
        for line, line_end in _Lines(ledger_fd, self.end, stop):
            self.frontier.push(leaf_hash(line))
            self.end = line_end


class TreeFile:
    """One ledger's ``.tree`` file, open for reading and (under the ledger's lock) following."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.end = 0
        self.leaves = 0
        self._frontier: Frontier | None = None  # valid for (end, leaves) as last read or written

    @classmethod
    def open(cls, ledger: Path) -> TreeFile:
        path = tree_path(ledger)
        try:
            mode = os.stat(ledger).st_mode & 0o666
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        except OSError as exc:
            raise TreeError(f"cannot open {path}: {exc.strerror}") from None
        return cls(path, fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TreeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------

    def node(self, position: int) -> bytes:
        raw = os.pread(self._fd, HASH_SIZE, HEADER_SIZE + position * HASH_SIZE)
        if len(raw) != HASH_SIZE:
            raise TreeError(f"{self.path}: node {position} is missing")
        return raw

    def perfect(self, lo: int, hi: int) -> bytes:
        """The hash of the aligned perfect subtree of leaves [lo, hi)."""
        level = (hi - lo).bit_length() - 1
        return self.node(node_index(level, lo >> level))

    def subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range a proof names (a `ledger.merkle.Subtrees`), from disk."""
        if not 0 <= lo < hi <= self.leaves:
            raise TreeError(f"{self.path}: leaves {lo}..{hi - 1} are not in a tree of {self.leaves}")
        parts = [self.perfect(a, b) for a, b in perfect_ranges(lo, hi)]
        acc = parts[-1]
        for part in reversed(parts[:-1]):
            acc = node_hash(part, acc)
        return acc

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def leaf(self, index: int) -> bytes:
        return self.node(node_count(index))

    # -- following the ledger (under its lock) -------------------------------------------

    def follow(self, ledger_fd: int, size: int) -> int:
        """Take in the complete lines of the ledger open as ``ledger_fd`` up to byte ``size``;
        return how many leaves the tree holds. Rebuilds the file if it does not fit the ledger."""
        self._reopen_if_replaced()
        if size < self.end or not self._fits(ledger_fd):
            self.rebuild(ledger_fd, size)
            return self.leaves
        if size > self.end:
            self._extend(ledger_fd, size)
        return self.leaves

    def _reopen_if_replaced(self) -> None:
        """Another process may have rebuilt the file (a new inode at the path): follow that one."""
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         os.fstat(self._fd).st_mode & 0o666)
            os.close(self._fd)
            self._fd, self._frontier = fd, None

    def _fits(self, ledger_fd: int) -> bool:
        """Read the header; cut surplus nodes; is what it counts there, and bound to this ledger?"""
        raw = os.pread(self._fd, HEADER_SIZE, 0)
        if not raw:
            self.end, self.leaves, self._frontier = 0, 0, Frontier()
            return True
        if len(raw) != HEADER_SIZE:
            return False
        magic, end, leaves = _HEADER.unpack(raw)
        if magic != MAGIC:
            return False
        if (end, leaves) == (self.end, self.leaves) and self._frontier is not None:
            return True  # as this process left it: checked then
        nodes = (os.fstat(self._fd).st_size - HEADER_SIZE) // HASH_SIZE
        if nodes < node_count(leaves) or os.fstat(ledger_fd).st_size < end:
            return False
        if nodes > node_count(leaves):
            os.ftruncate(self._fd, HEADER_SIZE + node_count(leaves) * HASH_SIZE)
        self.end, self.leaves = end, leaves
        if leaves and not self._bound(ledger_fd):
            return False
        self._frontier = Frontier.of([self.perfect(lo, hi) for lo, hi in perfect_ranges(0, leaves)], leaves)
        return True

    def _bound(self, ledger_fd: int) -> bool:
        """Leaf 0 is record 0's line and the last leaf is the line ending at ``end``."""
        first = _line_at(ledger_fd, 0)
        last = _line_ending_at(ledger_fd, self.end)
        return (first is not None and last is not None and self.leaf(0) == leaf_hash(first)
                and self.leaf(self.leaves - 1) == leaf_hash(last))

    def _extend(self, ledger_fd: int, size: int) -> None:
        assert self._frontier is not None
        made: list[bytes] = []
        end, leaves, written = self.end, self.leaves, HEADER_SIZE + node_count(self.leaves) * HASH_SIZE
        for line, line_end in _Lines(ledger_fd, self.end, size):
            made.extend(self._frontier.push_nodes(leaf_hash(line)))
            end, leaves = line_end, leaves + 1
            if len(made) >= _PENDING_NODES:  # a long catch-up (a ledger without its tree) in bounded memory
                written += _pwrite_all(self._fd, b"".join(made), written)
                made = []
        if leaves == self.leaves:
            return
        _pwrite_all(self._fd, b"".join(made), written)
        _pwrite_all(self._fd, _HEADER.pack(MAGIC, end, leaves), 0)
        self.end, self.leaves = end, leaves

    def rebuild(self, ledger_fd: int, size: int) -> None:
        """Write the tree anew from the ledger's lines, aside, then put it in place."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, os.fstat(self._fd).st_mode & 0o666)
        try:
            frontier, end, leaves, pending, written = Frontier(), 0, 0, [], HEADER_SIZE
            for line, line_end in _Lines(ledger_fd, 0, size):
                pending.extend(frontier.push_nodes(leaf_hash(line)))
                end, leaves = line_end, leaves + 1
                if len(pending) >= _PENDING_NODES:
                    written += _pwrite_all(fd, b"".join(pending), written)
                    pending = []
            _pwrite_all(fd, b"".join(pending), written)
            _pwrite_all(fd, _HEADER.pack(MAGIC, end, leaves), 0)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd, self.end, self.leaves, self._frontier = fd, end, leaves, frontier

    def audit(self, ledger_fd: int) -> TreeCheck:
        """Recompute, from the ledger's lines, every node the file held when this began, and compare.

        Needs no lock: nodes, once counted by the header, are never rewritten in place (a rebuild
        puts a new file at the path). The returned frontier is the tree of those lines computed
        from the ledger alone, for a caller that goes on from `TreeCheck.end` under the lock.
        """
        self._reopen_if_replaced()
        raw = os.pread(self._fd, HEADER_SIZE, 0)
        magic, end, leaves = _HEADER.unpack(raw) if len(raw) == HEADER_SIZE else (b"", 0, 0)
        held = (os.fstat(self._fd).st_size - HEADER_SIZE) // HASH_SIZE if magic == MAGIC else 0
        frontier, position, pending, bad = Frontier(), 0, [], None
        for line, line_end in _Lines(ledger_fd, 0, end if magic == MAGIC else 0):
            pending.extend(frontier.push_nodes(leaf_hash(line)))
            if len(pending) >= _PENDING_NODES or line_end == end:
                bad = bad if bad is not None else self._differs(position, b"".join(pending))
                position, pending = position + len(pending), []
        if magic != MAGIC or frontier.size != leaves or held < node_count(leaves):
            bad = bad if bad is not None else min(held, node_count(frontier.size))
        return TreeCheck(frontier.size, bad, frontier, end)

    def _differs(self, position: int, expected: bytes) -> int | None:
        """The first node from ``position`` on that is not as ``expected`` says, or None."""
        stored = os.pread(self._fd, len(expected), HEADER_SIZE + position * HASH_SIZE)
        if stored == expected:
            return None
        for i in range(0, len(expected), HASH_SIZE):
            if stored[i:i + HASH_SIZE] != expected[i:i + HASH_SIZE]:
                return position + i // HASH_SIZE
        return position + len(stored) // HASH_SIZE

    def sync(self) -> None:
        os.fdatasync(self._fd)


class _Lines:
    """The complete lines (without their newline) of ``fd`` in [start, stop), with the offset past each."""

    def __init__(self, fd: int, start: int, stop: int) -> None:
        self.fd, self.pos, self.stop = fd, start, stop

    def __iter__(self) -> _Lines:
        self._buf, self._at = b"", 0
        return self

    def __next__(self) -> tuple[bytes, int]:
        while True:
            cut = self._buf.find(b"\n", self._at)
            if cut >= 0:
                line = self._buf[self._at:cut]
                self._at = cut + 1
                return line, self.pos - len(self._buf) + self._at
            if self.pos >= self.stop:
                raise StopIteration
            chunk = os.pread(self.fd, min(_CHUNK, self.stop - self.pos), self.pos)
            if not chunk:
                raise StopIteration
            self._buf, self._at = self._buf[self._at:] + chunk, 0
            self.pos += len(chunk)


def _line_at(fd: int, offset: int) -> bytes | None:
    return next((line for line, _ in _Lines(fd, offset, offset + (1 << 20) + 2)), None)


def _line_ending_at(fd: int, end: int) -> bytes | None:
    """The line whose ``\\n`` is the byte before ``end``, without it."""
    if end <= 0 or os.pread(fd, 1, end - 1) != b"\n":
        return None
    start = end - 1
    while start > 0:
        block = os.pread(fd, min(1 << 16, start), max(0, start - (1 << 16)))
        at = block.rfind(b"\n")
        if at >= 0:
            start = start - len(block) + at + 1
            break
        start -= len(block)
    return os.pread(fd, end - 1 - start, start)


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return len(data)

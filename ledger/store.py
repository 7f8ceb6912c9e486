"""The ledger writer: it owns the file descriptor, the lock, the fsync and crash recovery.

Invariants:

* A record is durable (written and fdatasync'd) before `LedgerWriter.append` returns it.
* Bytes in the file are never rewritten. The only bytes ever removed are a torn final line
  (no ``\\n``), and only after they were copied to a quarantine file beside the ledger and
  made durable; a ``ledger.recovered`` record then names their offset, length and SHA3-256.
* Threads of one process share syncs (group commit): one leader writes every waiting
  record with one write() and one fdatasync(), while the others wait for its result.
  Each caller encodes its own record data before queueing, so that work overlaps the
  leader's sync; the leader does only what depends on the previous record (the hash).
* Processes are serialised by an exclusive flock on the ledger file, and each batch first
  reads what other processes appended, checking every record's hash and link before
  chaining onto it. Those records and the writer's own pass the verifier's rules
  (`ledger.chain.Chain`), so the writer never chains onto, or writes, a record that
  `anticloud verify ledger` would call bad.
* Any write or sync error poisons the writer. After a failed fsync the kernel may already
  have dropped the dirty pages, so a retry could report success for lost data; only
  `reopen`, which re-reads the file and recovers a torn tail, may append again.
* The path names the file the writer holds whenever it acknowledges a record: each batch
  checks, under the lock, before writing and again after the sync, that the path's device
  and inode are still those of the open descriptor. A ledger renamed over, unlinked or
  replaced by a symbolic link poisons the writer, so nothing is acknowledged (or signed) that
  is not in the file a reader of the path sees.
* With a `ledger.sealing.Sealer`, the writer closes forward-secure epochs: a ``ledger.seal``
  follows every trigger record in the same durable batch, `seal` closes the epoch on demand
  (a timer) and `close` seals what is unsealed at a clean stop; the next epoch's key is put
  in force only once the seal is durable, all under the lock.
* The Merkle tree beside the ledger (`ledger.tree`) follows the ledger under the lock, once the
  records are durable: when `TREE_LAG` records are new to it, at every close, and before a
  proof (`tree`) or a checkpoint. It is derived data: a failure to follow it never fails an
  append (a later follow, or the next open, catches it up or rebuilds it from the ledger).
* `reopen` continues the same chain or nothing: the file it opens must hold the same record 0
  and, at the same offset, the last record this writer acknowledged; everything after it
  must link to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.chain import FORMAT_KINDS, RECOVERED_KIND, Chain, ChainFault
from ledger.checkpoint import (
    CHECKPOINT_KIND,
    Checkpoint,
    SignedCheckpoint,
    ed25519_valid,
    origin_of,
    raw_public_key,
    sign_checkpoint,
)
from ledger.errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerExistsError,
    LedgerPoisonedError,
    LedgerReadError,
    LedgerWriteError,
)
from ledger.files import fsync_dir, write_all, write_new_file
from ledger.merkle import Frontier
from ledger.note import sign_note
from ledger.record import (
    GENESIS_KIND,
    GENESIS_PREV,
    MAX_LINE_BYTES,
    Record,
    RecordFault,
    key_id_of,
    parse_line,
    prepare,
    seal,
    seal_prepared,
    utc_timestamp,
)
from ledger.recovery import last_line_start, line_ending_at, quarantine, quarantine_path, recovered_data
from ledger.seal import SEAL_KIND
from ledger.sealing import Sealer
from ledger.tlog_text import TreeHead
from ledger.tree import TreeCheck, TreeError, TreeFile

DataBuilder = Callable[[Record], dict[str, Any]]
Stamp = Callable[[], Mapping[str, Any]]
_SCAN_CHUNK = 1 << 16
_MAX_BATCHES_PER_LEADER = 8
# The tree follows the ledger once this many records are new to it, and at every close, proof
# and checkpoint: one follow per batch would cost a tenth of a durable append on a fast disk.
TREE_LAG = 64


class _Request:
    __slots__ = ("build", "data", "done", "error", "kind", "payload", "record", "wake")

    def __init__(self, kind: str, data: dict[str, Any], payload: bytes, build: DataBuilder | None) -> None:
        self.kind = kind
        self.data = data
        self.payload = payload
        self.build = build
        self.record: Record | None = None
        self.error: BaseException | None = None
        self.done = False
        # A binary semaphore, held until the request is done or handed the leadership:
        # far cheaper to wait on and release than a threading.Event.
        self.wake = threading.Lock()
        self.wake.acquire()


class LedgerWriter:
    """Appends records durably to one ledger file. Safe across threads and processes."""

    # How a batch's bytes reach the file. A test may put a slower or failing one in its place
    # (the crash campaign tears appends with it), so that faults come from outside this module.
    write_bytes: Callable[[int, bytes], None] = staticmethod(write_all)
    # Whether the writer keeps the Merkle tree beside the ledger. Only a benchmark measuring what
    # the tree costs turns it off; a ledger written without it gets its tree rebuilt on next open.
    keep_tree: bool = True

    def __init__(self, path: Path, sealer: Sealer | None = None) -> None:
        self.path = path
        self._sealer = sealer
        self._fd = -1
        self._size = 0
        self._chain: Chain | None = None  # the rules every record read or written here must pass
        self._mutex = threading.Lock()  # guards the queue and who leads
        self._io = threading.Lock()  # held while a batch touches the fd, so close() cannot race it
        self._pending: list[_Request] = []
        self._leading = False
        self._failure: LedgerWriteError | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open descriptor
        self._acked: tuple[Record, int, str] | None = None  # last acknowledged record, its end offset, genesis hash
        self._tree: TreeFile | None = None  # None until opened, and after a failure until the next batch
        self._followed_seq = -1  # the head when the tree last followed
        # Told of each record appended through append() or append_derived(), once it is durable; one
        # that raises is not told again, and never fails the append (the record is written either way).
        self.observers: list[Callable[[Record], None]] = []
        # Members every record appended through append() or append_derived() carries unless its
        # data has them already (kinds whose data the format fixes excepted). Called in the appending
        # thread, before the record is queued, so a value that belongs to that thread or context
        # (who is acting) is the one stamped, whichever thread then writes the batch.
        self.stamp: Stamp | None = None

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, genesis_data: dict[str, Any]) -> LedgerWriter:
        """Create a new ledger whose record 0 is ``ledger.genesis`` with ``genesis_data``."""
        path = Path(path)
        _record, line = seal(0, GENESIS_KIND, genesis_data, GENESIS_PREV)
        # Written aside and linked into place, so the ledger never exists without its genesis.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            write_new_file(tmp, line)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise LedgerExistsError(f"{path}: a ledger already exists") from None
            finally:
                os.unlink(tmp)
            fsync_dir(path.parent)
        except OSError as exc:
            raise LedgerWriteError(path, f"cannot create ledger: {exc.strerror}") from None
        return cls.open(path)

    @classmethod
    def open(cls, path: Path, sealer: Sealer | None = None) -> LedgerWriter:
        """Open an existing ledger, recovering a torn tail left by a crash (and the sealing
        state, with a ``sealer``: LedgerCorruptError if it disagrees with the ledger)."""
        writer = cls(Path(path), sealer)
        writer._open_fd()
        return writer

    def _open_fd(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise LedgerReadError(f"cannot open ledger {self.path}: {exc.strerror}") from None
        stat = os.fstat(self._fd)
        self._file_id = (stat.st_dev, stat.st_ino)
        self._size, self._chain = 0, None
        try:
            with self._locked():
                if self._acked is not None:
                    self._resume_from(*self._acked)  # before catching up, which may write
                self._catch_up()
                if self._sealer is not None:
                    self._sealer.open(self.path)
                    if self._sealer.holds_initial_secret:  # an enrollment cut short: seal it off at once
                        self._after_seal(self._write_locked(SEAL_KIND, self._sealer.seal_data(self.head)))
                self._acked = (self.head, self._size, self._acked[2] if self._acked else self.genesis.hash)
                self._follow_tree()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _resume_from(self, acked: Record, end: int, genesis_hash: str) -> None:
        """Under the lock, on reopening: the file must continue the chain this writer acknowledged.

        A file put in the ledger's place (another ledger, an older copy, a fork written while
        this writer was refused) must not be taken for the same chain: record 0 and the last
        acknowledged record, at its offset, must be there; `_catch_up` then checks every later
        record's link from it.
        """
        if self.genesis.hash != genesis_hash:
            raise LedgerCorruptError(self.path, "the file now at this path is another ledger (record 0 differs)")
        size = os.fstat(self._fd).st_size
        line = line_ending_at(self._fd, end) if end <= size else None
        try:
            found = parse_line(line) if line is not None else None
        except RecordFault:
            found = None
        if found is None or (found.seq, found.hash) != (acked.seq, acked.hash):
            raise LedgerCorruptError(self.path, f"the file now at this path lacks record {acked.seq}, the last one "
                                                "this writer acknowledged")
        self._chain, self._size = self._continuing(acked), end

    def reopen(self) -> None:
        """Start afresh from the file: the only way out of a poisoned state.

        If reopening fails too (the disk is still full), the writer stays poisoned, so the
        next `heal` tries again rather than treating a closed writer as a healthy one.
        """
        with self._io:
            self._close_tree()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            try:
                self._open_fd()
            except LedgerError as exc:
                self._failure = LedgerPoisonedError(self.path, f"the ledger could not be reopened: {exc}")
                raise
            self._failure = None

    @property
    def failure(self) -> LedgerWriteError | None:
        """The error that poisoned this writer (refusing appends until `heal`), or None."""
        return self._failure

    def heal(self) -> bool:
        """Before a new operation: if an earlier failure poisoned this writer, reopen it.

        Reopening re-reads the file and recovers what the failure left (a torn tail becomes
        a ``ledger.recovered`` record), so a server resumes once the disk has room again. The
        failed append itself is never retried. Raises LedgerError if the ledger still cannot
        be written; returns whether a reopen was needed.
        """
        if self._failure is None:
            return False
        self.reopen()
        return True

    def close(self) -> None:
        """Close the ledger; with a sealer, seal first whatever is unsealed (a clean stop)."""
        try:
            if self._sealer is not None and self._fd >= 0 and self._failure is None:
                self.seal(only_if_unsealed=True)
            if self._fd >= 0 and self._failure is None and self.head.seq != self._followed_seq:
                with self._io, self._locked():
                    self._follow_tree()
        finally:
            with self._io:
                self._close_tree()
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1

    # -- sealing ------------------------------------------------------------------------

    def seal(self, final: bool = False, only_if_unsealed: bool = False) -> Record | None:
        """Close the open epoch now with a ``ledger.seal`` (None if not enrolled, or, with
        ``only_if_unsealed``, if nothing follows the last seal)."""
        with self._appending():
            sealer = self._sealer
            if sealer is None or not sealer.enrolled or (only_if_unsealed and not sealer.unsealed(self.head)):
                return None
            record = self._write_locked(SEAL_KIND, sealer.seal_data(self.head, final))
            self._after_seal(record)
            return record

    def enroll(self, secret: bytes, data: dict[str, Any]) -> Record:
        """Record ``seal.enroll`` for ``secret`` (closing the open chain first) and seal its epoch 0."""
        if self._sealer is None:
            raise LedgerWriteError(self.path, "this writer was opened without a sealer")
        sealer = self._sealer
        with self._appending():
            return sealer.enroll(secret, data, lambda: self.head, self._write_locked)

    def _write_locked(self, kind: str, data: dict[str, Any]) -> Record:
        """Under the lock: seal, link and durably write one record."""
        record, line = seal(self.head.seq + 1, kind, data, self.head.hash)
        self._link(record, self._size)
        self._write_durably(line)
        self._size += len(line)
        return record

    def _after_seal(self, record: Record) -> None:
        """The seal is durable: advance the key. A failure poisons the writer, whose reopen recovers."""
        assert self._sealer is not None
        try:
            self._sealer.sealed(record)
        except LedgerError as exc:
            self._failure = LedgerPoisonedError(self.path, f"the sealing state could not advance: {exc}")
            raise

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def genesis(self) -> Record:
        """Record 0, which names the ledger id and the appliance key."""
        first = b""
        while not first.endswith(b"\n"):
            chunk = os.pread(self._fd, _SCAN_CHUNK, len(first))
            if not chunk:
                raise LedgerCorruptError(self.path, "record 0 is incomplete")
            first += chunk
            first = first[: first.find(b"\n") + 1] if b"\n" in first else first
            if len(first) > MAX_LINE_BYTES + 1:
                raise LedgerCorruptError(self.path, f"record 0 is longer than {MAX_LINE_BYTES} bytes")
        try:
            return parse_line(first[:-1])
        except RecordFault as rf:
            raise LedgerCorruptError(self.path, f"record 0 is bad: {rf.detail}") from None

    @property
    def head(self) -> Record:
        """The last record this writer has seen (others may have appended since)."""
        assert self._chain is not None and self._chain.head is not None
        return self._chain.head

    def _continuing(self, head: Record) -> Chain:
        try:
            return Chain.continuing(self.genesis, head, ed25519_valid)
        except ChainFault as cf:
            raise LedgerCorruptError(self.path, f"record 0 is bad: {cf.fault.detail}") from None

    def _link(self, record: Record, offset: int) -> None:
        """Advance the head to ``record`` at byte ``offset`` if the chain rules allow it."""
        assert self._chain is not None
        try:
            self._chain.link(record, offset)
        except ChainFault as cf:
            raise LedgerCorruptError(self.path, f"record at byte {offset} is bad: {cf.fault.detail}") from None

    # -- appending ---------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any]) -> Record:
        """Append one record and return it once it is durable. Raises LedgerError."""
        stamped = self._stamped(kind)
        data = {**stamped, **data} if stamped else data
        return self._submit(_Request(kind, data, prepare(kind, data), None))

    def append_derived(self, kind: str, build: DataBuilder) -> Record:
        """Append a record whose data is built, under the lock, from the record it follows."""
        stamped = self._stamped(kind)
        if stamped:
            built = build

            def build(head: Record) -> dict[str, Any]:
                return {**stamped, **built(head)}

        return self._submit(_Request(kind, {}, b"", build))

    def _stamped(self, kind: str) -> Mapping[str, Any]:
        return {} if self.stamp is None or kind in FORMAT_KINDS else self.stamp()

    def _submit(self, req: _Request) -> Record:
        with self._mutex:
            self._check_usable()
            self._pending.append(req)
            follow, self._leading = self._leading, True
        if follow:
            req.wake.acquire()
        if not req.done:  # we lead, from the start or handed over by the last leader
            self._lead()
        if req.error is not None:
            raise req.error
        assert req.record is not None
        self._tell(req.record)
        return req.record

    def _tell(self, record: Record) -> None:
        for observer in list(self.observers):
            try:
                observer(record)
            except Exception:  # noqa: BLE001 -- an observer's failure is its own: the record is durable
                self.observers.remove(observer)

    def _lead(self) -> None:
        """Commit batches while requests keep arriving, then hand over or stand down.

        Staying on saves a thread handover per batch; the bound keeps the leader's own
        caller from waiting behind other threads' records for ever.
        """
        for _ in range(_MAX_BATCHES_PER_LEADER):
            with self._mutex:
                batch, self._pending = self._pending, []
                if not batch:
                    self._leading = False
                    return
            self._commit_batch(batch)
        with self._mutex:
            if not self._pending:
                self._leading = False
                return
            successor = self._pending[0]
        successor.wake.release()

    def _commit_batch(self, batch: list[_Request]) -> None:
        try:
            with self._appending():
                self._commit(batch)
        except BaseException as exc:  # noqa: BLE001 -- every waiting caller gets it raised
            for r in batch:
                if r.error is None:
                    r.error, r.record = exc, None
        for r in batch:
            r.done = True
            r.wake.release()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._fd < 0:
            raise LedgerPoisonedError(self.path, "the ledger writer is closed")

    def _check_same_file(self) -> None:
        """Poison the writer unless the path still names the file it holds (one lstat per batch)."""
        try:
            stat = os.lstat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._file_id
        except OSError:
            same = False
        if not same:
            self._failure = LedgerPoisonedError(
                self.path, "the ledger file was replaced or removed while open; refusing to record into a "
                           "file the path no longer names")
            raise self._failure

    def _commit(self, batch: list[_Request]) -> None:
        head = self.head
        ts = utc_timestamp()  # one commit, one time
        lines: list[bytes] = []
        offset = self._size
        for req in batch:
            if req.build is not None:
                try:
                    req.data = req.build(head)
                    req.payload = prepare(req.kind, req.data)
                except LedgerError as exc:
                    req.error = exc
                    continue
            record, line = seal_prepared(head.seq + 1, req.kind, req.payload, req.data, head.hash, ts)
            try:
                self._link(record, offset)
            except LedgerCorruptError as exc:  # a record the verifier would refuse: this request's fault
                req.error = exc
                continue
            req.record, head = record, record
            lines.append(line)
            offset += len(line)
        seal_record = self._seal_after(batch, head, offset, ts, lines) if self._sealer is not None else None
        if lines:
            blob = b"".join(lines)
            self._write_durably(blob)
            self._size += len(blob)
        if seal_record is not None:
            with contextlib.suppress(LedgerError):  # the batch is durable; the writer is poisoned and heals
                self._after_seal(seal_record)

    def _seal_after(self, batch: list[_Request], head: Record, offset: int, ts: str,
                    lines: list[bytes]) -> Record | None:
        """Follow the batch's records; if one is a trigger, add the seal that closes the epoch after it."""
        assert self._sealer is not None
        written = [r.record for r in batch if r.record is not None]
        for record in written:
            self._sealer.observe(record)
        if not self._sealer.due(record.kind for record in written):
            return None
        record, line = seal(head.seq + 1, SEAL_KIND, self._sealer.seal_data(head), head.hash, ts)
        self._link(record, offset)
        lines.append(line)
        return record

    def _write_durably(self, blob: bytes) -> None:
        try:
            self.write_bytes(self._fd, blob)
            os.fdatasync(self._fd)
        except OSError as exc:
            self._failure = LedgerPoisonedError(
                self.path, f"an earlier append failed ({exc.strerror}); reopen the ledger to continue")
            raise LedgerWriteError(self.path, f"cannot append: {exc.strerror}") from None

    # -- reading what is there ----------------------------------------------------------

    @contextmanager
    def _appending(self) -> Iterator[None]:
        """A locked section that appends: the path must name the file held, before writing and
        again after the sync, and what others appended is taken in first; what was written
        is then the last record acknowledged."""
        with self._io, self._locked():
            self._check_usable()
            self._check_same_file()
            self._catch_up()
            yield
            self._check_same_file()  # replaced while we wrote: what we wrote is in no file at the path
            self._acked = (self.head, self._size, self._acked[2]) if self._acked else None
            if self.head.seq - self._followed_seq >= TREE_LAG:
                self._follow_tree()

    def _follow_tree(self) -> None:
        """Under the lock, the records durable: bring the Merkle tree up to the file's end."""
        self._followed_seq = self.head.seq
        if not self.keep_tree:
            return
        try:
            if self._tree is None:
                self._tree = TreeFile.open(self.path)
            self._tree.follow(self._fd, self._size)
        except (OSError, TreeError):  # derived data: the ledger is written; the next batch catches up
            self._close_tree()

    def _close_tree(self) -> None:
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def checkpoint(self, sign: Callable[[Record, int, bytes], dict[str, Any]]) -> Record:
        """Append a ``ledger.checkpoint`` whose data ``sign`` makes from the head and the size and
        root of the Merkle tree of records 0..head, in a batch of its own.

        The root is computed from the ledger's lines, never read from the tree file: the lines
        the file held are recomputed first without the lock (`TreeFile.audit`), the few since
        under it. A file that differed is rebuilt, so the proofs it answers fit the signed root.
        """
        try:
            with TreeFile.open(self.path) as reading:
                audit = reading.audit(self._fd)
        except (OSError, TreeError):  # no tree to audit: compute it all from the ledger, under the lock
            audit = TreeCheck(0, None, Frontier(), 0)
        with self._appending():
            audit.extend(self._fd, self._size)
            if audit.frontier.size != self.head.seq + 1:
                raise LedgerCorruptError(self.path, f"the tree holds {audit.frontier.size} lines, not the "
                                                    f"{self.head.seq + 1} records 0..{self.head.seq}")
            if audit.first_bad_node is not None and self._tree is not None:
                self._tree.rebuild(self._fd, self._size)
            record = self._write_locked(CHECKPOINT_KIND, sign(self.head, audit.frontier.size, audit.frontier.root()))
        self._tell(record)
        return record

    @contextmanager
    def tree(self) -> Iterator[TreeFile]:
        """The Merkle tree, up to date with the ledger, held under the lock (no append meanwhile)."""
        with self._io, self._locked():
            self._check_usable()
            self._catch_up()
            self._tree = self._tree or TreeFile.open(self.path)
            self._tree.follow(self._fd, self._size)
            yield self._tree

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if self._sealer is not None:
                self._sealer.forget()  # no sealing key outlives the lock it was read under
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Under the lock: take in what others appended, and recover a torn tail."""
        size = os.fstat(self._fd).st_size
        if self._chain is None:
            self._size = last_line_start(self._fd, size, self.path)
        elif size < self._size:
            raise LedgerCorruptError(self.path, f"the ledger shrank from {self._size} to {size} bytes")
        elif size == self._size:
            self._finish_interrupted_recovery()
            return
        region = os.pread(self._fd, size - self._size, self._size)
        complete = region.rfind(b"\n") + 1
        for line in region[:complete].split(b"\n")[:-1]:
            self._adopt(line)
        if complete and self._sealer is not None and self._sealer.opened:
            self._sealer.catch_up()  # another process may have sealed, and moved the shared state on
        if len(region) - complete > MAX_LINE_BYTES:  # no append of ours leaves that much unterminated
            raise LedgerCorruptError(self.path, f"the last line is unterminated and longer than {MAX_LINE_BYTES}"
                                                " bytes: not a torn append")
        if complete < len(region):
            self._recover(region[complete:])
        else:
            self._finish_interrupted_recovery()

    def _adopt(self, line: bytes) -> None:
        try:
            record = parse_line(line)
        except RecordFault as rf:
            raise LedgerCorruptError(self.path, f"record at byte {self._size} is bad: {rf.detail}") from None
        if self._chain is None:  # opening: the last record is the head; what lies before is the verifier's
            self._chain = self._continuing(record)
        else:
            self._link(record, self._size)
            if self._sealer is not None:
                self._sealer.observe(record)
        self._size += len(line) + 1

    # -- crash recovery ----------------------------------------------------------------

    def _recover(self, torn: bytes) -> None:
        quarantine(self.path, self._fd, self._size, torn)
        self._append_recovered(self._size, torn)

    def _finish_interrupted_recovery(self) -> None:
        """A crash between truncating a torn tail and recording it leaves only the quarantine file."""
        held = quarantine_path(self.path, self._size)
        if held.exists():
            self._append_recovered(self._size, held.read_bytes())

    def _append_recovered(self, offset: int, torn: bytes) -> None:
        self._write_locked(RECOVERED_KIND, recovered_data(self.path, offset, torn))


def append_checkpoint(writer: LedgerWriter, key: Ed25519PrivateKey) -> SignedCheckpoint:
    """Sign the head with ``key``, and the Merkle tree of records 0..head as a C2SP tlog-checkpoint
    (origin `origin_of` the ledger id), and record both as the next record, atomically."""
    ledger_id = writer.genesis.data["ledger_id"]
    key_id = key_id_of(raw_public_key(key.public_key()))
    origin = origin_of(ledger_id)
    signed: list[SignedCheckpoint] = []

    def sign(head: Record, size: int, root: bytes) -> dict[str, Any]:
        note = sign_note(TreeHead(origin, size, root).text(), origin, key)
        cp = sign_checkpoint(Checkpoint(ledger_id, head.seq, head.hash, utc_timestamp(), key_id), key)
        signed[:] = [replace(cp, tlog=note)]
        return signed[0].to_json()

    writer.checkpoint(sign)
    return signed[0]

"""Verify a ledger file: replay the chain and return a Verdict carrying its evidence.

Statuses and exit codes (the same in ``tools/verify_ledger.py``):

* ``intact`` (0): every complete record verified, and the auditor's checkpoint, if given, matched;
* ``broken`` (1): a fault, naming the first bad record;
* ``torn`` (3): every complete record verified but the file ends in an unterminated
  line, as a crash mid-append leaves it; the writer recovers it on its next open;
* ``unchecked`` (5): no fault, but the verifier had no signature checker and there was a
  signature to check (a checkpoint in the ledger, or the auditor's checkpoint or tree head): the
  chain is intact and nothing about who signed it is known. It outranks ``torn``, so that 0 and
  3 always mean that every signature verified.

An unreadable file raises LedgerReadError, which the command line reports with exit 2.

Lines are read at most MAX_LINE_BYTES + 1 bytes at a time, so a hostile file cannot make
the verifier hold more than one bounded line; a longer one is refused by `parse_line`.

Seals (`ledger.seal`) are checked after the chain: their structure always, their tags with
the auditor's sealing secret. The verdict says what they prove (sealed through which epoch,
and what is not sealed), as journald's does; a seal fault breaks the verdict like any other.

A large file is replayed in parallel: it is cut at line boundaries into one segment per
core, each worker replays its segment with the same `Chain` rules (resumed at the
segment's first seq), and the parent links each segment's first record to the last record
of the one before, in file order, so the verdict is exactly the serial one.

A caller that wants something computed from the records (an audit's summaries) can have it
computed in the same pass (`verify_and_tally`): each worker feeds every record its chain
accepted, in order, to a `Tally` of its own, and the parent merges a segment's tally only
once it has linked that segment, in file order, as far as the chain verified. The tally thus
holds exactly records 0 .. ``records - 1`` of the verdict: every one hashed, canonical and
linked, none after a fault, and the file is read once.

The verifier keeps a tally of its own the same way: the sealed content the records commit to
and its erasures (`ledger.content`, the spec's section 15), always counted. Given the content
store (``content_dir``), every reference not erased is checked against its file once the chain
is replayed. A missing, mismatched or malformed reference leaves the chain's status as it is,
and turns the exit code of an intact verdict into 7 (``EXIT_CONTENT``).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol, Self, TypeVar, cast

from ledger.chain import Chain, ChainFault, Fault, Genesis, SignatureCheck, TreeClaim
from ledger.checkpoint import SignedCheckpoint, ed25519_valid
from ledger.content import ContentReport, ContentTally, content_path, file_digest
from ledger.errors import LedgerReadError
from ledger.reader import records_backward
from ledger.record import MAX_LINE_BYTES, Record, sha3_tag
from ledger.seal import SealCheck, SealFault, SealReport
from ledger.tlog_text import TreeHead

EXIT_CODES = {"intact": 0, "broken": 1, "torn": 3, "unchecked": 5}
EXIT_CONTENT = 7  # intact, but a sealed reference that is not erased is missing, mismatched or malformed
PARALLEL_MIN_BYTES = 32 << 20  # below this, starting workers costs more than it saves
_COUNT_CHUNK = 16 << 20


class Tally(Protocol):
    """What a caller computes from verified records in the verifier's own pass (`verify_and_tally`).

    A tally is made in each worker (so its factory and its state must pickle), fed the records of
    one run of the file in order, and merged with the tally of the run that follows it.
    """

    def feed(self, record: Record) -> None:
        """One record the chain accepted: canonical, its hash checked, linked to the one before."""

    def merge(self, later: Self) -> None:
        """Take in ``later``, the tally of the records that directly follow this one's."""


T = TypeVar("T", bound=Tally)


@dataclass(frozen=True, slots=True)
class TornTail:
    offset: int
    length: int
    sha3_256: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "length": self.length, "sha3_256": self.sha3_256}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    path: str
    records: int
    first_ts: str | None
    last_ts: str | None
    head_seq: int | None
    head_hash: str | None
    ledger_id: str | None
    key_id: str | None
    checkpoints_in_ledger: int
    signatures_checked: bool
    fault: Fault | None = None
    torn: TornTail | None = None
    checkpoint: dict[str, Any] | None = None
    seals: SealReport | None = None
    tree: dict[str, Any] | None = None  # the Merkle tree of the records verified: size, root (hex)
    tree_head: dict[str, Any] | None = None  # the auditor's tree head: size, root, matched
    content: ContentReport | None = None  # the sealed content of the records verified

    @property
    def exit_code(self) -> int:
        code = EXIT_CODES[self.status]
        return EXIT_CONTENT if code == 0 and self.content is not None and self.content.faulty else code

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.status,
            "exit_code": self.exit_code,
            "path": self.path,
            "records": self.records,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "head": None if self.head_seq is None else {"seq": self.head_seq, "hash": self.head_hash},
            "ledger_id": self.ledger_id,
            "key_id": self.key_id,
            "checkpoints_in_ledger": self.checkpoints_in_ledger,
            "signatures_checked": self.signatures_checked,
            "checkpoint": self.checkpoint,
            "fault": None if self.fault is None else self.fault.to_json(),
            "torn_tail": None if self.torn is None else self.torn.to_json(),
            "seals": None if self.seals is None else self.seals.to_json(),
            "tree": self.tree,
            "tree_head": self.tree_head,
            "content": None if self.content is None else self.content.to_json(),
        }


def verify_file(
    path: Path,
    checkpoint: SignedCheckpoint | None = None,
    public_key: bytes | None = None,
    check_signature: SignatureCheck | None = ed25519_valid,
    jobs: int | None = None,
    seal_secret: bytes | None = None,
    now: datetime | None = None,
    tree_head: str | None = None,
    content_dir: Path | None = None,
) -> Verdict:
    """Replay ``path``. ``public_key`` is the raw key the auditor holds (appliance.pub),
    ``seal_secret`` the initial sealing secret of their enrollment, and ``now`` their clock
    (to report how stale the last seal is).

    ``tree_head`` is a C2SP checkpoint note the auditor holds (a witness's cosigned one, say):
    signed by the appliance key, it pins the Merkle tree of the first records it counts.

    ``content_dir`` is the content store (``HOME/content``): every sealed reference that is not
    erased must have its file there, of the SHA3-256 it states.

    ``jobs`` is the number of worker processes; by default one per core for files of at
    least PARALLEL_MIN_BYTES, else none.
    """
    return _verify(path, checkpoint, public_key, check_signature, jobs, seal_secret, now, None, tree_head,
                   content_dir)[0]


def verify_and_tally(
    path: Path,
    make_tally: Callable[[], T],
    checkpoint: SignedCheckpoint | None = None,
    public_key: bytes | None = None,
    check_signature: SignatureCheck | None = ed25519_valid,
    jobs: int | None = None,
    seal_secret: bytes | None = None,
    now: datetime | None = None,
    tree_head: str | None = None,
    content_dir: Path | None = None,
) -> tuple[Verdict, T]:
    """`verify_file`, and a tally of the records the verdict covers (records 0 .. ``records - 1``),
    computed in the same pass: ``make_tally`` is called once per worker (and in this process)."""
    verdict, tally = _verify(path, checkpoint, public_key, check_signature, jobs, seal_secret, now, make_tally,
                             tree_head, content_dir)
    assert tally is not None
    return verdict, tally


class _Tallies:
    """The verifier's own tally (sealed content) and the caller's, if any, fed and merged together."""

    __slots__ = ("caller", "content")

    def __init__(self, caller: Tally | None) -> None:
        self.content = ContentTally()
        self.caller = caller

    def feed(self, record: Record) -> None:
        self.content.feed(record)
        if self.caller is not None:
            self.caller.feed(record)

    def merge(self, later: _Tallies) -> None:
        self.content.merge(later.content)
        if self.caller is not None and later.caller is not None:
            self.caller.merge(later.caller)


@dataclass(frozen=True, slots=True)
class _MakeTallies:
    """Makes a worker's `_Tallies` (it pickles as long as the caller's factory does)."""

    make: Callable[[], Tally] | None

    def __call__(self) -> _Tallies:
        return _Tallies(self.make() if self.make is not None else None)


def _verify(path: Path, checkpoint: SignedCheckpoint | None, public_key: bytes | None,
            check_signature: SignatureCheck | None, jobs: int | None, seal_secret: bytes | None,
            now: datetime | None, make_tally: Callable[[], T] | None,
            tree_head: str | None = None, content_dir: Path | None = None) -> tuple[Verdict, T | None]:
    chain = Chain(check_signature, public_key, checkpoint, tree_head)
    make = _MakeTallies(make_tally)
    try:
        size = os.stat(path).st_size
        if jobs is None:
            jobs = (os.cpu_count() or 1) if size >= PARALLEL_MIN_BYTES else 1
        replayed = _replay_parallel(Path(path), chain, jobs, make) if jobs > 1 else None
        if replayed is None:
            chain = Chain(check_signature, public_key, checkpoint, tree_head)
            tally = make()
            with open(path, "rb") as handle:
                end, fault, torn, _ = _replay(handle, chain, 0, None, tally)
        else:
            end, fault, torn, tally = replayed
        if fault is None:
            try:
                chain.finish()
            except ChainFault as cf:
                fault = cf.fault
    except OSError as exc:
        raise LedgerReadError(f"cannot read ledger {path}: {exc.strerror}") from None
    verdict = replace(_verdict(Path(path), chain, checkpoint, fault, torn, end),
                      content=_content(tally.content, content_dir))
    return _sealed(Path(path), verdict, chain, seal_secret, now), cast(T | None, tally.caller)


def _content(tally: ContentTally, store: Path | None) -> ContentReport:
    """The content report, each reference not erased checked against its file in ``store``."""
    if store is None:
        return tally.report()
    if not store.is_dir():
        raise LedgerReadError(f"cannot read content store {store}: not a directory")

    def digest_of(ident: str) -> str | None:
        try:
            return file_digest(content_path(store, ident))
        except OSError as exc:
            raise LedgerReadError(f"cannot read content file {content_path(store, ident)}: {exc.strerror}") from None

    return tally.report(digest_of, str(store))


def _sealed(path: Path, verdict: Verdict, chain: Chain, seal_secret: bytes | None, now: datetime | None) -> Verdict:
    """``verdict``, with the seals checked after the chain."""
    if verdict.status == "broken" or not (chain.sealing or seal_secret is not None):
        return verdict
    try:
        seals = _check_seals(path, chain, seal_secret, now)
    except SealFault as sf:
        return replace(verdict, status="broken", fault=Fault(sf.reason, sf.seq, sf.seq + 1, None, sf.detail,
                                                             sf.expected, sf.actual))
    return replace(verdict, seals=seals)


def _check_seals(path: Path, chain: Chain, secret: bytes | None, now: datetime | None) -> SealReport:
    check = SealCheck(secret)
    for record in chain.sealing:
        check.feed(record)
    anchor = check.current.last_seal or check.current.enrollment if check.current is not None else None
    first_unsealed = None
    if anchor is not None and chain.head is not None and chain.head.seq > anchor.seq:
        after = records_backward(path, stop_at=0)
        first_unsealed = next((located.record for located in after if located.record.seq == anchor.seq + 1), None)
    return check.finish(chain.head, first_unsealed, now)


def _replay(handle: IO[bytes], chain: Chain, offset: int, end: int | None,
            tally: Tally | None = None) -> tuple[int, Fault | None, TornTail | None, Record | None]:
    """Feed lines from ``offset`` up to ``end`` (or the end of the file) into ``chain``, and each
    record it accepts into ``tally``."""
    first: Record | None = None
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if end is not None and offset >= end:
            break
        if raw.endswith(b"\n"):
            line = raw[:-1]
        elif len(raw) <= MAX_LINE_BYTES:  # no append of ours could leave a longer one
            return offset, None, TornTail(offset, len(raw), sha3_tag(raw)), first
        else:
            line = raw  # the start of an over-long line, which the record rules refuse
        try:
            record = chain.feed(line, offset)
        except ChainFault as cf:
            return offset, cf.fault, None, first
        if tally is not None:
            tally.feed(record)
        first = first or record
        offset += len(raw)
    return offset, None, None, first


@dataclass(frozen=True, slots=True)
class _Segment:
    end: int
    fault: Fault | None
    torn: TornTail | None
    first: Record | None
    last: Record | None
    count: int
    checkpoints: int
    sealing: list[Record]
    blocks: list[tuple[bytes, int]]  # the segment's aligned perfect Merkle subtrees
    claims: list[TreeClaim]  # and the roots claimed within it
    tally: _Tallies  # of the records before the fault, if any: valid once `first` is linked


def _replay_segment(path: Path, start: int, end: int, seq: int, genesis: Genesis,
                    check_signature: SignatureCheck | None, public_key: bytes | None,
                    checkpoint: SignedCheckpoint | None, make_tally: _MakeTallies,
                    tree_pin: TreeHead | None = None) -> _Segment:
    """A worker: replay one segment with a chain resumed at ``seq`` (and the auditor's tree head,
    its signature checked by the caller at record 0)."""
    chain = Chain(check_signature, public_key, checkpoint)
    chain.resume(genesis, seq)
    chain.tree_pin = tree_pin
    tally = make_tally()
    with open(path, "rb") as handle:
        handle.seek(start)
        offset, fault, torn, first = _replay(handle, chain, start, end, tally)
    return _Segment(offset, fault, torn, first, chain.head, chain.count, chain.checkpoints, chain.sealing,
                    chain.tree.blocks() if chain.tree is not None else [], chain.claims, tally)


class _ReplaySerially(Exception):
    """A fault the parallel replay found but cannot place: replay serially, which does."""


_Replayed = tuple[int, Fault | None, TornTail | None, _Tallies]


def _replay_parallel(path: Path, chain: Chain, jobs: int, make_tally: _MakeTallies) -> _Replayed | None:
    """Replay in ``jobs`` processes, or return None if they could not run (replay serially then)."""
    try:
        return _replay_segments(path, chain, jobs, make_tally)
    except (BrokenProcessPool, OSError, _ReplaySerially):
        return None


def _replay_segments(path: Path, chain: Chain, jobs: int, make_tally: _MakeTallies) -> _Replayed:
    tally = make_tally()
    with open(path, "rb") as handle:
        genesis_end = len(handle.readline(MAX_LINE_BYTES + 1))
        handle.seek(0)
        offset, fault, torn, _ = _replay(handle, chain, 0, genesis_end, tally)
    if fault or torn or chain.genesis is None:
        return offset, fault, torn, tally
    # fork is safe and quick in a single-threaded caller such as the command line; a caller
    # with other threads gets workers from a clean forkserver instead.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_replay_segment, path, start, end, seq, chain.genesis, chain.check_signature,
                               chain.public_key, chain.pin, make_tally, chain.tree_pin)
                   for start, end, seq in _segments(path, offset, jobs)]
        for future in futures:
            segment = future.result()
            if segment.first is not None and not (segment.fault and segment.fault.offset == offset):
                try:  # the link the worker could not check: to the previous segment's last record
                    chain.link(segment.first, offset)
                except ChainFault as cf:
                    return offset, cf.fault, None, tally
                try:
                    chain.absorb(segment.last or segment.first, segment.count, segment.checkpoints, segment.sealing,
                                 segment.blocks, segment.claims)
                except ChainFault:  # a tree fault inside a segment: the serial replay locates it
                    raise _ReplaySerially from None
                tally.merge(segment.tally)
            offset = segment.end
            if segment.fault or segment.torn:
                for rest in futures:
                    rest.cancel()
                return offset, segment.fault, segment.torn, tally
    return offset, None, None, tally


def _segments(path: Path, start: int, parts: int) -> list[tuple[int, int, int]]:
    """Cut [start, EOF) at line boundaries into up to ``parts`` pieces: (start, end, first seq).

    It reads the file a chunk at a time (``pread``): a mapping of the whole file would count, page
    by page as the lines are counted, in this process's resident memory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        cuts = [start]
        for k in range(1, parts):
            at = _line_after(fd, max(cuts[-1], start + (size - start) * k // parts), size)
            if 0 < at < size:
                cuts.append(at)
        cuts.append(size)
        segments, seq = [], 1
        for a, b in itertools.pairwise(cuts):
            if b > a:
                segments.append((a, b, seq))
            seq += sum(os.pread(fd, min(_COUNT_CHUNK, b - i), i).count(b"\n") for i in range(a, b, _COUNT_CHUNK))
    finally:
        os.close(fd)
    return segments


def _line_after(fd: int, pos: int, size: int) -> int:
    """The offset just past the first ``\\n`` at or after ``pos``, or 0 if there is none."""
    while pos < size:
        block = os.pread(fd, min(1 << 16, size - pos), pos)
        at = block.find(b"\n")
        if at >= 0:
            return pos + at + 1
        pos += len(block)
    return 0


def _verdict(path: Path, chain: Chain, checkpoint: SignedCheckpoint | None, fault: Fault | None,
             torn: TornTail | None, offset: int) -> Verdict:
    cp = checkpoint.checkpoint if checkpoint else None
    if fault is None and chain.count == 0:
        fault = Fault("bad_genesis", 0, 1, 0, "the ledger has no complete record", "ledger.genesis", None)
    if fault is None and cp is not None and chain.count <= cp.seq:
        fault = Fault("truncated_below_checkpoint", cp.seq, cp.seq + 1, offset,
                      "the ledger ends before the record the checkpoint signed",
                      f"record {cp.seq}", f"last record {chain.count - 1}")
    pin = chain.tree_pin
    if fault is None and pin is not None and chain.count < pin.size:
        fault = Fault("truncated_below_checkpoint", pin.size - 1, pin.size, offset,
                      "the ledger ends before the last record your tree head counts",
                      f"{pin.size} records", f"{chain.count} records")
    # A tree head the auditor holds is signed too: with no checker, its signature went unchecked.
    unchecked = chain.check_signature is None and (chain.checkpoints > 0 or checkpoint is not None
                                                   or chain.tree_note is not None)
    status = "broken" if fault else "unchecked" if unchecked else "torn" if torn else "intact"
    head = chain.head
    genesis = chain.genesis
    return Verdict(
        status=status,
        path=str(path),
        records=chain.count,
        first_ts=chain.first_ts,
        last_ts=head.ts if head else None,
        head_seq=head.seq if head else None,
        head_hash=head.hash if head else None,
        ledger_id=genesis.ledger_id if genesis else None,
        key_id=genesis.key_id if genesis else None,
        checkpoints_in_ledger=chain.checkpoints,
        signatures_checked=chain.check_signature is not None,
        fault=fault,
        torn=torn,
        checkpoint=None if cp is None else {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts, "matched": fault is None},
        tree=None if chain.tree is None or fault is not None else {"size": chain.tree.size,
                                                                    "root": chain.tree.root().hex()},
        tree_head=None if pin is None else {"size": pin.size, "root": pin.root.hex(), "matched": fault is None},
    )

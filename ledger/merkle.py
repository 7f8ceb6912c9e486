"""The RFC 9162 Merkle tree over the ledger's lines: hashing, proofs, and their verification (pure).

The tree is a second commitment beside the SHA3-256 chain, in the form transparency logs share
(RFC 9162 section 2.1, with SHA-256 as the C2SP tlog-checkpoint specification requires), so that
existing checkpoint, witness and proof software can take part. Leaf *i* is the exact bytes of
line *i* of the ledger without its newline. The hashes, part of the documented contract::

    leaf_hash(d)   = SHA-256(0x00 || d)
    node(l, r)     = SHA-256(0x01 || l || r)
    MTH({})        = SHA-256("")
    MTH(D[n])      = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two below n

The distinct prefixes keep a leaf from ever being read as a node (second-preimage resistance).

Invariants:

* the verifiers (`verify_inclusion`, `verify_consistency`) never raise, whatever they are given:
  a wrong type, a hash that is not 32 bytes, an index at or past the size, sizes out of order,
  or a proof of the wrong length each give a `ProofVerdict` that is not ``ok`` and names why;
* a proof's length is fixed by the index and the sizes alone, and is checked before any hashing,
  so a proof that is one hash too long or too short is refused as such, never "mostly" verified;
* a root stands for a tree only together with its size: a proof's length and shape fix the size
  only up to neighbours that share them (leaf 0 of a tree of 3 and of 4 has the same path), so
  the size must come from the same signed checkpoint as the root, as C2SP tlog-checkpoint has it;
* the provers (`inclusion_proof`, `consistency_proof`) read subtree hashes through an accessor
  (`Subtrees`) and do no I/O of their own.

Cost: a proof asks its accessor for O(log n) subtrees. `from_leaves` answers from leaf hashes
alone (O(n) per proof); `ledger.tree` answers from the subtree hashes it keeps on disk, each
range in O(log n) reads, so a proof in a ledger of millions of records takes milliseconds.
`Frontier` folds leaves in one at a time and gives the root at any size it passes (the writer,
the verifiers).

``tools/verify_ledger.py`` implements the same verification with the standard library alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.errors import ProofRequestError

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT = hashlib.sha256(b"").digest()
LeafHashes = Callable[[int], bytes]  # leaf index -> its leaf hash
Subtrees = Callable[[int, int], bytes]  # (lo, hi) -> MTH(D[lo:hi]), asked only for ranges a proof names


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf (one ledger line without its newline)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH over the leaf hashes, in one pass and O(log n) memory.

    Perfect subtrees are merged as soon as two of equal size meet; at the end the remaining
    ones (decreasing in size, left to right) are folded from the right, which is exactly the
    RFC's split at the largest power of two below n.
    """
    stack: list[tuple[bytes, int]] = []
    for h in leaf_hashes:
        current, size = h, 1
        while stack and stack[-1][1] == size:
            left, _ = stack.pop()
            current, size = node_hash(left, current), size * 2
        stack.append((current, size))
    if not stack:
        return EMPTY_ROOT
    acc = stack.pop()[0]
    while stack:
        acc = node_hash(stack.pop()[0], acc)
    return acc


class Frontier:
    """The perfect subtrees on the right edge of a growing tree: push leaves, read the root.

    Holds O(log n) hashes; pushing a leaf costs one hash per subtree it completes (amortised
    one). ``root()`` folds the frontier exactly as `root` does.

    A frontier may start at leaf ``offset`` rather than 0 (a verifier's worker, replaying a
    segment of the ledger): it then merges only subtrees aligned as they are in the whole tree,
    so its `blocks` are the segment's aligned perfect subtrees, which the frontier of the leaves
    before it takes in with `push_subtree`. Only a frontier from 0 has a root.
    """

    __slots__ = ("_stack", "offset", "size")

    def __init__(self, offset: int = 0) -> None:
        self._stack: list[tuple[bytes, int]] = []  # (hash, span), largest first
        self.offset = self.size = offset

    @classmethod
    def of(cls, subtrees: list[bytes], size: int) -> Frontier:
        """The frontier of a tree of ``size`` leaves from its perfect subtrees, largest first
        (one per bit set in ``size``, as `perfect_ranges(0, size)` lists them)."""
        frontier = cls()
        spans = [hi - lo for lo, hi in perfect_ranges(0, size)]
        if len(spans) != len(subtrees):
            raise ValueError(f"a tree of size {size} has {len(spans)} perfect subtrees, not {len(subtrees)}")
        frontier._stack, frontier.size = list(zip(subtrees, spans, strict=True)), size
        return frontier

    def copy(self) -> Frontier:
        twin = Frontier(self.offset)
        twin._stack, twin.size = list(self._stack), self.size
        return twin

    def blocks(self) -> list[tuple[bytes, int]]:
        """The aligned perfect subtrees held, (hash, span), leftmost first."""
        return list(self._stack)

    def push(self, leaf: bytes) -> None:
        """Add a leaf hash (`push_subtree` of span 1, written out: the verifier's per-line cost)."""
        if self.offset:
            self.push_subtree(leaf, 1)
            return
        stack, span, digest = self._stack, 1, leaf
        while stack and stack[-1][1] == span:
            digest, span = _sha256(b"\x01" + stack.pop()[0] + digest).digest(), span * 2
        stack.append((digest, span))
        self.size += 1

    def push_subtree(self, digest: bytes, span: int) -> None:
        """Add the hash of an aligned perfect subtree of ``span`` leaves (a power of two that
        divides the size): one leaf, or one of another frontier's `blocks`."""
        stack = self._stack
        end = self.size + span
        while stack and stack[-1][1] == span and (end - 2 * span) % (2 * span) == 0:
            digest, span = node_hash(stack.pop()[0], digest), span * 2
        stack.append((digest, span))
        self.size = end

    def push_nodes(self, leaf: bytes) -> list[bytes]:
        """Add a leaf hash; return the nodes it completes in post-order: the leaf itself, then
        each perfect subtree it closes, smallest first (how `ledger.tree` lays them on disk)."""
        made, span, digest, stack = [leaf], 1, leaf, self._stack
        while stack and stack[-1][1] == span:
            digest, span = node_hash(stack.pop()[0], digest), span * 2
            made.append(digest)
        stack.append((digest, span))
        self.size += 1
        return made

    def root(self) -> bytes:
        if self.offset:
            raise ValueError("a frontier that starts after leaf 0 has no root")
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1][0]
        for h, _ in reversed(self._stack[:-1]):
            acc = node_hash(h, acc)
        return acc


def perfect_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into aligned perfect subtrees, largest first, as a proof's ranges are: each
    range a proof names starts at a multiple of a power of two at least its length, so it is
    these subtrees folded from the right."""
    ranges = []
    while lo < hi:
        span = lo & -lo if lo else 1 << ((hi - lo).bit_length() - 1)
        while lo + span > hi:
            span >>= 1
        ranges.append((lo, lo + span))
        lo += span
    return ranges


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def from_leaves(get_leaf_hash: LeafHashes) -> Subtrees:
    """A `Subtrees` that folds the leaf hashes of each range it is asked for (O(n) per proof)."""
    return lambda lo, hi: root(get_leaf_hash(i) for i in range(lo, hi))


def inclusion_proof(index: int, size: int, subtree: Subtrees) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 section 2.1.3.1: the sibling hashes from the leaf up.

    Asks ``subtree`` for one range per level. Raises ProofRequestError unless 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ProofRequestError(f"no inclusion proof for index {index} in a tree of size {size}")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:  # walk down, collecting the sibling subtrees; the path lists them bottom-up
        k = _split(hi - lo)
        if m < k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, subtree: Subtrees) -> list[bytes]:
    """PROOF(old_size, D[new_size]) = SUBPROOF(old_size, D[new_size], true), RFC 9162 section 2.1.4.1.

    Empty when the sizes are equal or ``old_size`` is 0 (every tree extends the empty one).
    Asks ``subtree`` for one range per level. Raises ProofRequestError unless
    0 <= old_size <= new_size.
    """
    if not 0 <= old_size <= new_size:
        raise ProofRequestError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(subtree(lo, hi))
    proof.reverse()
    return proof


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProofVerdict:
    """Whether a proof verified; if not, a reason code and one line saying what was wrong.

    Reason codes: ``bad_input`` (a value of the wrong type or a hash that is not 32 bytes),
    ``out_of_range`` (an index at or past the size, or sizes out of order), ``wrong_length``
    (the proof has more or fewer hashes than the sizes demand), ``root_mismatch`` (the hashes
    do not recompute the claimed root or roots).
    """

    ok: bool
    kind: str  # "inclusion" or "consistency"
    reason: str | None = None
    detail: str | None = None
    expected: str | None = None  # hex, for root_mismatch
    actual: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "kind": self.kind, "reason": self.reason, "detail": self.detail,
                "expected": self.expected, "actual": self.actual}


def _size(value: object) -> bool:
    return type(value) is int and value >= 0


def _hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _proof_problem(proof: object) -> str | None:
    if not isinstance(proof, (list, tuple)):
        return f"the proof must be a list of hashes, not {type(proof).__name__}"
    for i, h in enumerate(proof):
        if not _hash(h):
            return f"proof hash {i} is not {HASH_SIZE} bytes"
    return None


def inclusion_path_length(index: int, size: int) -> int:
    """How many hashes PATH(index, D[size]) holds (0 <= index < size): the levels below the point
    where index and the last leaf part ways, plus one per left sibling above it."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_length(old_size: int, new_size: int) -> int:
    """How many hashes PROOF(old_size, D[new_size]) holds (0 < old_size < new_size): the inclusion
    path of leaf old_size - 1 above the largest perfect subtree ending there, plus that subtree's
    hash unless it is the whole old tree."""
    shift = (old_size & -old_size).bit_length() - 1
    length = inclusion_path_length(old_size - 1, new_size) - shift
    return length if old_size == 1 << shift else length + 1


def _bad(kind: str, reason: str, detail: str, expected: bytes | None = None,
         actual: bytes | None = None) -> ProofVerdict:
    return ProofVerdict(False, kind, reason, detail, None if expected is None else expected.hex(),
                        None if actual is None else actual.hex())


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> ProofVerdict:
    """RFC 9162 section 2.1.3.2: does ``proof`` place ``leaf_hash`` at ``index`` in the tree of
    ``size`` leaves whose root is ``root``? Never raises."""
    kind = "inclusion"
    if not (_size(index) and _size(size)):
        return _bad(kind, "bad_input", "index and size must be non-negative integers")
    if not (_hash(leaf_hash) and _hash(root)):
        return _bad(kind, "bad_input", f"the leaf hash and the root must be {HASH_SIZE} bytes")
    if (problem := _proof_problem(proof)) is not None:
        return _bad(kind, "bad_input", problem)
    if index >= size:
        return _bad(kind, "out_of_range", f"index {index} is not in a tree of size {size}")
    want = inclusion_path_length(index, size)
    if len(proof) != want:
        return _bad(kind, "wrong_length",
                    f"the proof has {len(proof)} hashes; index {index} in a tree of size {size} needs {want}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if r != root:
        return _bad(kind, "root_mismatch",
                    f"the proof for index {index} recomputes a different root for size {size}", root, r)
    return ProofVerdict(True, kind)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> ProofVerdict:
    """RFC 9162 section 2.1.4.2: does ``proof`` show that the tree of ``new_size`` leaves with root
    ``new_root`` extends the tree of ``old_size`` leaves with root ``old_root``? Never raises.

    The RFC leaves two cases to the caller, decided here as transparency-dev/merkle does, but
    strictly: equal sizes need an empty proof and equal roots; ``old_size`` 0 needs an empty proof
    and ``old_root`` the empty tree's root.
    """
    kind = "consistency"
    if not (_size(old_size) and _size(new_size)):
        return _bad(kind, "bad_input", "the sizes must be non-negative integers")
    if not (_hash(old_root) and _hash(new_root)):
        return _bad(kind, "bad_input", f"both roots must be {HASH_SIZE} bytes")
    if (problem := _proof_problem(proof)) is not None:
        return _bad(kind, "bad_input", problem)
    if old_size > new_size:
        return _bad(kind, "out_of_range", f"old size {old_size} is larger than new size {new_size}")
    if old_size in (0, new_size):
        return _trivial_consistency(old_size, new_size, old_root, new_root, proof)
    want = consistency_proof_length(old_size, new_size)
    if len(proof) != want:
        return _bad(kind, "wrong_length",
                    f"the proof has {len(proof)} hashes; from size {old_size} to {new_size} it needs {want}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old tree is itself the first subtree
        path.insert(0, old_root)
    fr, sr = _consistency_roots(old_size, new_size, path)
    if fr != old_root:
        return _bad(kind, "root_mismatch",
                    f"the proof recomputes a different root for the old size {old_size}", old_root, fr)
    if sr != new_root:
        return _bad(kind, "root_mismatch",
                    f"the proof recomputes a different root for the new size {new_size}", new_root, sr)
    return ProofVerdict(True, kind)


def _trivial_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                         proof: Sequence[bytes]) -> ProofVerdict:
    """Old size 0 or equal sizes: no proof, and the old root fixed by the new tree alone."""
    if proof:
        return _bad("consistency", "wrong_length",
                    f"the proof has {len(proof)} hashes; from size {old_size} to {new_size} it needs 0")
    want_old = EMPTY_ROOT if old_size == 0 else new_root
    if old_root != want_old:
        which = "the empty tree's root" if old_size == 0 else "the new root, the sizes being equal"
        return _bad("consistency", "root_mismatch", f"the old root is not {which}", want_old, old_root)
    return ProofVerdict(True, "consistency")


def _consistency_roots(old_size: int, new_size: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 3 to 6 of RFC 9162 section 2.1.4.2: the old and new roots ``path`` recomputes."""
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr, sr

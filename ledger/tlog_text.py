"""The text forms of C2SP transparency logs: checkpoint bodies, witness requests and tlog-proofs (pure).

* tlog-checkpoint: a note text of at least three lines, ``origin``, ``size`` (decimal, no leading
  zero) and ``base64(root)``, then optional non-empty extension lines;
* tlog-witness add-checkpoint request: ``old <size>``, at most 63 base64 consistency-proof
  hashes, a blank line, then the signed checkpoint note;
* tlog-proof: ``c2sp.org/tlog-proof@v1``, an optional ``extra <base64>``, ``index <n>``, the
  base64 inclusion-proof hashes, a blank line, then the signed checkpoint note.

Every number is ASCII decimal with no leading zero and at most 2^63-1 (the sizes Go's tlog reads,
and far past any log), every hash is 32 bytes in canonical base64, every line ends in a newline.
Parsers check form only: that the signatures verify (`ledger.note.open_note`), the proofs
(`ledger.merkle`), and what a size or index means against the checkpoint are the caller's.
Constructors check the same rules, so ``parse(x.encode()) == x`` for every value that exists.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ledger.errors import NoteError
from ledger.note import MAX_NOTE_BYTES, b64_exact, split_note

HASH_SIZE = 32
MAX_SIZE = 2**63 - 1
MAX_PROOF_HASHES = 63  # tlog-witness: "MUST NOT send more than 63 consistency proof lines"
MAX_BODY_BYTES = MAX_NOTE_BYTES + 64 * 64  # a note, and the proof lines before it
PROOF_HEADER = "c2sp.org/tlog-proof@v1"
DECIMAL_RE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")  # ASCII only: not \d


def decimal(text: str, what: str) -> int:
    """A decimal with no leading zero, at most 2^63-1, or NoteError."""
    if not DECIMAL_RE.match(text) or int(text) > MAX_SIZE:
        raise NoteError(f"{what} {text[:40]!r} is not a decimal from 0 to 2^63-1 without leading zeros")
    return int(text)


def _hash_line(text: str, what: str) -> bytes:
    raw = b64_exact(text, what)
    if len(raw) != HASH_SIZE:
        raise NoteError(f"{what} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_int(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise NoteError(f"{what} must be an integer from 0 to 2^63-1, not {value!r}")


def _check_hashes(hashes: object, what: str) -> None:
    if not isinstance(hashes, tuple) or not all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes):
        raise NoteError(f"{what} must be a tuple of {HASH_SIZE}-byte hashes")
    if len(hashes) > MAX_PROOF_HASHES:
        raise NoteError(f"{what} has more than {MAX_PROOF_HASHES} hashes")


def _line_problem(line: object, what: str) -> None:
    if not isinstance(line, str) or not line or any(ch < " " for ch in line):
        raise NoteError(f"{what} must be a non-empty line without control characters")


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tlog-checkpoint body: the log's origin, its tree size and root hash, and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _line_problem(self.origin, "the origin")
        _check_int(self.size, "the tree size")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise NoteError(f"the root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise NoteError("the extension lines must be a tuple")
        for line in self.extensions:
            _line_problem(line, "an extension line")

    def text(self) -> str:
        """The note text: origin, size, base64 root and the extension lines, each ending in a newline."""
        return "".join(f"{line}\n" for line in (self.origin, str(self.size), _b64(self.root), *self.extensions))


def parse_checkpoint_text(text: str) -> TreeHead:
    """The TreeHead a checkpoint note's text states, or NoteError naming the first problem."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise NoteError("a checkpoint text ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"a checkpoint has at least three lines, not {len(lines)}")
    if not lines[0]:
        raise NoteError("the checkpoint origin is empty")
    size = decimal(lines[1], "the tree size")
    root = _hash_line(lines[2], "the root hash")
    if any(not line for line in lines[3:]):
        raise NoteError("a checkpoint extension line is empty")
    return TreeHead(lines[0], size, root, tuple(lines[3:]))


def tree_head_of(note: str) -> TreeHead:
    """The TreeHead of a signed checkpoint note, checked for form only (no signature is verified)."""
    text, _ = split_note(note)
    return parse_checkpoint_text(text)


def _split_body(raw: bytes, what: str) -> tuple[list[str], str]:
    """The header lines of a request or proof (up to the first blank line) and the note after it."""
    if not isinstance(raw, bytes):
        raise NoteError(f"{what} must be bytes")
    if len(raw) > MAX_BODY_BYTES:
        raise NoteError(f"{what} is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise NoteError(f"{what} has no blank line before its checkpoint")
    return head.split("\n"), note


def _proof_lines(lines: list[str], what: str) -> tuple[bytes, ...]:
    if len(lines) > MAX_PROOF_HASHES:
        raise NoteError(f"{what} has more than {MAX_PROOF_HASHES} lines")
    return tuple(_hash_line(line, f"{what} line {i + 1}") for i, line in enumerate(lines))


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """A tlog-witness add-checkpoint request: the size the witness last cosigned, a consistency
    proof from it, and the signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: str

    def __post_init__(self) -> None:
        _check_int(self.old_size, "the old size")
        _check_hashes(self.proof, "the consistency proof")
        tree_head_of(self.checkpoint)

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}", *(_b64(h) for h in self.proof)]
        return ("".join(f"{line}\n" for line in lines) + "\n" + self.checkpoint).encode("utf-8")


def parse_add_checkpoint(raw: bytes) -> AddCheckpoint:
    """An add-checkpoint request body, or NoteError naming the first problem."""
    lines, note = _split_body(raw, "the request")
    first = lines[0]
    if not first.startswith("old "):
        raise NoteError("the request does not start with an 'old <size>' line")
    return AddCheckpoint(decimal(first[4:], "the old size"), _proof_lines(lines[1:], "the consistency proof"), note)


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A c2sp.org/tlog-proof@v1: optional unauthenticated extra data, the entry's index, its
    inclusion proof, and the signed checkpoint note the proof leads to."""

    extra: bytes | None
    index: int
    proof: tuple[bytes, ...]
    checkpoint: str

    def __post_init__(self) -> None:
        if self.extra is not None and not isinstance(self.extra, bytes):
            raise NoteError("the extra data must be bytes or None")
        _check_int(self.index, "the index")
        _check_hashes(self.proof, "the inclusion proof")
        tree_head_of(self.checkpoint)

    def tree_head(self) -> TreeHead:
        return tree_head_of(self.checkpoint)

    def encode(self) -> bytes:
        extra = [] if self.extra is None else [f"extra {_b64(self.extra)}"]
        lines = [PROOF_HEADER, *extra, f"index {self.index}", *(_b64(h) for h in self.proof)]
        return ("".join(f"{line}\n" for line in lines) + "\n" + self.checkpoint).encode("utf-8")


def parse_tlog_proof(raw: bytes) -> TlogProof:
    """A tlog-proof file, or NoteError naming the first problem."""
    lines, note = _split_body(raw, "the proof")
    if lines[0] != PROOF_HEADER:
        raise NoteError(f"the proof does not start with {PROOF_HEADER}")
    extra, at = None, 1
    if at < len(lines) and lines[at].startswith("extra "):
        extra, at = b64_exact(lines[at][6:], "the extra data"), at + 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise NoteError("the proof has no 'index <n>' line")
    index = decimal(lines[at][6:], "the index")
    return TlogProof(extra, index, _proof_lines(lines[at + 1:], "the inclusion proof"), note)


__all__ = ["AddCheckpoint", "TlogProof", "TreeHead", "parse_add_checkpoint", "parse_checkpoint_text",
           "parse_tlog_proof", "tree_head_of"]

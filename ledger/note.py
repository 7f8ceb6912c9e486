"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures and tlog-cosignature/v1 (pure).

A signed note is a text ending in a newline, a blank line, and one or more signature lines
``— <name> base64(key id || signature)``; the text is separated from the signatures by the
*last* blank line. A key is named by (name, key id), the id being

    key_id = SHA-256(name || 0x0A || signature type || public key)[:4]

with type 0x01 for Ed25519 over the text, and 0x04 for a timestamped cosignature, whose
signature bytes are ``u64 big-endian timestamp || Ed25519 signature`` over
``"cosignature/v1\\ntime <timestamp>\\n" || text``. These forms are the published contract:
changing one changes every key id and signature.

Invariants:

* `open_note` never raises, whatever it is given; its `NoteVerdict` is ``ok`` only if the
  whole note parses, every signature line whose (name, key id) is a known key verifies, and
  at least one does. Syntax is checked in full before any signature, so a malformed note is
  ``malformed`` whatever its signatures would have said;
* a line whose name or key id (not both) differs from every known key is unknown: listed, and
  otherwise ignored. One that matches both is verified against that key, and if it fails the
  note fails, whichever key really made it (the id is short, so collisions can be computed);
* every base64 field is accepted in its one canonical spelling only (RFC 4648 section 4,
  padded, unused bits zero), so a signed note has one form; the standard-library twin in
  tools/verify_ledger.py applies the same rules and messages.

Deliberate differences from golang.org/x/mod/sumdb/note: a second signature line from a known
key is verified too (the spec says a known key's bad signature fails the note), and a verifier
key listed twice is one key, not an ambiguous one; two *different* keys sharing a name and id
are ambiguous.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.checkpoint import ed25519_valid, raw_public_key
from ledger.errors import NoteError

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
SIGNATURE_TYPES = {ED25519: "Ed25519", COSIGNATURE_V1: "cosignature/v1"}
KEY_SIZE = 32
MAX_SIGNATURES = 100  # the spec asks for at least 16; x/mod/sumdb/note also stops at 100
MAX_NOTE_BYTES = 1 << 20  # a bound on work before any parsing (the spec allows size or count)
MAX_TIMESTAMP = 2**63 - 1
SIG_PREFIX = "— "  # U+2014, then a space
COSIGNATURE_HEADER = "cosignature/v1\n"
CONTROL_RE = re.compile("[\x00-\x09\x0b-\x1f]")  # every ASCII control character but newline

# The reason codes of a NoteVerdict that is not ok.
MALFORMED = "malformed"
NO_KNOWN_SIGNATURE = "no_known_signature"
BAD_SIGNATURE = "bad_signature"
AMBIGUOUS_KEY = "ambiguous_key"
FUTURE_TIMESTAMP = "future_timestamp"


def key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]: the 4-byte id a signature line carries."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()[:4]


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a key (non-empty, no Unicode space, no '+', no control character)."""
    if not isinstance(name, str) or not name:
        return "a key name must be a non-empty string"
    if "+" in name:
        return f"key name {name!r} contains '+'"
    if any(ch.isspace() or ch < " " for ch in name):
        return f"key name {name!r} contains a space or a control character"
    return None


def b64_exact(text: str, what: str) -> bytes:
    """Decode standard padded base64 in its one canonical spelling, or raise NoteError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not in canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class Vkey:
    """A verifier key: a name, its 4-byte id, the signature type and the 32-byte Ed25519 key.

    Construction checks everything, so a Vkey in hand is always one `parse_vkey` would accept.
    """

    name: str
    key_id: bytes
    sig_type: int
    public: bytes

    def __post_init__(self) -> None:
        if (problem := name_problem(self.name)) is not None:
            raise NoteError(problem)
        if type(self.sig_type) is not int or self.sig_type not in SIGNATURE_TYPES:
            raise NoteError(f"unsupported signature type {self.sig_type!r}")
        if not isinstance(self.public, bytes) or len(self.public) != KEY_SIZE:
            raise NoteError(f"a {SIGNATURE_TYPES[self.sig_type]} public key must be {KEY_SIZE} bytes")
        if self.key_id != key_id(self.name, self.sig_type, self.public):
            raise NoteError(f"key id does not match key {self.name!r}")

    def encode(self) -> str:
        """``name+hex(key id)+base64(type || public key)``."""
        blob = base64.b64encode(bytes([self.sig_type]) + self.public).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{blob}"


def parse_vkey(text: str) -> Vkey:
    """Parse ``name+hex8+base64(type || key)``; NoteError names the first problem."""
    if not isinstance(text, str):
        raise NoteError("a verifier key must be a string")
    parts = text.split("+", 2)  # the name and the hex hold no '+'; base64 may
    if len(parts) != 3:
        raise NoteError("a verifier key is name+keyid+base64key")
    name, hex_id, blob = parts
    if (problem := name_problem(name)) is not None:
        raise NoteError(problem)
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise NoteError(f"key id {hex_id!r} is not 8 lowercase hex digits")
    raw = b64_exact(blob, "the key")
    if not raw:
        raise NoteError("the key is empty")
    if raw[0] not in SIGNATURE_TYPES:
        raise NoteError(f"unsupported signature type 0x{raw[0]:02x}")
    if len(raw) != 1 + KEY_SIZE:
        raise NoteError(f"a {SIGNATURE_TYPES[raw[0]]} public key must be {KEY_SIZE} bytes, not {len(raw) - 1}")
    if bytes.fromhex(hex_id) != key_id(name, raw[0], raw[1:]):
        raise NoteError(f"key id {hex_id} does not match the key")
    return Vkey(name, bytes.fromhex(hex_id), raw[0], raw[1:])


def _raw_key(public: Ed25519PublicKey | bytes) -> bytes:
    return raw_public_key(public) if isinstance(public, Ed25519PublicKey) else public


def ed25519_vkey(name: str, public: Ed25519PublicKey | bytes) -> Vkey:
    """The vkey (type 0x01) that verifies notes `sign_note` signs with this key's private half."""
    raw = _raw_key(public)
    return Vkey(name, key_id(name, ED25519, raw), ED25519, raw)


def cosigner_vkey(name: str, public: Ed25519PublicKey | bytes) -> Vkey:
    """The vkey (type 0x04) that verifies the cosignatures `cosign` makes with this key."""
    raw = _raw_key(public)
    return Vkey(name, key_id(name, COSIGNATURE_V1, raw), COSIGNATURE_V1, raw)


# -- syntax ---------------------------------------------------------------------------------------


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a note's text (it must end in a newline, with no other control character)."""
    if not text.endswith("\n"):
        return "the note text does not end with a newline"
    if CONTROL_RE.search(text):
        return "the note holds a control character other than newline"
    return None


@dataclass(frozen=True, slots=True)
class SignatureLine:
    """One parsed signature line: the key's name and id, and the signature bytes after the id."""

    name: str
    key_id: bytes
    signature: bytes
    base64: str  # the line's base64, key id included, as written

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {self.base64}\n"


def parse_signature_line(line: str) -> SignatureLine:
    """Parse ``— name base64`` (without its newline); NoteError names the problem."""
    if not line.startswith(SIG_PREFIX):
        raise NoteError(f"signature line {line[:40]!r} does not start with an em dash and a space")
    name, _, blob = line[len(SIG_PREFIX):].partition(" ")
    if (problem := name_problem(name)) is not None:
        raise NoteError(f"signature line: {problem}")
    raw = b64_exact(blob, f"the signature of {name!r}")
    if len(raw) < 5:
        raise NoteError(f"the signature of {name!r} is shorter than a key id and one byte")
    return SignatureLine(name, raw[:4], raw[4:], blob)


def split_note(note: bytes | str) -> tuple[str, tuple[SignatureLine, ...]]:
    """A signed note's text and its parsed signature lines, or NoteError naming the problem.

    Checks syntax only: no signature is verified. The text is everything up to the last blank line.
    """
    if isinstance(note, str):
        try:
            note = note.encode("utf-8")
        except UnicodeEncodeError:
            raise NoteError("the note is not valid UTF-8") from None
    if not isinstance(note, bytes):
        raise NoteError("a note must be bytes or a string")
    if len(note) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the note is not valid UTF-8") from None
    if CONTROL_RE.search(decoded):
        raise NoteError("the note holds a control character other than newline")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = decoded[:split + 1], decoded[split + 2:]
    if not block:
        raise NoteError("the note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("the last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has more than {MAX_SIGNATURES} signature lines")
    return text, tuple(parse_signature_line(line) for line in lines)


# -- signing -----------------------------------------------------------------------------------


def _signature_line(name: str, blob: bytes) -> str:
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"


def _check_signable(text: str, name: str) -> None:
    if not isinstance(text, str) or (problem := text_problem(text)) is not None:
        raise NoteError(problem or "the note text must be a string")
    if (problem := name_problem(name)) is not None:
        raise NoteError(problem)


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """The signed note: ``text``, a blank line, and one Ed25519 (type 0x01) signature line."""
    _check_signable(text, name)
    kid = key_id(name, ED25519, raw_public_key(key.public_key()))
    return text + "\n" + _signature_line(name, kid + key.sign(text.encode("utf-8")))


def cosignature_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, ``time <timestamp>``, then the note text."""
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def cosign(text: str, name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """One cosignature/v1 line (type 0x04) over ``text``, made at POSIX time ``timestamp``."""
    _check_signable(text, name)
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"a cosignature timestamp is an integer from 0 to 2^63-1, not {timestamp!r}")
    kid = key_id(name, COSIGNATURE_V1, raw_public_key(key.public_key()))
    signature = key.sign(cosignature_message(text, timestamp))
    return _signature_line(name, kid + timestamp.to_bytes(8, "big") + signature)


def add_signature_lines(note: str, lines: str | Sequence[str]) -> str:
    """``note`` with the signature lines in ``lines`` appended (a witness's response body, or a
    list of `cosign` results). Lines already in the note are not repeated. NoteError if the note
    or a line is malformed, or the result would hold more than MAX_SIGNATURES lines."""
    _, existing = split_note(note)
    blob = lines if isinstance(lines, str) else "".join(lines)
    if not blob.endswith("\n"):
        raise NoteError("signature lines must end with a newline")
    have = {sig.line() for sig in existing}
    added: list[str] = []
    for line in blob[:-1].split("\n"):
        parse_signature_line(line)
        if line + "\n" not in have:
            have.add(line + "\n")
            added.append(line + "\n")
    if len(existing) + len(added) > MAX_SIGNATURES:
        raise NoteError(f"the note would have more than {MAX_SIGNATURES} signature lines")
    return note + "".join(added)


# -- opening -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """A signature found in a note; ``sig_type`` and ``timestamp`` are known only for a known key."""

    name: str
    key_id: bytes
    sig_type: int | None = None
    timestamp: int | None = None  # cosignature/v1 only


@dataclass(frozen=True, slots=True)
class NoteVerdict:
    """Whether a note opened: ``text`` is given only when ``ok``; ``verified`` lists each known key
    whose signature verified (once), ``unknown`` each distinct line from a key not known.

    Reason codes when not ok: ``malformed`` (the note's syntax), ``no_known_signature``,
    ``bad_signature`` (a known key's line fails), ``ambiguous_key`` (two different known keys
    share the line's name and id), ``future_timestamp`` (a cosignature made after ``now``).
    """

    ok: bool
    text: str | None = None
    verified: tuple[NoteSignature, ...] = ()
    unknown: tuple[NoteSignature, ...] = ()
    reason: str | None = None
    detail: str | None = None


def _check(sig: SignatureLine, key: Vkey, text: str, now: int | None) -> tuple[NoteSignature | None, str, str]:
    """Verify one line against its known key: the signature, or None with a reason and detail."""
    who = f"{key.name}+{key.key_id.hex()}"
    if key.sig_type == ED25519:
        if ed25519_valid(key.public, text.encode("utf-8"), sig.signature):
            return NoteSignature(key.name, key.key_id, ED25519), "", ""
        return None, BAD_SIGNATURE, f"the signature of known key {who} does not verify"
    if len(sig.signature) != 8 + 64:
        return None, BAD_SIGNATURE, f"the cosignature of known key {who} is not a timestamp and 64 bytes"
    ts = int.from_bytes(sig.signature[:8], "big")
    if ts > MAX_TIMESTAMP:
        return None, BAD_SIGNATURE, f"the cosignature of known key {who} has a timestamp above 2^63-1"
    if not ed25519_valid(key.public, cosignature_message(text, ts), sig.signature[8:]):
        return None, BAD_SIGNATURE, f"the cosignature of known key {who} does not verify"
    if now is not None and ts > now:
        return None, FUTURE_TIMESTAMP, f"the cosignature of {who} is dated {ts}, after now ({now})"
    return NoteSignature(key.name, key.key_id, COSIGNATURE_V1, ts), "", ""


def open_note(note: bytes | str, known: Sequence[Vkey], *, now: int | None = None) -> NoteVerdict:
    """Parse a signed note and verify the signatures of the ``known`` keys; never raises.

    ``now`` (POSIX seconds), if given, refuses cosignatures dated after it.
    """
    try:
        text, lines = split_note(note)
    except NoteError as exc:
        return NoteVerdict(False, reason=MALFORMED, detail=str(exc))
    keys: dict[tuple[str, bytes], set[Vkey]] = {}
    for key in known if isinstance(known, Sequence) and not isinstance(known, (str, bytes)) else ():
        if isinstance(key, Vkey):
            keys.setdefault((key.name, key.key_id), set()).add(key)
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    unknown: dict[str, NoteSignature] = {}
    for sig in lines:
        candidates = keys.get((sig.name, sig.key_id))
        if not candidates:
            unknown.setdefault(sig.line(), NoteSignature(sig.name, sig.key_id))
            continue
        if len(candidates) > 1:
            return NoteVerdict(False, unknown=tuple(unknown.values()), reason=AMBIGUOUS_KEY,
                               detail=f"{len(candidates)} known keys are named {sig.name}+{sig.key_id.hex()}")
        found, reason, detail = _check(sig, next(iter(candidates)), text, now)
        if found is None:
            return NoteVerdict(False, reason=reason, detail=detail, unknown=tuple(unknown.values()))
        verified.setdefault((sig.name, sig.key_id), found)
    if not verified:
        return NoteVerdict(False, unknown=tuple(unknown.values()), reason=NO_KNOWN_SIGNATURE,
                           detail=f"none of the note's {len(lines)} signatures is from a known key")
    return NoteVerdict(True, text, tuple(verified.values()), tuple(unknown.values()))


__all__ = ["COSIGNATURE_V1", "ED25519", "MAX_SIGNATURES", "NoteSignature", "NoteVerdict", "Vkey",
           "add_signature_lines", "cosign", "cosigner_vkey", "ed25519_vkey", "key_id", "open_note",
           "parse_vkey", "sign_note", "split_note"]

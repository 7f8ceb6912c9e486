"""Signed checkpoints: the appliance's signature over (ledger id, seq, head hash, time).

The signed message is the canonical JSON (`ledger.canonical`) of::

    {"hash": H, "key_id": "sha3-256:...", "ledger_id": L, "seq": N,
     "ts": T, "type": "anticloud.ledger.checkpoint", "v": 1}

and the signature is a detached Ed25519 signature over those bytes. A checkpoint
document, both as a file an auditor keeps and as the ``data`` of a ``ledger.checkpoint``
record, is ``{"checkpoint": <that object>, "signature": <base64 of 64 bytes>}``, and, from
this version on, ``"tlog"``: the same moment as a C2SP tlog-checkpoint, a signed note
(`ledger.note`) of the Merkle tree of records 0..N, for transparency-log tools and witnesses.

Every member is checked for its exact type and form (``v`` is the integer 1, not ``true``;
``ts`` is a real date in ASCII digits; the signature is the one standard base64 spelling of
64 bytes), so that the message re-encoded here is byte for byte the object in the document,
and ``tools/verify_ledger.py``, which verifies that object as written, reaches the same verdict.

Holding a checkpoint pins records 0..N: any later copy must contain record N with hash H,
and since every record names its predecessor's hash, none at or before N can change.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from ledger.canonical import canonical_bytes, loads_strict
from ledger.errors import CheckpointFormatError, LedgerReadError
from ledger.record import HEX64_RE, SHA3_TAG, key_id_of, valid_ts

CHECKPOINT_TYPE = "anticloud.ledger.checkpoint"
CHECKPOINT_KIND = "ledger.checkpoint"
LEDGER_ID_RE = re.compile(r"[0-9a-f]{32}\Z")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ledger_id: str
    seq: int
    hash: str
    ts: str
    key_id: str

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "key_id": self.key_id, "ledger_id": self.ledger_id, "seq": self.seq,
                "ts": self.ts, "type": CHECKPOINT_TYPE, "v": 1}

    def message(self) -> bytes:
        """The exact bytes that are signed."""
        return canonical_bytes(self.to_json())


def origin_of(ledger_id: str) -> str:
    """The origin line (and note key name) of the appliance whose ledger is ``ledger_id``."""
    return f"anticloud/{ledger_id}"


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signature: bytes
    tlog: str | None = None  # the signed note of the tree of records 0..seq, when there is one

    def to_json(self) -> dict[str, Any]:
        doc = {"checkpoint": self.checkpoint.to_json(), "signature": base64.b64encode(self.signature).decode()}
        return doc if self.tlog is None else {**doc, "tlog": self.tlog}

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_json()) + b"\n"

    @classmethod
    def from_json(cls, doc: Any) -> SignedCheckpoint:
        """Parse a checkpoint document; raises ValueError naming the first problem."""
        if not isinstance(doc, dict) or set(doc) - {"tlog"} != {"checkpoint", "signature"}:
            raise ValueError("a checkpoint document has the members checkpoint and signature, and perhaps tlog")
        if "tlog" in doc and not (isinstance(doc["tlog"], str) and doc["tlog"]):
            raise ValueError("checkpoint member tlog must be a signed note")
        body, sig = doc["checkpoint"], doc["signature"]
        if not isinstance(body, dict) or set(body) != {"hash", "key_id", "ledger_id", "seq", "ts", "type", "v"}:
            raise ValueError("checkpoint members must be hash, key_id, ledger_id, seq, ts, type, v")
        if body["type"] != CHECKPOINT_TYPE or type(body["v"]) is not int or body["v"] != 1:
            raise ValueError(f"checkpoint type must be {CHECKPOINT_TYPE} version 1")
        checks = [
            ("hash", isinstance(body["hash"], str) and HEX64_RE.match(body["hash"])),
            ("ledger_id", isinstance(body["ledger_id"], str) and LEDGER_ID_RE.match(body["ledger_id"])),
            ("seq", type(body["seq"]) is int and body["seq"] >= 0),
            ("ts", valid_ts(body["ts"])),
            ("key_id", isinstance(body["key_id"], str) and body["key_id"].startswith(SHA3_TAG)
             and HEX64_RE.match(body["key_id"][9:])),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"checkpoint member {name} is malformed")
        try:
            signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
        except binascii.Error:
            signature = b""
        # b64decode ignores the unused low bits of the last character: "...AB==" and "...AA=="
        # decode alike. Only the spelling the writer produces is accepted, so a signed record has
        # one form.
        if len(signature) != 64 or base64.b64encode(signature).decode() != sig:
            raise ValueError("signature must be 64 bytes in standard base64")
        cp = Checkpoint(body["ledger_id"], body["seq"], body["hash"], body["ts"], body["key_id"])
        return cls(cp, signature, doc.get("tlog"))


def sign_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> SignedCheckpoint:
    return SignedCheckpoint(checkpoint, key.sign(checkpoint.message()))


def ed25519_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The `ledger.chain.SignatureCheck` used by the verifier."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public_key(path: Path) -> bytes:
    """Read a PEM Ed25519 public key (such as appliance.pub) and return its raw 32 bytes."""
    return public_key_from_pem(_read(path, "public key"), str(path))


def public_key_from_pem(pem: bytes, source: str) -> bytes:
    """The raw 32 bytes of a PEM Ed25519 public key; CheckpointFormatError names ``source`` if it is not one."""
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise CheckpointFormatError(f"{source}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointFormatError(f"{source}: not an Ed25519 public key")
    return raw_public_key(key)


def load_checkpoint(path: Path) -> SignedCheckpoint:
    raw = _read(path, "checkpoint")
    try:
        return SignedCheckpoint.from_json(loads_strict(raw))
    except (ValueError, RecursionError) as exc:
        raise CheckpointFormatError(f"{path}: not a checkpoint: {exc}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LedgerReadError(f"cannot read {what} {path}: {exc.strerror}") from None


__all__ = [
    "Checkpoint",
    "SignedCheckpoint",
    "ed25519_valid",
    "key_id_of",
    "load_checkpoint",
    "load_public_key",
    "origin_of",
    "public_key_from_pem",
    "raw_public_key",
    "sign_checkpoint",
]

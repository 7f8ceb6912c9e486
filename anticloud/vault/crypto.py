"""Sealing one piece of content, and wrapping the keys that open it. Pure: bytes in, bytes out.

The layers, each key random and used for one purpose (docs/ledger-format.md §15):

* a **data key** per inference (32 bytes), from which each field's own key is derived
  (HKDF-SHA256, the field in its info); a field's key seals it with AES-256-GCM, the associated
  data naming the ledger, the inference, the field and the content id, so a ciphertext moved
  anywhere else does not open, and a field's key disclosed opens that field alone;
* a **group key** per person and month (and engine run) wraps the data keys, with AES-256-GCM
  and the inference as associated data;
* the **operator's content key**, an X25519 key pair, wraps the group keys with HPKE (RFC 9180,
  base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM). The engine holds only its
  public half, so it seals without being able to read back what it sealed once the group key
  leaves its memory; reading takes the private half, which the operator keeps.

Invariants: no nonce is reused under a key (each is 12 random bytes, and a data key seals at
most one message); GCM does not commit to its key, so every reference carries a key
commitment that `open_content` checks before it decrypts; a failure to open says which check
failed (ContentSealError), never returns wrong plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from anticloud.errors import ContentSealError
from ledger import ContentRef, canonical_bytes, content_ad, key_commitment

__all__ = ["ALG", "FIELDS", "Sealed", "content_ad", "content_id", "field_key", "fingerprint", "key_commitment",
           "new_key", "open_content", "seal", "sha3", "unwrap_data_key", "unwrap_group_key", "wrap_data_key",
           "wrap_group_key"]

ALG = "aes-256-gcm"
KEY_BYTES, NONCE_BYTES = 32, 12
FIELD_KEY_LABEL = b"anticloud/content-field/v1\x00"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
FIELDS = ("prompt", "messages", "input", "output")


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def sha3(data: bytes) -> str:
    return "sha3-256:" + hashlib.sha3_256(data).hexdigest()


def fingerprint(public: X25519PublicKey) -> str:
    """``sha3-256:<hex>`` of the operator's raw public key: what ``content.key`` records and the engine pins."""
    return sha3(public.public_bytes_raw())


def content_id(inference: str, field: str) -> str:
    return f"{inference}.{field}"


@dataclass(frozen=True, slots=True)
class Sealed:
    """One sealed field: the content file's bytes and the reference its record carries."""

    blob: bytes
    ref: dict[str, str]


def field_key(data_key: bytes, field: str) -> bytes:
    """The key that seals one field: HKDF-SHA256 of the inference's data key, the field in its info.
    Disclosing it (an evidence package) opens that field alone, never the inference's other one."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=FIELD_KEY_LABEL + field.encode()).derive(data_key)


def seal(data_key: bytes, ledger_id: str, inference: str, field: str, value: Any, group: str) -> Sealed:
    """Seal ``value`` (any JSON value: the field as plaintext mode would record it) under its field's key."""
    if field not in FIELDS:
        raise ValueError(f"no such sealed field {field!r}")
    key, nonce = field_key(data_key, field), os.urandom(NONCE_BYTES)
    blob = nonce + AESGCM(key).encrypt(nonce, canonical_bytes(value), content_ad(ledger_id, inference, field))
    return Sealed(blob, {"id": content_id(inference, field), "alg": ALG, "sha3_256": sha3(blob),
                         "key_commitment": key_commitment(key), "key": group})


def open_content(data_key: bytes, ledger_id: str, ref: ContentRef, blob: bytes) -> bytes:
    """The plaintext (canonical JSON) of a content file, once every commitment holds; ``data_key``
    is the key that sealed this field (`field_key`)."""
    if ref.alg != ALG:
        raise ContentSealError(f"content {ref.id} uses {ref.alg!r}, not {ALG}")
    if (actual := sha3(blob)) != ref.sha3_256:
        raise ContentSealError(f"content {ref.id} does not match its commitment "
                               f"(expected {ref.sha3_256}, found {actual})")
    if key_commitment(data_key) != ref.key_commitment:
        raise ContentSealError(f"content {ref.id}: the data key is not the one its record commits to")
    if len(blob) < NONCE_BYTES + 16:
        raise ContentSealError(f"content {ref.id} is too short to be sealed content")
    try:
        return AESGCM(data_key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                        content_ad(ledger_id, ref.inference, ref.field))
    except InvalidTag:
        raise ContentSealError(f"content {ref.id} does not open under its key and record") from None


def _wrap_ad(ledger_id: str, group: str, inference: str) -> bytes:
    return canonical_bytes({"group": group, "inference": inference, "ledger": ledger_id, "v": 1})


def wrap_data_key(group_key: bytes, ledger_id: str, group: str, inference: str, data_key: bytes) -> str:
    """The data key of ``inference`` wrapped under its group's key (base64 of nonce and ciphertext)."""
    nonce = os.urandom(NONCE_BYTES)
    wrapped = nonce + AESGCM(group_key).encrypt(nonce, data_key, _wrap_ad(ledger_id, group, inference))
    return base64.b64encode(wrapped).decode()


def unwrap_data_key(group_key: bytes, ledger_id: str, group: str, inference: str, wrapped: str) -> bytes:
    raw = base64.b64decode(wrapped)
    try:
        return AESGCM(group_key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _wrap_ad(ledger_id, group, inference))
    except InvalidTag:
        raise ContentSealError(f"the data key of inference {inference} does not unwrap under key group {group}") \
            from None


def _group_info(ledger_id: str, group: str, person: str, month: str) -> bytes:
    return canonical_bytes({"group": group, "ledger": ledger_id, "month": month, "person": person, "v": 1})


def wrap_group_key(public: X25519PublicKey, ledger_id: str, group: str, person: str, month: str,
                   group_key: bytes) -> str:
    """A group key sealed to the operator's public key (HPKE), bound to its group's identity."""
    sealed = _SUITE.encrypt(group_key, public, info=_group_info(ledger_id, group, person, month))
    return base64.b64encode(sealed).decode()


def unwrap_group_key(private: X25519PrivateKey, ledger_id: str, group: str, person: str, month: str,
                     sealed: str) -> bytes:
    try:
        return bytes(_SUITE.decrypt(base64.b64decode(sealed), private,
                                    info=_group_info(ledger_id, group, person, month)))
    except (InvalidTag, ValueError):
        raise ContentSealError(f"key group {group} does not open under this content key "
                               "(another appliance's key, or a changed key file)") from None

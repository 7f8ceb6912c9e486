"""Publisher keys and the appliance's trust store.

The trust store is ``HOME/trust.json``, canonical JSON of ``{"keys": {key_id: {"added": T,
"name": N, "public_key": <64 hex>, "revoked": T | null}}}``. A key id is ``sha3-256:`` of the
raw 32-byte Ed25519 public key, like every stored hash.

Invariants: every change is appended to the ledger (``trust.add``, ``trust.revoke``) before
the file changes, and a failed append leaves the store untouched; changes are serialised
by a file lock; a store that anyone but its owner could have written is refused
(`anticloud.home.read_trusted`); revocation is permanent (a revoked key cannot be trusted again, because a
signature it made may already be in circulation).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.errors import TrustError
from anticloud.fsutil import atomic_write
from anticloud.home import Home, read_trusted
from anticloud.identity import public_pem, write_private_key
from ledger import (
    CheckpointFormatError,
    LedgerWriter,
    canonical_bytes,
    key_id_of,
    loads_strict,
    public_key_from_pem,
    raw_public_key,
    utc_timestamp,
)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    key_id: str
    name: str
    public_key: bytes
    added: str
    revoked: str | None


def generate_publisher_key(out: Path, passphrase: bytes | None = None) -> str:
    """Write ``out/publisher.key`` (PEM, 0600, encrypted if a passphrase is given) and ``publisher.pub``."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    write_private_key(out / "publisher.key", key, passphrase)
    (out / "publisher.pub").write_bytes(public_pem(key))
    return key_id_of(raw_public_key(key.public_key()))


def read_public_key(pem: bytes, source: str) -> bytes:
    try:
        return public_key_from_pem(pem, source)
    except CheckpointFormatError as exc:
        raise TrustError(str(exc)) from None


class TrustStore:
    def __init__(self, home: Home, keys: dict[str, TrustedKey]) -> None:
        self.home = home
        self._keys = keys

    @staticmethod
    def path(home: Home) -> Path:
        return home.trust

    @classmethod
    def load(cls, home: Home) -> TrustStore:
        path = cls.path(home)
        try:
            raw = read_trusted(path)
        except FileNotFoundError:
            return cls(home, {})
        except OSError as exc:
            raise TrustError(f"{path} is unreadable: {exc.strerror}") from None
        try:
            doc = loads_strict(raw)
            keys = {kid: TrustedKey(kid, e["name"], bytes.fromhex(e["public_key"]), e["added"], e["revoked"])
                    for kid, e in doc["keys"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrustError(f"{path} is unreadable or malformed: {exc}") from None
        if any(key_id_of(k.public_key) != kid for kid, k in keys.items()):
            raise TrustError(f"{path} holds a key whose id does not match it")
        return cls(home, keys)

    def keys(self) -> list[TrustedKey]:
        return sorted(self._keys.values(), key=lambda k: (k.revoked is not None, k.name, k.key_id))

    def lookup(self, key_id: str) -> tuple[bytes | None, bool]:
        """For manifest.check_signatures: the raw key (None if unknown) and whether it is revoked."""
        key = self._keys.get(key_id)
        return (None, False) if key is None else (key.public_key, key.revoked is not None)

    def get(self, key_id: str) -> TrustedKey | None:
        return self._keys.get(key_id)

    def put(self, key: TrustedKey) -> None:
        """Add or replace ``key`` and write the store (hold `locked_store`, and record it first)."""
        self._keys[key.key_id] = key
        self._save()

    def _save(self) -> None:
        doc: dict[str, Any] = {"keys": {k.key_id: {"added": k.added, "name": k.name, "public_key": k.public_key.hex(),
                                                   "revoked": k.revoked} for k in self._keys.values()}}
        atomic_write(self.path(self.home), canonical_bytes(doc) + b"\n")


@contextmanager
def locked_store(home: Home) -> Iterator[TrustStore]:
    """The trust store, re-read under an exclusive lock held until the block ends."""
    fd = os.open(home.trust_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield TrustStore.load(home)
    finally:
        os.close(fd)


def trust_key(home: Home, writer: LedgerWriter, pem: bytes, source: str, name: str | None) -> TrustedKey:
    public_key = read_public_key(pem, source)
    key_id = key_id_of(public_key)
    with locked_store(home) as store:
        existing = store.get(key_id)
        if existing is not None:
            state = "was revoked and cannot be trusted again" if existing.revoked else "is already trusted"
            raise TrustError(f"key {key_id} ({existing.name}) {state}")
        key = TrustedKey(key_id, name or Path(source).stem, public_key, utc_timestamp(), None)
        writer.append("trust.add", {"key_id": key_id, "name": key.name, "public_key": public_key.hex()})
        store.put(key)
    return key


def revocable(store: TrustStore, key_id: str) -> TrustedKey:
    """The trusted key ``key_id``, or TrustError if there is none or it was revoked already."""
    key = store.get(key_id)
    if key is None:
        raise TrustError(f"key {key_id} is not in the trust store")
    if key.revoked is not None:
        raise TrustError(f"key {key_id} ({key.name}) was already revoked at {key.revoked}")
    return key


def revoke_key(home: Home, writer: LedgerWriter, key_id: str) -> TrustedKey:
    with locked_store(home) as store:
        key = revocable(store, key_id)
        writer.append("trust.revoke", {"key_id": key_id, "name": key.name})
        revoked = TrustedKey(key.key_id, key.name, key.public_key, key.added, utc_timestamp())
        store.put(revoked)
    return revoked

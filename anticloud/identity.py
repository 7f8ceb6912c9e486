"""The appliance's Ed25519 identity: it signs ledger checkpoints.

Invariants: the private key file is created with mode 0600 in a 0700 directory, is never
overwritten, and is refused when its mode lets anyone but the owner read it. It is stored
unencrypted because the appliance signs checkpoints unattended; protect it with the file
system and full-disk encryption (SECURITY.md, "Key handling"). Key material is never logged.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from anticloud.errors import AlreadyInitializedError, KeyFileError, NotInitializedError
from anticloud.home import Home
from ledger import LedgerWriter, ed25519_vkey, key_id_of, origin_of, raw_public_key, record_at


def write_private_key(path: Path, key: Ed25519PrivateKey, passphrase: bytes | None = None) -> None:
    """Write a PEM private key with mode 0600, refusing to replace an existing file."""
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise AlreadyInitializedError(f"{path} already exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def read_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotInitializedError(f"{path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{path} has mode {mode:04o}; a private key must be 0600")
        pem = handle.read()
    try:
        key = load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as exc:
        reason = "wrong or missing passphrase" if "password" in str(exc).lower() else "not a PEM private key"
        raise KeyFileError(f"{path}: {reason}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PrivateKey) -> str:
    return key_id_of(raw_public_key(key.public_key()))


def refuse_initialised(home: Home) -> None:
    """AlreadyInitializedError if ``home`` has an identity or a ledger."""
    if home.ledger.exists() or home.identity_key.exists():
        raise AlreadyInitializedError(f"{home.root} is already initialised")


def initialise(home: Home) -> str:
    """Create the identity key, appliance.pub and the ledger's genesis; return the key id."""
    refuse_initialised(home)
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    write_private_key(home.identity_key, key)
    raw = raw_public_key(key.public_key())
    genesis = {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}
    try:
        home.identity_pub.write_bytes(public_pem(key))
        LedgerWriter.create(home.ledger, genesis).close()
    except BaseException:
        # Leave nothing half-made behind, or every retry would find an identity without a ledger.
        home.identity_key.unlink(missing_ok=True)
        home.identity_pub.unlink(missing_ok=True)
        raise
    return key_id_of(raw)


def load_identity(home: Home) -> Ed25519PrivateKey:
    if not home.identity_key.exists():
        raise NotInitializedError(f"{home.root} is not initialised; run `anticloud init`")
    return read_private_key(home.identity_key)


def appliance_vkey(home: Home) -> str:
    """The appliance's signed-note verifier key (C2SP vkey): the name is the origin of its
    checkpoints, ``anticloud/<ledger id>``, and the key the one its genesis names."""
    genesis = record_at(home.ledger, 0).record.data
    return ed25519_vkey(origin_of(genesis["ledger_id"]), bytes.fromhex(genesis["public_key"])).encode()

"""The keyring beside the ledger: the operator's public content key, the group keys sealed to
it, and the data keys wrapped under them. Every file is 0600 in a 0700 directory.

Layout (``HOME/keyring``):

* ``operator.pub`` -- the operator's X25519 public key (PEM); the engine seals with it;
* ``operator.key`` -- its private half, if the operator keeps it here: under their passphrase
  (PKCS#8, encrypted), or in the clear where they chose neither a passphrase nor separate
  media (then a copy of the whole home reads the content; a copy of the ledger still does not);
* ``groups/<group>.key`` -- one group key, sealed to the operator's key (HPKE), with the person
  and month it serves; written once, durably, before any data key is wrapped under it;
* ``groups/<group>.dks`` -- the data keys wrapped under it, one JSON line per inference
  (``inference``, ``ts``, ``wrapped``), each appended and fsynced before the inference's first
  content is sealed.

Destroying a key overwrites the bytes that held it with zeros, fsyncs, and only then unlinks
the file (or replaces it with the lines that remain): a key is never only unlinked. Writers
append under a shared lock on ``keyring/.lock``; erasure rewrites under the exclusive lock, so
an append never lands in a file being replaced.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from anticloud.errors import ContentSealError
from anticloud.fsutil import atomic_write, fsync_dir
from anticloud.home import check_open_file
from anticloud.vault import crypto
from ledger import write_all

PRIVATE = 0o600


class PassphraseNeeded(ContentSealError):
    """The private content key is encrypted, and no passphrase was given for it."""


class GroupGone(ContentSealError):
    """The key group was destroyed (erased) since it was made; wrap under a new one."""


@dataclass(frozen=True, slots=True)
class Group:
    """A key group as its file states it: whose, which month, and the group key sealed to the operator."""

    group: str
    person: str
    month: str
    sealed: str

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "group": self.group, "person": self.person, "month": self.month, "sealed": self.sealed}


@dataclass(frozen=True, slots=True)
class Entry:
    """One wrapped data key: the inference it opens, when it was made, and the key wrapped."""

    inference: str
    ts: str
    wrapped: str


class Keyring:
    """The keyring directory; every method does its own I/O, durably."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.groups = root / "groups"

    @property
    def public_path(self) -> Path:
        return self.root / "operator.pub"

    @property
    def private_path(self) -> Path:
        return self.root / "operator.key"

    def exists(self) -> bool:
        return self.public_path.exists()

    # -- the operator's key ------------------------------------------------------------------

    def create(self, private_to: Path | None, passphrase: bytes | None) -> X25519PrivateKey:
        """Make the operator's content key pair: the public half here; the private half at
        ``private_to`` (separate media) or else here, under ``passphrase`` if one is given."""
        if self.exists():
            raise ContentSealError(f"{self.public_path} exists: this home already has a content key")
        target = private_to if private_to is not None else self.private_path
        if target.exists():
            raise ContentSealError(f"{target} exists; choose a new file for the content key")
        key = X25519PrivateKey.generate()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.groups.mkdir(mode=0o700, exist_ok=True)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
        atomic_write(target, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               encryption), PRIVATE)
        atomic_write(self.public_path, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), PRIVATE)
        return key

    def public_key(self) -> X25519PublicKey:
        try:
            key = serialization.load_pem_public_key(self._read(self.public_path))
        except ValueError:
            raise ContentSealError(f"{self.public_path} is not a PEM public key") from None
        if not isinstance(key, X25519PublicKey):
            raise ContentSealError(f"{self.public_path} is not an X25519 key")
        return key

    def fingerprint(self) -> str:
        """``sha3-256:<hex>`` of the raw public key: what records and people compare."""
        return crypto.fingerprint(self.public_key())

    def private_key(self, key_file: Path | None, passphrase: bytes | None) -> X25519PrivateKey:
        """The operator's private content key, from ``key_file`` or from the keyring under ``passphrase``;
        refused unless its public half is this keyring's."""
        path = key_file or self.private_path
        if not path.exists():
            raise ContentSealError(f"no content key at {path}; give the file that holds it (--key)")
        try:
            key = serialization.load_pem_private_key(self._read(path), passphrase)
        except TypeError:  # a passphrase missing for an encrypted key, or given for a key in the clear
            if passphrase is None:
                raise PassphraseNeeded(f"{path} is encrypted: a passphrase is needed") from None
            raise ContentSealError(f"{path} is not encrypted: give no passphrase") from None
        except ValueError:
            raise ContentSealError(f"{path}: wrong passphrase, or not a content key") from None
        if not isinstance(key, X25519PrivateKey):
            raise ContentSealError(f"{path} is not an X25519 content key")
        mine = self.public_key().public_bytes_raw()
        if key.public_key().public_bytes_raw() != mine:
            raise ContentSealError(f"{path} is not this appliance's content key (another home's?)")
        return key

    # -- groups and data keys ------------------------------------------------------------------

    def add_group(self, group: Group) -> None:
        """Write a new group's sealed key, durably, before anything is wrapped under it."""
        self.groups.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.locked(fcntl.LOCK_SH):
            atomic_write(self.groups / f"{group.group}.key", json.dumps(group.to_json()).encode() + b"\n", PRIVATE)

    def add_entry(self, group: str, entry: Entry) -> int:
        """Append one wrapped data key to its group, durably (fsync before returning); returns the
        group file's inode, which changes only when an erasure rewrites the file (`holds`). A failed
        append is cut back off, so a torn line never spoils the keys around it."""
        line = json.dumps({"inference": entry.inference, "ts": entry.ts, "wrapped": entry.wrapped}).encode() + b"\n"
        path = self.groups / f"{group}.dks"
        with self.locked(fcntl.LOCK_SH):
            if not (self.groups / f"{group}.key").exists():  # erased meanwhile: nothing may join it
                raise GroupGone(group)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE)
            try:
                st = os.fstat(fd)
                try:
                    write_all(fd, line)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, st.st_size)
                    raise
            finally:
                os.close(fd)
            if st.st_size == 0:
                fsync_dir(self.groups)
            return st.st_ino

    def holds(self, group: str, inference: str, inode: int) -> bool:
        """Whether ``group`` still holds the data key of ``inference``, appended to the file whose
        inode was ``inode``: cheap while no erasure touched the group (the file is only appended
        to); read through once one replaced it."""
        try:
            if not (self.groups / f"{group}.key").exists():
                return False
            if (self.groups / f"{group}.dks").stat().st_ino == inode:
                return True
        except FileNotFoundError:
            return False
        return self.entry(group, inference) is not None

    def group(self, group: str) -> Group:
        path = self.groups / f"{group}.key"
        if not path.exists():
            raise ContentSealError(f"key group {group} is not in the keyring")
        doc = json.loads(self._read(path))
        return Group(doc["group"], doc["person"], doc["month"], doc["sealed"])

    def all_groups(self) -> list[Group]:
        if not self.groups.is_dir():
            return []
        return [self.group(p.name.removesuffix(".key")) for p in sorted(self.groups.glob("*.key"))]

    def entries(self, group: str) -> list[Entry]:
        path = self.groups / f"{group}.dks"
        if not path.exists():
            return []
        found = []
        for number, line in enumerate(self._read(path).split(b"\n")[:-1], 1):  # after the last newline: torn
            try:
                doc = json.loads(line)
                found.append(Entry(doc["inference"], doc["ts"], doc["wrapped"]))
            except (ValueError, KeyError, TypeError):
                raise ContentSealError(f"{path} line {number} is not a wrapped data key") from None
        return found

    def entry(self, group: str, inference: str) -> Entry | None:
        return next((e for e in self.entries(group) if e.inference == inference), None)

    # -- destruction -----------------------------------------------------------------------------

    def destroy_group(self, group: str) -> None:
        """Overwrite, fsync and unlink a group's key and its wrapped data keys."""
        for suffix in (".key", ".dks"):
            shred(self.groups / f"{group}{suffix}")
        fsync_dir(self.groups)

    def destroy_entries(self, group: str, inferences: set[str]) -> None:
        """Remove the wrapped data keys of ``inferences`` from their group: the lines that remain
        replace the file, and the old file's bytes are overwritten before it is let go."""
        path = self.groups / f"{group}.dks"
        if not path.exists():
            return
        keep = [e for e in self.entries(group) if e.inference not in inferences]
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            lines = b"".join(json.dumps({"inference": e.inference, "ts": e.ts, "wrapped": e.wrapped}).encode()
                             + b"\n" for e in keep)
            atomic_write(path, lines, PRIVATE)
            _zero(fd)
        finally:
            os.close(fd)

    @contextmanager
    def locked(self, how: int) -> Iterator[None]:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    def _read(self, path: Path) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            check_open_file(path, fd)
            return handle.read()


def _zero(fd: int) -> None:
    size = os.fstat(fd).st_size
    os.pwrite(fd, b"\0" * size, 0)
    os.fsync(fd)


def shred(path: Path) -> None:
    """Overwrite a file's bytes with zeros, fsync, then unlink it. Absent: nothing to do."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _zero(fd)
    finally:
        os.close(fd)
    path.unlink()

"""Sealing an inference's content as the engine records it.

Invariants:

* A field is sealed (its content file durable) before the record that commits to it is
  appended; its data key is wrapped and durable in the keyring before the first field is sealed.
  Whatever a crash interrupts, no record names content or a key that was not kept.
* One data key per inference, one group key per person and month for as long as this engine
  runs (a restart starts new groups: the engine cannot read back a group key it sealed to the
  operator, by design).
* A data key stays in memory only while its inference is open (`forget` at its end).
"""

from __future__ import annotations

import fcntl
import secrets
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from anticloud.errors import ContentSealError
from anticloud.vault import crypto
from anticloud.vault.keyring import Entry, Group, GroupGone, Keyring
from anticloud.vault.store import ContentStore
from ledger import records_backward


def month_of(ts: datetime) -> str:
    return f"{ts.year:04d}-{ts.month:02d}"


def new_group_id(month: str) -> str:
    return f"{month}-{secrets.token_hex(8)}"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Sealer:
    """Seals the content of the inferences of one ledger into one keyring and content store."""

    def __init__(self, keyring: Keyring, store: ContentStore, ledger_id: str,
                 now: Callable[[], datetime] = utc_now, public: X25519PublicKey | None = None) -> None:
        self.keyring, self.store, self.ledger_id, self.now = keyring, store, ledger_id, now
        # ``public``: the key already checked against the ledger (`pinned_sealer`), never read again
        self._public = public or keyring.public_key()
        self._groups: dict[tuple[str, str], tuple[str, bytes]] = {}  # (person, month) -> (group, its key)
        self._keys: dict[str, tuple[str, bytes, int]] = {}  # open inference -> (group, data key, file inode)
        self._lock = threading.Lock()

    def holding(self) -> AbstractContextManager[None]:
        """The keyring's shared lock, held from sealing a record's content until the record is
        appended: an erasure (which takes it exclusively) falls wholly before or wholly after, so no
        record ever commits to a key an erasure destroyed before it was appended."""
        return self.keyring.locked(fcntl.LOCK_SH)

    def seal(self, inference: str, person: str, fields: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """Seal each field of ``inference`` (a JSON value under its plaintext name) and return
        the references its record carries, once every file is durable."""
        group, data_key = self._data_key(inference, person)
        refs = {}
        for field, value in fields.items():
            sealed = crypto.seal(data_key, self.ledger_id, inference, field, value, group)
            self.store.put(sealed.ref["id"], sealed.blob)
            refs[field] = sealed.ref
        return refs

    def forget(self, inference: str) -> None:
        with self._lock:
            self._keys.pop(inference, None)

    def _data_key(self, inference: str, person: str) -> tuple[str, bytes]:
        with self._lock:
            known = self._keys.get(inference)
        if known is not None:
            group, data_key, inode = known
            if self.keyring.holds(group, inference, inode):
                return group, data_key
            # Erased while it ran (its person, or its record): what it seals from now on is new
            # content, under a new key; what was erased stays erased.
        now = self.now()
        data_key = crypto.new_key()
        for _ in range(2):
            group, group_key = self._group(person, month_of(now))
            wrapped = crypto.wrap_data_key(group_key, self.ledger_id, group, inference, data_key)
            try:
                inode = self.keyring.add_entry(group, Entry(inference, now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), wrapped))
                break
            except GroupGone:  # this person's month was erased while the engine ran: start a new group
                with self._lock:
                    self._groups.pop((person, month_of(now)), None)
        else:
            raise ContentSealError(f"key group {group} vanished twice while sealing; refusing to seal")
        with self._lock:
            self._keys[inference] = (group, data_key, inode)
        return group, data_key

    def _group(self, person: str, month: str) -> tuple[str, bytes]:
        with self._lock:
            if (known := self._groups.get((person, month))) is not None:
                return known
            group, key = new_group_id(month), crypto.new_key()
            sealed = crypto.wrap_group_key(self._public, self.ledger_id, group, person, month, key)
            self.keyring.add_group(Group(group, person, month, sealed))  # durable before any use
            self._groups[(person, month)] = (group, key)
            return group, key


KEY_KIND = "content.key"


def pinned_sealer(keyring: Keyring, store: ContentStore, ledger: Path, ledger_id: str) -> Sealer:
    """The engine's sealer, refused unless the keyring's public key is the one the ledger's newest
    ``content.key`` names: whoever swaps ``operator.pub`` for a key of their own reads nothing sealed."""
    pinned = next((r.record.data.get("fingerprint") for r in records_backward(ledger, [KEY_KIND])), None)
    if not keyring.exists():
        raise ContentSealError("inference.record_content is sealed, but this home has no content key: "
                               "run `anticloud content init`")
    public = keyring.public_key()  # read once: the key checked is the key sealed to
    if pinned != (found := crypto.fingerprint(public)):
        raise ContentSealError(f"{keyring.public_path} ({found}) is not the content key the ledger records "
                               f"({pinned or 'none'}); refusing to seal to it")
    return Sealer(keyring, store, ledger_id, public=public)


class LazySealer:
    """The engine's sealer, made at its first use: a home that never seals needs no content key,
    and one whose policy turns to sealed while the engine runs starts sealing then."""

    def __init__(self, make: Callable[[], Sealer]) -> None:
        self._make, self._lock = make, threading.Lock()
        self._made: Sealer | None = None

    def __call__(self) -> Sealer:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made

    def forget(self, inference: str) -> None:
        if self._made is not None:
            self._made.forget(inference)

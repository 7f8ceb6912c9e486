"""Reading sealed content back with the operator's key: every commitment checked, erasure named.

For each content reference of a record, in order: the key group must be in the keyring (else it
was erased, if a later ``content.erased`` lists it, or it is lost); its key must open under the
operator's key and the group's identity; the inference's data key must be in the group (else
erased or lost); the content file must be there, hash to the record's commitment, match the key
commitment, and open under the associated data of this ledger, inference and field. The first
check that fails is the one reported; nothing unchecked is ever shown.

`ContentReader.disclose` opens a record's fields for an evidence package: the same checks, and
with each opened field its data key and content file, which let a recipient repeat them
(docs/ledger-format.md §11). A field a ``content.erased`` record erased is never disclosed, even
if its keys are still there (an erasure a crash interrupted, which the appliance finishes).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from anticloud.errors import ContentSealError
from anticloud.vault import crypto
from anticloud.vault.keyring import Keyring
from anticloud.vault.store import ContentStore
from ledger import ERASED_KIND, ContentRef, Record, content_refs, erasure_of, records_forward

SEALING_KINDS = ("inference.begin", "inference.end")  # the records that may carry sealed content


@dataclass(slots=True)
class Erasures:
    """What the ledger's ``content.erased`` records destroyed (by the ledger's own rule,
    `ledger.erasure_of`): key group or inference -> the seqs of the erasures naming it, in order."""

    keys: dict[str, list[int]] = field(default_factory=dict)
    inferences: dict[str, list[int]] = field(default_factory=dict)

    def feed(self, record: Record) -> None:
        if record.kind != ERASED_KIND:
            return
        try:
            keys, inferences = erasure_of(record.data)
        except ValueError:  # malformed: it erases nothing (the verifiers report it)
            return
        for key in keys:
            self.keys.setdefault(key, []).append(record.seq)
        for ident in inferences:
            self.inferences.setdefault(ident, []).append(record.seq)

    def of(self, ref: ContentRef) -> int | None:
        """The seq of the first erasure after the reference's record that erased it, or None."""
        found = [seqs[i] for seqs in (self.keys.get(ref.key, []), self.inferences.get(ref.inference, []))
                 if (i := bisect.bisect_right(seqs, ref.seq)) < len(seqs)]
        return min(found) if found else None

    @classmethod
    def of_ledger(cls, ledger: Path) -> Erasures:
        erasures = cls()
        for located in records_forward(ledger, [ERASED_KIND]):
            erasures.feed(located.record)
        return erasures


@dataclass(frozen=True, slots=True)
class Opened:
    """One field of one record: ``open`` with its value, ``erased`` (by the erasure at
    ``erased_at``), or ``failed`` with the reason."""

    seq: int
    field: str
    id: str
    state: str
    value: Any = None
    reason: str | None = None
    erased_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "field": self.field, "id": self.id, "state": self.state}
        if self.state == "open":
            out["value"] = self.value
        if self.reason is not None:
            out["reason"] = self.reason
        if self.erased_at is not None:
            out["erased_at"] = self.erased_at
        return out


@dataclass(frozen=True, slots=True)
class Disclosed:
    """One field as `ContentReader.disclose` found it: ``opened``, and for an open one the data key
    and the content file that prove its value."""

    opened: Opened
    data_key: bytes | None = None
    blob: bytes | None = None


class ContentReader:
    """Opens the sealed content of one ledger's records with the operator's private content key."""

    def __init__(self, keyring: Keyring, store: ContentStore, ledger_id: str, private: X25519PrivateKey,
                 erasures: Erasures) -> None:
        self.keyring, self.store, self.ledger_id, self.private = keyring, store, ledger_id, private
        self.erasures = erasures
        self._group_keys: dict[str, bytes] = {}

    def open_record(self, record: Record) -> list[Opened]:
        """Every field the record seals, opened or named as erased or failed; a malformed
        reference (`ledger.content_refs`) is a failure, and nothing of it is read."""
        return [found.opened for found in self.disclose(record)]

    def open_ref(self, ref: ContentRef) -> Opened:
        return self._disclose(ref).opened

    def disclose(self, record: Record) -> list[Disclosed]:
        """`open_record` for a disclosure: each open field with its key and content file."""
        refs, malformed = content_refs(record.seq, record.kind, record.data)
        return [self._disclose(ref) for ref in refs] + [
            Disclosed(Opened(record.seq, bad.field or "sealed", bad.id or "", "failed", reason=bad.reason))
            for bad in malformed]

    def _disclose(self, ref: ContentRef) -> Disclosed:
        """A field a recorded erasure covers is erased, whether or not its keys survived (a crash
        between the record and the destruction leaves them until the next start finishes it)."""
        at = self.erasures.of(ref)
        if at is not None:
            return Disclosed(Opened(ref.seq, ref.field, ref.id, "erased", reason=f"erased (content.erased at seq {at})",
                                    erased_at=at))
        return self._open(ref)

    def _open(self, ref: ContentRef) -> Disclosed:
        try:
            key, blob, plaintext = self._sealed(ref)
            value = json.loads(plaintext)
        except (ContentSealError, KeyError, ValueError) as exc:
            return Disclosed(Opened(ref.seq, ref.field, ref.id, "failed", reason=str(exc)))
        return Disclosed(Opened(ref.seq, ref.field, ref.id, "open", value), key, blob)

    def _sealed(self, ref: ContentRef) -> tuple[bytes, bytes, bytes]:
        """(the field's key, content file, plaintext) of a reference no erasure covers, every
        commitment checked: a key missing here was removed unrecorded, which is a failure."""
        group_key = self._group_key(ref.key)
        entry = self.keyring.entry(ref.key, ref.inference)
        if entry is None:
            raise ContentSealError(f"the data key of inference {ref.inference} is missing from key group {ref.key}, "
                                   "and no erasure is recorded")
        data_key = crypto.unwrap_data_key(group_key, self.ledger_id, ref.key, ref.inference, entry.wrapped)
        key = crypto.field_key(data_key, ref.field)  # what a disclosure hands out: this field's key alone
        blob = self.store.get(ref.id)
        if blob is None:
            raise ContentSealError(f"content file {self.store.path(ref.id)} is missing")
        return key, blob, crypto.open_content(key, self.ledger_id, ref, blob)

    def _group_key(self, group: str) -> bytes:
        if (known := self._group_keys.get(group)) is not None:
            return known
        try:
            found = self.keyring.group(group)
        except ContentSealError:
            raise ContentSealError(f"key group {group} is missing from the keyring, and no erasure is recorded") \
                from None
        key = crypto.unwrap_group_key(self.private, self.ledger_id, group, found.person, found.month, found.sealed)
        self._group_keys[group] = key
        return key

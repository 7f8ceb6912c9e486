"""What a ledger writer does to seal: find where the sealing chain stands, close epochs, enroll.

A `Sealer` is given to `ledger.LedgerWriter.open`. Every method here runs under the ledger's
exclusive lock, so every process appending to one ledger (a server, the command line)
shares one sealing state (`ledger.sealstate`) and one chain of seals:

* on opening, the newest enrollment and its last seal are found backwards from the head,
  and the state is recovered to match them (or the writer refuses);
* an epoch closes with one ``ledger.seal`` record right after any record whose kind is a
  trigger (written in the same durable batch), when `LedgerWriter.seal` is called (a timer,
  a clean stop), and with a final seal before a new enrollment;
* the next epoch's key replaces this one's only after the seal is durable;
* no key is kept between locked sections (`forget`): it is read from the state when a seal is
  made, so a long-running engine does not hold in memory a key that others evolved since.
  Python cannot wipe the bytes it freed, so a process's memory may still hold keys of the
  epochs it sealed itself until they are reused (SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ledger.errors import LedgerCorruptError
from ledger.reader import records_backward
from ledger.record import Record
from ledger.seal import ENROLL_KIND, KINDS, SEAL_KIND, Kmac, Position, fingerprint, kmac256, seal_data
from ledger.sealstate import Epoch, SealState

# Writes one record durably under the lock the caller holds, and returns it.
WriteLocked = Callable[[str, dict[str, Any]], Record]


class Sealer:
    """The sealing state at ``state_path``; epochs close after ``triggers`` and every ``interval`` s."""

    def __init__(self, state_path: Path, interval: int, triggers: Iterable[str] = (), kmac: Kmac = kmac256,
                 abandon: bool = False) -> None:
        self.state = SealState(state_path, kmac)
        self.interval, self.triggers, self.kmac = interval, frozenset(triggers), kmac
        self.abandon = abandon  # to enroll anew where the state was lost: the open chain ends unsealed
        self._abandoned: str | None = None
        self.position = Position()
        self.opened = False
        self._epoch: Epoch | None = None  # read afresh under each lock: another process may have sealed

    def open(self, ledger: Path) -> None:
        """Under the lock: where the newest chain stands, and the state recovered to match it."""
        enrollment = last_seal = None
        for located in records_backward(ledger, KINDS):
            record = located.record
            if record.kind == SEAL_KIND and last_seal is None:
                last_seal = record
            elif record.kind == ENROLL_KIND:
                enrollment = record
                break
        if last_seal is not None and (enrollment is None
                                      or last_seal.data.get("enrollment") != enrollment.data.get("fingerprint")):
            last_seal = None  # the newest enrollment has no seal of its own yet
        self.position = Position(enrollment, last_seal)
        self.opened = True
        try:
            self.catch_up()
        except LedgerCorruptError:
            if not (self.abandon and enrollment is not None):
                raise
            self._abandoned = str(enrollment.data.get("fingerprint"))
            self.state.discard()

    def catch_up(self) -> None:
        """Under the lock, after records of other processes were read: the state as the ledger needs it."""
        self._epoch = self.state.recover(self.position)

    def observe(self, record: Record) -> None:
        """Every record read or written, in order: follow the newest chain."""
        if record.kind == ENROLL_KIND:
            self.position = Position(record, None)
        elif record.kind == SEAL_KIND and self.position.enrollment is not None:
            self.position = Position(self.position.enrollment, record)

    @property
    def enrolled(self) -> bool:
        return self._epoch is not None

    @property
    def holds_initial_secret(self) -> bool:
        """Epoch 0 is open: the state holds the auditor's secret itself, which must not stay."""
        return self._epoch is not None and self._epoch.number == 0

    def due(self, kinds: Iterable[str]) -> bool:
        return self._epoch is not None and any(kind in self.triggers for kind in kinds)

    def unsealed(self, head: Record) -> bool:
        """Whether records follow the last seal (or the enrollment) of the open chain."""
        if self._epoch is None:
            return False
        return head.seq >= self.position.next_first_seq

    def forget(self) -> None:
        """At the end of a locked section: keep which epoch is open, not its key."""
        if self._epoch is not None:
            self._epoch = Epoch(self._epoch.enrollment, self._epoch.number, b"")

    def _keyed(self) -> Epoch:
        epoch = self._epoch
        assert epoch is not None
        if epoch.key:
            return epoch
        state = self.state.read()
        if state is None or (state.enrollment, state.number) != (epoch.enrollment, epoch.number):
            raise LedgerCorruptError(self.state.path, "the sealing state changed outside the ledger's lock")
        self._epoch = state
        return state

    def seal_data(self, head: Record, final: bool = False) -> dict[str, Any]:
        """The data of the seal that closes the open epoch right after ``head``."""
        epoch, position = self._keyed(), self.position
        assert position.enrollment is not None
        if epoch.number != position.next_epoch:
            raise LedgerCorruptError(self.state.path, f"the sealing state is at epoch {epoch.number}, the ledger "
                                                      f"at {position.next_epoch}")
        return seal_data(epoch.key, epoch.enrollment, epoch.number, position.next_first_seq, head,
                         position.prev_seal, self.interval, final, self.kmac)

    def sealed(self, seal: Record) -> None:
        """Once ``seal`` is durable: the next epoch's key in force, this one's erased."""
        epoch = self._keyed()
        self.observe(seal)
        if seal.data.get("final") is True:
            self.state.erase()
            self._epoch = None
        else:
            self._epoch = self.state.advance(epoch)

    def enroll(self, secret: bytes, data: dict[str, Any], head: Callable[[], Record], write: WriteLocked) -> Record:
        """Under the lock: close the open chain with a final seal, record ``seal.enroll`` for
        ``secret``, put its epoch 0 in force, and seal that epoch at once, so that the secret
        itself leaves the appliance before this returns."""
        if self._epoch is not None:
            self.sealed(write(SEAL_KIND, self.seal_data(head(), final=True)))
        if self._abandoned is not None:  # said in the record: the auditor sees the chain end unsealed
            data = {**data, "abandons": self._abandoned}
        fp = fingerprint(secret, self.kmac)
        self.state.begin(Epoch(fp, 0, secret))  # installed by recovery if the enrollment becomes durable
        enrollment = write(ENROLL_KIND, {**data, "fingerprint": fp, "interval": self.interval})
        self._abandoned = None
        self.observe(enrollment)
        self.catch_up()  # installs epoch 0
        self.sealed(write(SEAL_KIND, self.seal_data(enrollment)))
        return enrollment

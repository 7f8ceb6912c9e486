"""The appliance's sealing state: the open epoch's key, evolved and erased under the ledger's lock.

The state is one small file (mode 0600, beside the ledger unless told otherwise), holding
the enrollment's fingerprint, the open epoch and its key. Closing epoch ``e`` runs, under the
ledger's exclusive lock and only once the ``ledger.seal`` record is durable:

1. write ``<state>.next`` holding epoch ``e+1`` and its key, fsync it and the directory;
2. overwrite the old state's bytes in place with zeros and fsync: the old key leaves the
   file's blocks (what a copy-on-write file system, an SSD's wear levelling, a snapshot or
   a backup kept is beyond this; SECURITY.md says so);
3. rename ``.next`` over the state and fsync the directory.

Recovery (`SealState.recover`, on every open of the writer): a ``.next`` that holds exactly
the epoch the ledger says comes next is installed (2, 3); any other ``.next`` is removed,
because the event that would have justified it never became durable. Then the state must
hold the ledger's next epoch; or the epoch before it, when a crash fell between a durable
seal and step 1 (the seal's tag is checked with the state's key, then 1-3 run now); or the
writer refuses with one line naming the disagreement.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import LedgerCorruptError, LedgerWriteError
from ledger.files import fsync_dir, write_all
from ledger.seal import Kmac, Position, kmac256, next_key, reconcile, tag


@dataclass(frozen=True, slots=True)
class Epoch:
    """The open epoch: its enrollment, number and key. Never logged: its repr hides the key."""

    enrollment: str
    number: int
    key: bytes

    def __repr__(self) -> str:
        return f"Epoch({self.enrollment}, {self.number}, key=<hidden>)"

    def to_bytes(self) -> bytes:
        return json.dumps({"enrollment": self.enrollment, "epoch": self.number, "key": self.key.hex()},
                          sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Epoch:
        doc = json.loads(raw)
        key = bytes.fromhex(doc["key"])
        if not isinstance(doc["enrollment"], str) or not isinstance(doc["epoch"], int) or len(key) != 32:
            raise ValueError("malformed")
        return cls(doc["enrollment"], doc["epoch"], key)


class SealState:
    """The state file at ``path``, and how it moves from one epoch to the next."""

    def __init__(self, path: Path, kmac: Kmac = kmac256) -> None:
        self.path, self.kmac = Path(path), kmac
        self.next_path = self.path.with_name(self.path.name + ".next")

    def read(self) -> Epoch | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerCorruptError(self.path, f"the sealing state cannot be read: {exc.strerror}") from None
        try:
            return Epoch.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            raise LedgerCorruptError(self.path, "the sealing state is malformed") from None

    def recover(self, position: Position) -> Epoch | None:
        """Bring the state to the ledger's next epoch after any crash; None if nothing is to be sealed."""
        self._settle_next(position)
        state = self.read()
        try:
            action = reconcile(None if state is None else state.enrollment, None if state is None else state.number,
                               position)
        except ValueError as exc:
            raise LedgerCorruptError(self.path, str(exc)) from None
        if action == "none":
            if state is not None:  # the chain was closed by a final seal: its key has no further use,
                self._check_own(state, position)  # once that seal is shown to be ours
                self.erase()
            return None
        assert state is not None
        if action == "advance":
            self._check_own(state, position)
            state = self.advance(state)
        return state

    def _check_own(self, state: Epoch, position: Position) -> None:
        """The ledger's last seal must be the one this state's key made: a seal appended by
        someone else must not move the state on, or end it."""
        last = position.last_seal
        if last is None or state.enrollment != position.enrollment_fingerprint:
            raise LedgerCorruptError(self.path, "the sealing state does not match the ledger's last seal")
        content = {k: v for k, v in last.data.items() if k != "tag"}
        if last.data.get("epoch") != state.number or tag(state.key, content, self.kmac) != last.data["tag"]:
            raise LedgerCorruptError(self.path, f"the seal at seq {last.seq} does not verify with the sealing "
                                                "state's key")

    def _settle_next(self, position: Position) -> None:
        try:
            raw = self.next_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            pending: Epoch | None = Epoch.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            pending = None  # torn while it was written: step 1 did not finish
        enrolled = position.enrollment.data.get("fingerprint") if position.enrollment else None
        if pending is not None and pending.enrollment == enrolled and pending.number == position.next_epoch:
            self._install()
        else:
            self.next_path.unlink()
            fsync_dir(self.path.parent)

    def begin(self, epoch: Epoch) -> None:
        """Step 1 for ``epoch``: durable beside the state, not yet in force."""
        try:
            self.next_path.unlink(missing_ok=True)
            fd = os.open(self.next_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                write_all(fd, epoch.to_bytes())
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise LedgerWriteError(self.path, f"cannot write the next sealing state: {exc.strerror}") from None

    def advance(self, state: Epoch) -> Epoch:
        """Steps 1-3: the next epoch's key in force, this one's erased."""
        following = Epoch(state.enrollment, state.number + 1, next_key(state.key, self.kmac))
        self.begin(following)
        self._install()
        return following

    def _install(self) -> None:
        """Steps 2 and 3."""
        try:
            self._zero(self.path)
            os.replace(self.next_path, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise LedgerWriteError(self.path, f"cannot install the next sealing state: {exc.strerror}") from None

    def discard(self) -> None:
        """Zero and remove the state and any next state: a new enrollment abandons them."""
        try:
            self._zero(self.next_path)
            self.next_path.unlink(missing_ok=True)
        except OSError as exc:
            raise LedgerWriteError(self.path, f"cannot discard the sealing state: {exc.strerror}") from None
        self.erase()

    def erase(self) -> None:
        """Zero the state in place and remove it."""
        try:
            self._zero(self.path)
            self.path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise LedgerWriteError(self.path, f"cannot erase the sealing state: {exc.strerror}") from None

    def _zero(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            write_all(fd, bytes(os.fstat(fd).st_size))  # pwrite-free: the descriptor starts at offset 0
            os.fsync(fd)
        finally:
            os.close(fd)

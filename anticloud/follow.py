"""What other processes record while an engine runs: configuration and trust changes.

`anticloud config set|accept` and `anticloud keys revoke` run in processes of their own and
append ``config.change``, ``config.accept`` or ``trust.revoke``. A running engine must govern
its next operation by that recorded state, so it follows the ledger from where it started and
takes those records over (`anticloud.runtime.Appliance.refresh`).

Invariants:

* Only recorded state is taken: config.toml and trust.json are never read here, so an edit
  made around anticloud is never picked up by a running engine (it is drift, which refuses
  the next start).
* Each followed record is parsed with the ledger's own rules (`ledger.record.parse_line`), so
  a line whose hash does not match its content is never applied.
* The check is cheap when nothing happened: one ``stat`` of the ledger, and otherwise a read
  of the bytes appended since the last check, which are mostly the engine's own records.
"""

from __future__ import annotations

import os
from pathlib import Path

from anticloud.errors import AnticloudError
from ledger import LedgerError, Record
from ledger.errors import LedgerCorruptError
from ledger.record import RecordFault, parse_line

FOLLOWED = frozenset({"config.init", "config.change", "config.accept", "trust.add", "trust.revoke"})
_MARKERS = (b'"kind":"config.', b'"kind":"trust.')


class StateChanged(AnticloudError, LedgerError):
    """A configuration or trust record landed since the engine last looked; look again, then retry.

    A LedgerError so that it can be raised from a record builder under the ledger's lock
    (`ledger.LedgerWriter.append_derived`), which fails only that one append."""


class LedgerFollower:
    """Hands over, in order, the followed records appended to ``path`` after ``offset``."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        self.offset = os.stat(path).st_size if offset is None else offset

    def _region(self, size: int) -> bytes:
        """The complete lines between the offset and ``size``."""
        if size <= self.offset:
            return b""
        with open(self.path, "rb") as handle:
            region = os.pread(handle.fileno(), size - self.offset, self.offset)
        return region[: region.rfind(b"\n") + 1]

    def pending(self, size: int) -> bool:
        """Whether a followed record may lie before ``size`` unread. Call it under the ledger's
        lock with the file's size then, and nobody can append one between this check and the
        record about to be written."""
        region = self._region(size)
        return any(marker in region for marker in _MARKERS)

    def take(self) -> list[Record]:
        """The followed records appended since the last call; the offset moves past every complete line."""
        region = self._region(os.stat(self.path).st_size)
        found: list[Record] = []
        for line in region.split(b"\n")[:-1]:
            if not any(marker in line for marker in _MARKERS):  # most lines: the engine's own records
                continue
            try:
                record = parse_line(line)
            except RecordFault as rf:  # the offset stays: nothing is served until the ledger is whole
                raise LedgerCorruptError(self.path, f"a record appended while serving is bad: {rf.detail}") from None
            if record.kind in FOLLOWED:
                found.append(record)
        self.offset += len(region)
        return found

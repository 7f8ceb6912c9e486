"""What other processes record while an engine runs: configuration, trust and store changes.

`anticloud config set|accept`, `anticloud keys revoke` and `anticloud models remove` run in
processes of their own and append ``config.change``, ``config.accept``, ``trust.revoke`` or
``model.remove``. A running engine must govern
its next operation by that recorded state, so it follows the ledger from where it started and
takes those records over (`anticloud.governor.Governor.refresh`).

Invariants:

* Only recorded state is taken: config.toml and trust.json are never read here, so an edit
  made around anticloud is never picked up by a running engine (it is drift, which refuses
  the next start).
* Each followed record is read with the ledger's own reader (`ledger.records_forward`), which
  checks its hash, so a line whose hash does not match its content is never applied.
* The check is cheap when nothing happened: one ``stat`` of the ledger, and otherwise a search
  of the bytes appended since the last check, which are mostly the engine's own records and
  are skipped unparsed.
"""

from __future__ import annotations

import os
from pathlib import Path

from anticloud.errors import AnticloudError
from ledger import LedgerError, Record, complete_end, records_forward

FOLLOWED = ("config.init", "config.change", "config.accept", "config.upgrade", "trust.add", "trust.revoke",
            "model.remove")


class StateChanged(AnticloudError, LedgerError):
    """A configuration or trust record landed since the engine last looked; look again, then retry.

    A LedgerError so that it can be raised from a record builder under the ledger's lock
    (`ledger.LedgerWriter.append_derived`), which fails only that one append."""


class LedgerFollower:
    """Hands over, in order, the followed records appended to ``path`` after ``offset``."""

    def __init__(self, path: Path, offset: int | None = None) -> None:
        self.path = path
        self.offset = os.stat(path).st_size if offset is None else offset

    def pending(self, size: int) -> bool:
        """Whether a followed record may lie before ``size`` unread. Call it under the ledger's
        lock with the file's size then, and nobody can append one between this check and the
        record about to be written."""
        if size <= self.offset:
            return False
        return next(records_forward(self.path, FOLLOWED, self.offset, size), None) is not None

    def take(self) -> list[Record]:
        """The followed records appended since the last call; the offset moves past every complete line.

        A bad record raises LedgerCorruptError and the offset stays: nothing is served until
        the ledger is whole."""
        size = os.stat(self.path).st_size
        if size <= self.offset:
            return []
        end = complete_end(self.path, size)
        found = [located.record for located in records_forward(self.path, FOLLOWED, self.offset, end)]
        self.offset = max(self.offset, end)
        return found

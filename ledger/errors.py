"""The ledger package's exceptions: one root, narrow subclasses that carry their data."""

from __future__ import annotations

from pathlib import Path


class LedgerError(Exception):
    """Root of every error the ledger package raises."""


class EncodingError(LedgerError):
    """A value lies outside the canonical JSON profile (float, huge integer, bad key, lone surrogate)."""


class LedgerWriteError(LedgerError):
    """A record could not be made durable; the caller must refuse its operation."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class LedgerPoisonedError(LedgerWriteError):
    """An earlier write or sync failed; this writer refuses appends until it is reopened."""


class LedgerCorruptError(LedgerError):
    """The file's existing records cannot be extended (bad tail, truncated under us, no genesis)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class LedgerExistsError(LedgerError):
    """A ledger already exists where a new one was to be created."""


class LedgerReadError(LedgerError):
    """A ledger or checkpoint file could not be read at all."""


class CheckpointFormatError(LedgerError):
    """A checkpoint document is malformed."""


class ProofRequestError(LedgerError):
    """A Merkle proof was asked for an index or sizes the tree does not have."""


class NoteError(LedgerError):
    """A signed note, verifier key, checkpoint text or tlog body is malformed, or cannot be made."""

"""A SHA3-256 hash-chained, append-only ledger. It never imports ``anticloud``.

Layers, each depending only on those above it:

* ``canonical`` -- the canonical JSON every hash and signature is computed over;
* ``record``    -- sealing one record into a line and parsing it back;
* ``chain``     -- the pure rules for whether record N+1 may follow record N;
* ``checkpoint``-- Ed25519-signed checkpoints of the head;
* ``verify``    -- replaying a file into a Verdict with evidence (reads files);
* ``reader``    -- finding records forwards, or backwards from the head, without reading it all;
* ``store``     -- the durable, locked, group-committing writer (writes files).

The format is specified in docs/ledger-format.md; tools/verify_ledger.py implements the
same specification with the standard library alone.
"""

from ledger.canonical import canonical_bytes
from ledger.chain import Fault
from ledger.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    load_checkpoint,
    load_public_key,
    sign_checkpoint,
)
from ledger.errors import (
    CheckpointFormatError,
    EncodingError,
    LedgerCorruptError,
    LedgerError,
    LedgerExistsError,
    LedgerPoisonedError,
    LedgerReadError,
    LedgerWriteError,
)
from ledger.reader import Located, last_record, record_at, records_backward, records_forward
from ledger.record import Record, key_id_of
from ledger.store import LedgerWriter, append_checkpoint
from ledger.verify import Verdict, verify_file

__all__ = [
    "Checkpoint",
    "CheckpointFormatError",
    "EncodingError",
    "Fault",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerExistsError",
    "LedgerPoisonedError",
    "LedgerReadError",
    "LedgerWriteError",
    "LedgerWriter",
    "Located",
    "Record",
    "SignedCheckpoint",
    "Verdict",
    "append_checkpoint",
    "canonical_bytes",
    "key_id_of",
    "last_record",
    "load_checkpoint",
    "load_public_key",
    "record_at",
    "records_backward",
    "records_forward",
    "sign_checkpoint",
    "verify_file",
]

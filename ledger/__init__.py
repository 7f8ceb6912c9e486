"""A SHA3-256 hash-chained, append-only ledger. It never imports ``anticloud``.

Layers, each depending only on those above it:

* ``canonical`` -- the canonical JSON every hash and signature is computed over;
* ``record``    -- sealing one record into a line and parsing it back;
* ``chain``     -- the pure rules for whether record N+1 may follow record N;
* ``checkpoint``-- Ed25519-signed checkpoints of the head;
* ``merkle``    -- the RFC 9162 Merkle tree over the lines: hashes, proofs and their verification (pure);
* ``seal``      -- forward-secure epoch seals: the key schedule and the verifier's rules (pure);
* ``verify``    -- replaying a file into a Verdict with evidence, and a caller's Tally of it (reads files);
* ``segment``   -- the rules for a run of records checked against a checkpoint alone (pure);
* ``package``   -- verifying an evidence package: a segment, its genesis, checkpoint and manifest (reads files);
* ``reader``    -- finding records forwards, or backwards from the head, without reading it all;
* ``files``, ``sealstate``, ``sealing`` -- durable writes, and the sealing state a writer evolves;
* ``store``     -- the durable, locked, group-committing writer (writes files).

The format is specified in docs/ledger-format.md; tools/verify_ledger.py implements the
same specification with the standard library alone.

``__all__`` is the contract: code outside this package imports from ``ledger`` only (a lint
rule refuses ``ledger.<module>`` elsewhere), and every other name is private to it.
"""

from ledger.canonical import canonical_bytes, encode_checked, loads_strict, nesting_depth
from ledger.chain import FORMAT_KINDS, Fault
from ledger.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    ed25519_valid,
    load_checkpoint,
    load_public_key,
    public_key_from_pem,
    raw_public_key,
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
    ProofRequestError,
)
from ledger.files import fsync_dir, write_all
from ledger.merkle import (
    EMPTY_ROOT,
    ProofVerdict,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.merkle import root as merkle_root
from ledger.package import PACKAGE_TYPE, PackageVerdict, verify_package
from ledger.reader import (
    Located,
    complete_end,
    last_record,
    record_at,
    records_backward,
    records_forward,
    records_linked,
)
from ledger.record import SHA3_TAG, Record, key_id_of, sha3_tag, utc_timestamp, valid_ts
from ledger.seal import SealReport
from ledger.seal import fingerprint as seal_fingerprint
from ledger.sealing import Sealer
from ledger.segment import PackageFault
from ledger.store import LedgerWriter, append_checkpoint
from ledger.verify import Tally, Verdict, verify_and_tally, verify_file

__all__ = [
    "EMPTY_ROOT",
    "FORMAT_KINDS",
    "PACKAGE_TYPE",
    "SHA3_TAG",
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
    "PackageFault",
    "PackageVerdict",
    "ProofRequestError",
    "ProofVerdict",
    "Record",
    "SealReport",
    "Sealer",
    "SignedCheckpoint",
    "Tally",
    "Verdict",
    "append_checkpoint",
    "canonical_bytes",
    "complete_end",
    "consistency_proof",
    "ed25519_valid",
    "encode_checked",
    "fsync_dir",
    "inclusion_proof",
    "key_id_of",
    "last_record",
    "leaf_hash",
    "load_checkpoint",
    "load_public_key",
    "loads_strict",
    "merkle_root",
    "nesting_depth",
    "node_hash",
    "public_key_from_pem",
    "raw_public_key",
    "record_at",
    "records_backward",
    "records_forward",
    "records_linked",
    "seal_fingerprint",
    "sha3_tag",
    "sign_checkpoint",
    "utc_timestamp",
    "valid_ts",
    "verify_and_tally",
    "verify_consistency",
    "verify_file",
    "verify_inclusion",
    "verify_package",
    "write_all",
]

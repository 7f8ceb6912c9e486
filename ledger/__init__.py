"""A SHA3-256 hash-chained, append-only ledger. It never imports ``anticloud``.

Layers, each depending only on those above it:

* ``canonical`` -- the canonical JSON every hash and signature is computed over;
* ``record``    -- sealing one record into a line and parsing it back;
* ``checkpoint``-- Ed25519-signed checkpoints of the head;
* ``merkle``    -- the RFC 9162 Merkle tree over the lines: hashes, proofs and their verification (pure);
* ``note``      -- C2SP signed notes: verifier keys, Ed25519 signatures and tlog cosignatures (pure);
* ``tlog_text`` -- C2SP checkpoint bodies, witness add-checkpoint requests and tlog-proof files (pure);
* ``chain``     -- the pure rules for whether record N+1 may follow record N, signed tree heads included;
* ``seal``      -- forward-secure epoch seals: the key schedule and the verifier's rules (pure);
* ``content``   -- sealed content: a record's content references, their erasure, the store's report (pure);
* ``verify``    -- replaying a file into a Verdict with evidence, and a caller's Tally of it (reads files);
* ``segment``   -- the rules for a run of records checked against a checkpoint alone (pure);
* ``disclosure``-- a package's disclosed content (content.jsonl) checked against its segment (pure);
* ``package``   -- verifying an evidence package: a segment, its genesis, checkpoint and manifest (reads files);
* ``reader``    -- finding records forwards, or backwards from the head, without reading it all;
* ``tree``      -- the Merkle tree kept on disk beside the ledger, for proofs in O(log n) reads;
* ``witnesses`` -- which witnesses cosigned which signed tree heads: k of n (pure);
* ``receipt``   -- proofs handed out: a record's tlog-proof, and the extension of one tree by another;
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
    origin_of,
    public_key_from_pem,
    raw_public_key,
    sign_checkpoint,
)
from ledger.content import (
    ERASED_KIND,
    ContentFinding,
    ContentRef,
    ContentReport,
    ContentTally,
    MalformedContent,
    content_path,
    content_refs,
    erasure_of,
    file_digest,
)
from ledger.disclosure import CONTENT_FILE, DisclosureSummary, aesgcm_open, content_ad, key_commitment
from ledger.errors import (
    CheckpointFormatError,
    EncodingError,
    LedgerCorruptError,
    LedgerError,
    LedgerExistsError,
    LedgerPoisonedError,
    LedgerReadError,
    LedgerWriteError,
    NoteError,
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
from ledger.note import (
    COSIGNATURE_V1,
    ED25519,
    NoteSignature,
    NoteVerdict,
    Vkey,
    add_signature_lines,
    cosign,
    cosigner_vkey,
    ed25519_vkey,
    open_note,
    parse_vkey,
    sign_note,
    split_note,
)
from ledger.note import key_id as note_key_id
from ledger.package import PACKAGE_TYPE, PackageVerdict, verify_package
from ledger.reader import (
    Located,
    complete_end,
    last_record,
    record_at,
    record_with_seq,
    records_backward,
    records_forward,
    records_linked,
)
from ledger.receipt import (
    COSIGNED_KIND,
    ReceiptVerdict,
    SignedHead,
    check_extension,
    check_receipt,
    cosignature_lines,
    covering,
    prove_extension,
    prove_record,
    signed_heads,
)
from ledger.record import SHA3_TAG, Record, key_id_of, sha3_tag, utc_timestamp, valid_ts
from ledger.seal import SealReport
from ledger.seal import fingerprint as seal_fingerprint
from ledger.sealing import Sealer
from ledger.segment import PackageFault
from ledger.store import LedgerWriter, append_checkpoint
from ledger.tlog_text import (
    AddCheckpoint,
    TlogProof,
    TreeHead,
    parse_add_checkpoint,
    parse_checkpoint_text,
    parse_tlog_proof,
    tree_head_of,
)
from ledger.verify import EXIT_CONTENT, Tally, Verdict, verify_and_tally, verify_file
from ledger.witnesses import WitnessReport, check_cosignatures

__all__ = [
    "CONTENT_FILE",
    "COSIGNATURE_V1",
    "COSIGNED_KIND",
    "ED25519",
    "EMPTY_ROOT",
    "ERASED_KIND",
    "EXIT_CONTENT",
    "FORMAT_KINDS",
    "PACKAGE_TYPE",
    "SHA3_TAG",
    "AddCheckpoint",
    "Checkpoint",
    "CheckpointFormatError",
    "ContentFinding",
    "ContentRef",
    "ContentReport",
    "ContentTally",
    "DisclosureSummary",
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
    "MalformedContent",
    "NoteError",
    "NoteSignature",
    "NoteVerdict",
    "PackageFault",
    "PackageVerdict",
    "ProofRequestError",
    "ProofVerdict",
    "ReceiptVerdict",
    "Record",
    "SealReport",
    "Sealer",
    "SignedCheckpoint",
    "SignedHead",
    "Tally",
    "TlogProof",
    "TreeHead",
    "Verdict",
    "Vkey",
    "WitnessReport",
    "add_signature_lines",
    "aesgcm_open",
    "append_checkpoint",
    "canonical_bytes",
    "check_cosignatures",
    "check_extension",
    "check_receipt",
    "complete_end",
    "consistency_proof",
    "content_ad",
    "content_path",
    "content_refs",
    "cosign",
    "cosignature_lines",
    "cosigner_vkey",
    "covering",
    "ed25519_valid",
    "ed25519_vkey",
    "encode_checked",
    "erasure_of",
    "file_digest",
    "fsync_dir",
    "inclusion_proof",
    "key_commitment",
    "key_id_of",
    "last_record",
    "leaf_hash",
    "load_checkpoint",
    "load_public_key",
    "loads_strict",
    "merkle_root",
    "nesting_depth",
    "node_hash",
    "note_key_id",
    "open_note",
    "origin_of",
    "parse_add_checkpoint",
    "parse_checkpoint_text",
    "parse_tlog_proof",
    "parse_vkey",
    "prove_extension",
    "prove_record",
    "public_key_from_pem",
    "raw_public_key",
    "record_at",
    "record_with_seq",
    "records_backward",
    "records_forward",
    "records_linked",
    "seal_fingerprint",
    "sha3_tag",
    "sign_checkpoint",
    "sign_note",
    "signed_heads",
    "split_note",
    "tree_head_of",
    "utc_timestamp",
    "valid_ts",
    "verify_and_tally",
    "verify_consistency",
    "verify_file",
    "verify_inclusion",
    "verify_package",
    "write_all",
]

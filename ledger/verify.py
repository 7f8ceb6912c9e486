"""Verify a ledger file: replay the chain and return a Verdict carrying its evidence.

Statuses and exit codes (the same in ``tools/verify_ledger.py``):

* ``intact`` (0): every complete record verified, and the auditor's checkpoint, if given, matched;
* ``broken`` (1): a fault, naming the first bad record;
* ``torn`` (3): every complete record verified but the file ends in an unterminated
  line, as a crash mid-append leaves it; the writer recovers it on its next open.

An unreadable file raises LedgerReadError, which the command line reports with exit 2.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.chain import Chain, ChainFault, Fault, SignatureCheck
from ledger.checkpoint import SignedCheckpoint, ed25519_valid
from ledger.errors import LedgerReadError

EXIT_CODES = {"intact": 0, "broken": 1, "torn": 3}


@dataclass(frozen=True, slots=True)
class TornTail:
    offset: int
    length: int
    sha3_256: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "length": self.length, "sha3_256": self.sha3_256}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    path: str
    records: int
    first_ts: str | None
    last_ts: str | None
    head_seq: int | None
    head_hash: str | None
    ledger_id: str | None
    key_id: str | None
    checkpoints_in_ledger: int
    signatures_checked: bool
    fault: Fault | None = None
    torn: TornTail | None = None
    checkpoint: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.status,
            "exit_code": self.exit_code,
            "path": self.path,
            "records": self.records,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "head": None if self.head_seq is None else {"seq": self.head_seq, "hash": self.head_hash},
            "ledger_id": self.ledger_id,
            "key_id": self.key_id,
            "checkpoints_in_ledger": self.checkpoints_in_ledger,
            "signatures_checked": self.signatures_checked,
            "checkpoint": self.checkpoint,
            "fault": None if self.fault is None else self.fault.to_json(),
            "torn_tail": None if self.torn is None else self.torn.to_json(),
        }


def verify_file(
    path: Path,
    checkpoint: SignedCheckpoint | None = None,
    public_key: bytes | None = None,
    check_signature: SignatureCheck | None = ed25519_valid,
) -> Verdict:
    """Replay ``path``. ``public_key`` is the raw key the auditor holds (appliance.pub)."""
    chain = Chain(check_signature, public_key, checkpoint)
    fault: Fault | None = None
    torn: TornTail | None = None
    offset = 0
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    torn = TornTail(offset, len(raw), "sha3-256:" + hashlib.sha3_256(raw).hexdigest())
                    break
                try:
                    chain.feed(raw[:-1], offset)
                except ChainFault as cf:
                    fault = cf.fault
                    break
                offset += len(raw)
    except OSError as exc:
        raise LedgerReadError(f"cannot read ledger {path}: {exc.strerror}") from None

    cp = checkpoint.checkpoint if checkpoint else None
    if fault is None and chain.count == 0:
        fault = Fault("bad_genesis", 0, 1, 0, "the ledger has no complete record", "ledger.genesis", None)
    if fault is None and cp is not None and chain.count <= cp.seq:
        fault = Fault("truncated_below_checkpoint", cp.seq, cp.seq + 1, offset,
                      "the ledger ends before the record the checkpoint signed",
                      f"record {cp.seq}", f"last record {chain.count - 1}")
    status = "broken" if fault else "torn" if torn else "intact"
    head = chain.head
    genesis = chain.genesis
    return Verdict(
        status=status,
        path=str(path),
        records=chain.count,
        first_ts=chain.first_ts,
        last_ts=head.ts if head else None,
        head_seq=head.seq if head else None,
        head_hash=head.hash if head else None,
        ledger_id=genesis.ledger_id if genesis else None,
        key_id=genesis.key_id if genesis else None,
        checkpoints_in_ledger=chain.checkpoints,
        signatures_checked=check_signature is not None,
        fault=fault,
        torn=torn,
        checkpoint=None if cp is None else {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts,
                                            "matched": fault is None},
    )

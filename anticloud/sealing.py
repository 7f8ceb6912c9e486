"""Forward-secure sealing on the appliance: what closes an epoch at once, and the auditor's secret.

The sealing itself is the ledger's (`ledger.sealing`); this module says which records are
security events that close the epoch they fall in at once, where the state lives, and what
the auditor takes away at enrollment.

Invariants:

* The initial secret is written once, to the auditor's file (0600, outside the home), and
  never logged, recorded or kept: the enrollment seals epoch 0 before it returns, which
  replaces the secret in the state by the next epoch's key and zeroes it.
* A writer seals only where the home has a sealing state: deleting the state stops the
  appliance sealing, which the auditor's verifier reports (``seal_overdue``, or a stale
  last seal against their clock).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from itertools import islice
from pathlib import Path

from anticloud.config import DEFAULTS, load_config
from anticloud.errors import AnticloudError, ConfigError
from anticloud.home import Home
from ledger import LedgerWriter, Record, Sealer, records_backward, seal_fingerprint, utc_timestamp

SECRET_TYPE = "anticloud.seal.secret"  # noqa: S105 -- a document type, not a secret
# Security events: the epoch they fall in is sealed right after them, in the same durable write.
TRIGGERS = frozenset({
    "config.init", "config.change", "config.accept", "config.upgrade", "config.drift", "trust.add", "trust.revoke",
    "token.create", "token.revoke", "model.import", "model.import.rejected", "model.remove", "model.load",
    "model.load.refused", "engine.start", "engine.stop", "engine.refused", "airgap.breach", "airgap.restored",
    "airgap.unobserved", "airgap.observed", "ledger.checkpoint", "ledger.recovered", "ledger.outage", "clock.jump",
})


class SealError(AnticloudError):
    """The auditor's sealing secret cannot be written or read."""


def sealer_for(home: Home, always: bool = False, abandon: bool = False) -> Sealer | None:
    """The home's sealer, if it is enrolled (or ``always``, to enroll it; ``abandon`` a lost state)."""
    state = home.seal_state
    if not (always or state.exists() or state.with_name(state.name + ".next").exists()):
        return None
    try:
        interval = int(load_config(home).get("ledger", "seal_interval"))
    except ConfigError:  # a configuration being repaired still seals, at the default pace
        interval = int(DEFAULTS["ledger"]["seal_interval"])
    return Sealer(state, interval, TRIGGERS, abandon=abandon)


def enroll(home: Home, writer: LedgerWriter, auditor: str, out: Path) -> Record:
    """Draw a secret, write it to ``out`` for the auditor, and enroll the ledger with it."""
    out = out.parent.resolve() / out.name  # through every link and "..": where the bytes will land
    if out.is_relative_to(home.root.resolve()):
        raise SealError(f"{out} is inside the appliance home; the secret must leave it (removable media)")
    secret = secrets.token_bytes(32)
    document = secret_document(secret, writer.genesis.data["ledger_id"], auditor)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SealError(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        return writer.enroll(secret, {"auditor": auditor})
    except BaseException as exc:
        newest = list(islice(records_backward(home.ledger, ["seal.enroll"]), 1))
        if newest and newest[0].record.data.get("fingerprint") == seal_fingerprint(secret):
            # The enrollment is on record: the ledger's next open seals its epoch 0, and only this
            # file can ever verify that chain. Keep it.
            raise SealError(f"{auditor} is enrolled (keep {out}), but sealing the first epoch failed: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        out.unlink(missing_ok=True)  # an enrollment that did not happen leaves no secret behind
        raise


def secret_document(secret: bytes, ledger_id: str, auditor: str) -> bytes:
    """What the auditor keeps: JSON, with the secret also in a form to write down (base32, grouped)."""
    written = base64.b32encode(secret).decode().rstrip("=")
    doc = {"type": SECRET_TYPE, "ledger_id": ledger_id, "auditor": auditor, "enrolled": utc_timestamp(),
           "fingerprint": seal_fingerprint(secret), "kdf": "KMAC256 (NIST SP 800-185), docs/ledger-format.md",
           "secret": secret.hex(), "written": " ".join(written[i:i + 4] for i in range(0, len(written), 4))}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def read_secret(path: Path) -> bytes:
    """The secret from an auditor's file (the JSON document, or the written form alone)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SealError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if text.startswith("{"):
            doc = json.loads(text)
            if doc.get("type") != SECRET_TYPE:
                raise ValueError("not an anticloud sealing secret")
            secret = bytes.fromhex(doc["secret"])
        else:
            letters = "".join(text.split()).upper()
            secret = base64.b32decode(letters + "=" * (-len(letters) % 8))
    except (ValueError, KeyError, TypeError) as exc:
        raise SealError(f"{path} is not a sealing secret: {exc}") from None
    if len(secret) != 32:
        raise SealError(f"{path} holds a secret of {len(secret)} bytes, not 32")
    return secret

"""The auditor's witness: cosign an appliance's checkpoints only if they extend what it cosigned.

A witness runs on the auditor's own machine and hears from the appliance by sneakernet alone.
Its rules follow C2SP tlog-witness's add-checkpoint (the request is that body, read from a
file), with the HTTP status codes turned into refusals with a reason:

* ``unknown_log``  -- no log with the checkpoint's origin was added (404);
* ``bad_signature`` -- no valid signature by the log's key, or a bad one under its name (403);
* ``bad_request``  -- the old size is larger than the checkpoint's, or a malformed request (400);
* ``stale``        -- the old size is not the size this witness last cosigned (409): the request
  was made from an older view, or the checkpoint is older than the one cosigned;
* ``inconsistent`` -- the consistency proof does not show that the checkpoint extends the one
  cosigned, or the same size has another root (422): a fork or a rewrite of the log.

`judge` is the pure rule. `Witness` holds the state in a directory: its Ed25519 key (0600),
``logs.json`` (for each log: its verifier key and the latest checkpoint cosigned, replaced
atomically), and a ledger of its own in which every cosignature and every refusal is recorded
before it is given, so that the auditor's decisions are themselves a verifiable chain.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.errors import WitnessError
from anticloud.fsutil import atomic_write
from anticloud.identity import public_pem, read_private_key, write_private_key
from ledger import (
    EMPTY_ROOT,
    AddCheckpoint,
    LedgerError,
    LedgerWriter,
    NoteError,
    TreeHead,
    Vkey,
    cosign,
    cosigner_vkey,
    key_id_of,
    open_note,
    parse_add_checkpoint,
    parse_vkey,
    raw_public_key,
    tree_head_of,
    verify_consistency,
)

KEY_FILE, PUB_FILE, LOGS_FILE = "witness.key", "witness.pub", "logs.json"
LEDGER_FILE, LOCK_FILE = "ledger.jsonl", ".lock"


@dataclass(frozen=True, slots=True)
class LogState:
    """One log this witness follows: its verifier key and the latest checkpoint it cosigned."""

    vkey: Vkey
    size: int = 0
    root: bytes = EMPTY_ROOT
    checkpoint: str | None = None  # that checkpoint, with this witness's cosignature

    @property
    def origin(self) -> str:
        return self.vkey.name

    def to_json(self) -> dict[str, Any]:
        return {"vkey": self.vkey.encode(), "size": self.size, "root": base64.b64encode(self.root).decode(),
                "checkpoint": self.checkpoint}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LogState:
        return cls(parse_vkey(doc["vkey"]), int(doc["size"]), base64.b64decode(doc["root"], validate=True),
                   doc.get("checkpoint"))


def judge(logs: dict[str, LogState], request: AddCheckpoint) -> tuple[LogState, TreeHead]:
    """Whether to cosign ``request``: the log it is for and the tree head to cosign, or WitnessError."""
    try:
        head = tree_head_of(request.checkpoint)
    except NoteError as exc:
        raise WitnessError("bad_request", f"the checkpoint is malformed: {exc}") from None
    log = logs.get(head.origin)
    if log is None:
        raise WitnessError("unknown_log", f"no log with origin {head.origin!r} was added to this witness")
    verdict = open_note(request.checkpoint, [log.vkey])
    if not verdict.ok:
        raise WitnessError("bad_signature", f"the checkpoint is not signed by the key of {head.origin}: "
                                            f"{verdict.detail}")
    if request.old_size > head.size:
        raise WitnessError("bad_request", f"old size {request.old_size} is larger than the checkpoint's size "
                                          f"{head.size}")
    if request.old_size != log.size:
        raise WitnessError("stale", f"the request starts from size {request.old_size}, but this witness last "
                                    f"cosigned size {log.size} of {head.origin}")
    if head.size == 0 and head.root != EMPTY_ROOT:
        raise WitnessError("inconsistent", "a checkpoint of size 0 must have the empty tree's root")
    proof = verify_consistency(log.size, head.size, log.root, head.root, list(request.proof))
    if not proof.ok:
        what = "another root for the same size" if log.size == head.size else "no proof that it extends it"
        raise WitnessError("inconsistent", f"the checkpoint of size {head.size} does not extend the one of size "
                                           f"{log.size} this witness cosigned ({what}: {proof.detail}); "
                                           "the log was forked or rewritten")
    return log, head


class Witness:
    """A witness's directory: key, the logs it follows, and its own ledger."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def init(cls, root: Path, name: str) -> Witness:
        """Make a new witness called ``name`` (its cosignatures' key name) in ``root``."""
        if (root / KEY_FILE).exists():
            raise WitnessError("exists", f"{root} already holds a witness")
        if not name or any(c.isspace() or c == "+" for c in name):
            raise WitnessError("bad_request", "a witness name must be non-empty, without spaces or '+'")
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        write_private_key(root / KEY_FILE, key)
        atomic_write(root / PUB_FILE, public_pem(key))
        raw = raw_public_key(key.public_key())
        genesis = {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}
        LedgerWriter.create(root / LEDGER_FILE, genesis).close()
        witness = cls(root)
        with witness._locked() as writer:
            writer.append("witness.init", {"name": name, "vkey": witness.vkey(key, name)})
            witness._save({"name": name, "logs": {}})
        return witness

    @staticmethod
    def vkey(key: Ed25519PrivateKey, name: str) -> str:
        return cosigner_vkey(name, raw_public_key(key.public_key())).encode()

    @property
    def name(self) -> str:
        return str(self._state()["name"])

    def key(self) -> Ed25519PrivateKey:
        return read_private_key(self.root / KEY_FILE)

    def logs(self) -> dict[str, LogState]:
        try:
            return {origin: LogState.from_json(doc) for origin, doc in self._state()["logs"].items()}
        except (KeyError, TypeError, ValueError, NoteError) as exc:
            raise WitnessError("bad_state", f"{self.root / LOGS_FILE} is damaged: {exc}") from None

    def add_log(self, vkey_text: str) -> LogState:
        """Follow the log whose verifier key is ``vkey_text`` (given by hand); recorded."""
        try:
            vkey = parse_vkey(vkey_text.strip())
        except NoteError as exc:
            raise WitnessError("bad_request", f"not a verifier key: {exc}") from None
        with self._locked() as writer:
            state = self._state()
            if vkey.name in state["logs"]:
                raise WitnessError("exists", f"log {vkey.name} was already added")
            log = LogState(vkey)
            writer.append("witness.add_log", {"origin": vkey.name, "vkey": vkey.encode()})
            self._save({**state, "logs": {**state["logs"], vkey.name: log.to_json()}})
        return log

    def cosign(self, raw_request: bytes, now: int | None = None) -> tuple[str, str]:
        """Judge an add-checkpoint request; return (the cosignature line, the cosigned checkpoint).

        The check against the stored state, the record and the new state happen under one lock,
        so two requests cannot roll the state back (tlog-witness's race). A refusal is recorded,
        then raised."""
        with self._locked() as writer:
            state = self._state()
            try:
                request = parse_add_checkpoint(raw_request)
            except NoteError as exc:
                writer.append("witness.refused", {"reason": "bad_request", "detail": str(exc)})
                raise WitnessError("bad_request", f"not an add-checkpoint request: {exc}") from None
            try:
                log, head = judge(self.logs(), request)
            except WitnessError as exc:
                writer.append("witness.refused", {"reason": exc.reason, "detail": str(exc),
                                                  "checkpoint": request.checkpoint, "old_size": request.old_size})
                raise
            stamp = int(time.time()) if now is None else now
            line = cosign(head.text(), state["name"], self.key(), stamp)
            cosigned = request.checkpoint + line
            writer.append("witness.cosigned", {"origin": head.origin, "size": head.size,
                                               "root": base64.b64encode(head.root).decode(), "time": stamp,
                                               "old_size": log.size, "cosignature": line})
            updated = LogState(log.vkey, head.size, head.root, cosigned)
            self._save({**state, "logs": {**state["logs"], head.origin: updated.to_json()}})
        return line, cosigned

    # -- state ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.root / LOGS_FILE).read_bytes())
        except FileNotFoundError:
            raise WitnessError("not_initialised", f"{self.root} holds no witness; run `anticloud witness init`") \
                from None
        except (OSError, ValueError) as exc:
            raise WitnessError("bad_state", f"{self.root / LOGS_FILE} cannot be read: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("logs"), dict):
            raise WitnessError("bad_state", f"{self.root / LOGS_FILE} is damaged")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write(self.root / LOGS_FILE, json.dumps(state, indent=2, sort_keys=True).encode() + b"\n", 0o600)

    @contextmanager
    def _locked(self) -> Iterator[LedgerWriter]:
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with LedgerWriter.open(self.root / LEDGER_FILE) as writer:
                    yield writer
            except LedgerError as exc:
                raise WitnessError("ledger", f"the witness's own ledger cannot be written: {exc}") from None
        finally:
            os.close(fd)

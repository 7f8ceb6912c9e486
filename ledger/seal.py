"""Forward-secure epoch seals: the key schedule, the seal record, and the rules a verifier applies.

An auditor enrolls by taking away a random 32-byte initial secret ``K_0``; the appliance
keeps only the key of the epoch now open, and evolves it one way when the epoch closes:

    K_{i+1} = KMAC256(K_i, "", 256, S="anticloud.seal.evolve")      the next epoch's key
    T_i     = KMAC256(K_i, "", 256, S="anticloud.seal.tag-key")     the key epoch i's tag is made with
    tag_i   = KMAC256(T_i, canonical(content_i), 256, S="anticloud.seal")

The evolving key and the tag key are derived apart (domain-separated customisation
strings), so a tag never exposes the key that derives the next one. Whoever holds ``K_n``
can compute every later key and no earlier one: a compromise in epoch ``n`` can forge seals
from epoch ``n`` on, never before.

A ``ledger.seal`` record is an ordinary chained record whose data is the content plus its
tag. The content names the enrollment (the fingerprint of ``K_0``), the epoch, the first and
last seq it covers (the records since the previous seal, up to the one just before the
seal), the hash of that last record, the previous seal's tag, the sealing interval in force,
and ``final`` when a re-enrollment closes the chain. Through ``last_hash`` the tag covers
every record of the epoch, and through ``prev_seal`` every earlier seal.

Rules for verifying (reason codes, as in docs/ledger-format.md), in `SealCheck`:

* ``seal_malformed``: a seal or enrollment record without the fields above (an enrollment
  holds exactly ``fingerprint``, ``interval`` and ``auditor``, and ``abandons`` when it
  abandons the open chain);
* ``seal_unenrolled``: a seal that names no enrollment before it, or one already closed;
* ``seal_epoch``: an epoch that is not the next in its chain (0, 1, 2, ... with one seal each);
* ``seal_gap``: a seal that does not cover exactly the records since the previous seal (or
  the enrollment) up to the record just before it;
* ``seal_chain``: a ``prev_seal`` that is not the previous seal's tag;
* ``seal_bad_tag``: a tag that does not verify under the key of the seal's *position* in its
  chain (derived from the secret by counting seals, never from the number the record claims);
* ``seal_enrollment_missing``: the secret given matches no enrollment in the ledger;
* ``seal_abandoned``: the chain of the secret given was abandoned by a later enrollment (its
  state lost, or so its writer claims): nothing after that point is covered by the secret,
  and abandoning needs no key, so the auditor must find out why;
* ``seal_overdue``: records after the last seal of an open chain that span more than twice
  its interval (an appliance seals at least once per interval while it runs, and before
  anything else when it starts again, so only stripped seals leave such a tail).

Everything here is pure: the verifier feeds records, the writer feeds its state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.canonical import canonical_bytes
from ledger.record import Record

SEAL_KIND = "ledger.seal"
ENROLL_KIND = "seal.enroll"
KINDS = (ENROLL_KIND, SEAL_KIND)
TAG = "kmac256:"
NO_SEAL = TAG + "0" * 64  # prev_seal of epoch 0
SECRET_BYTES = 32
_EVOLVE, _TAG_KEY, _SEAL, _FINGERPRINT = (b"anticloud.seal.evolve", b"anticloud.seal.tag-key", b"anticloud.seal",
                                          b"anticloud.seal.fingerprint")
_TAG_RE = re.compile(r"kmac256:[0-9a-f]{64}\Z")
_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")

# KMAC256(key, data, customisation) -> 32 bytes. The appliance passes pycryptodome's; the
# standard-library verifier computes its own (tools/verify_ledger.py).
Kmac = Callable[[bytes, bytes, bytes], bytes]


def kmac256(key: bytes, data: bytes, custom: bytes) -> bytes:
    """KMAC256 with a 256-bit output, from pycryptodome."""
    from Crypto.Hash import KMAC256

    mac = KMAC256.new(key=key, mac_len=32, custom=custom)
    mac.update(data)
    return mac.digest()


def next_key(key: bytes, kmac: Kmac = kmac256) -> bytes:
    return kmac(key, b"", _EVOLVE)


def fingerprint(secret: bytes, kmac: Kmac = kmac256) -> str:
    """Names an enrollment without revealing its secret."""
    return TAG + kmac(secret, b"", _FINGERPRINT).hex()


def tag(key: bytes, content: dict[str, Any], kmac: Kmac = kmac256) -> str:
    """The tag of a seal's ``content`` (its data without ``tag``) under epoch key ``key``."""
    return TAG + kmac(kmac(key, b"", _TAG_KEY), canonical_bytes(content), _SEAL).hex()


def seal_data(key: bytes, enrollment: str, epoch: int, first_seq: int, head: Record, prev_seal: str,
              interval: int, final: bool = False, kmac: Kmac = kmac256) -> dict[str, Any]:
    """The data of the ``ledger.seal`` record that closes ``epoch`` right after ``head``."""
    content: dict[str, Any] = {"enrollment": enrollment, "epoch": epoch, "first_seq": first_seq,
                               "last_seq": head.seq, "last_hash": head.hash, "prev_seal": prev_seal,
                               "interval": interval}
    if final:
        content["final"] = True
    return {**content, "tag": tag(key, content, kmac)}


# -- the writer's side: where the sealing state stands against the ledger ----------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """What the ledger says of the newest enrollment: its fingerprint, and the last seal of its chain."""

    enrollment: Record | None = None
    last_seal: Record | None = None

    @property
    def next_epoch(self) -> int:
        return 0 if self.last_seal is None else int(self.last_seal.data["epoch"]) + 1

    @property
    def next_first_seq(self) -> int:
        anchor = self.last_seal or self.enrollment
        assert anchor is not None
        return anchor.seq + 1 if self.last_seal is not None else anchor.seq

    @property
    def prev_seal(self) -> str:
        return NO_SEAL if self.last_seal is None else str(self.last_seal.data["tag"])

    @property
    def enrollment_fingerprint(self) -> str | None:
        return None if self.enrollment is None else str(self.enrollment.data.get("fingerprint"))

    @property
    def closed(self) -> bool:
        return self.last_seal is not None and self.last_seal.data.get("final") is True


def reconcile(state_enrollment: str | None, state_epoch: int | None, position: Position) -> str:
    """What to do with the state file, given the ledger: ``"none"`` (not enrolled), ``"ready"``
    (the state holds the open epoch's key), ``"advance"`` (the epoch's seal is durable but its
    key was not evolved yet: a crash between the two), or raise ValueError naming why the state
    and the ledger disagree (the engine then refuses to start)."""
    if position.enrollment is None:
        if state_enrollment is not None:
            raise ValueError("a sealing state exists but the ledger records no enrollment")
        return "none"
    fp = position.enrollment.data.get("fingerprint")
    if position.closed:
        return "none"
    if state_enrollment is None:
        raise ValueError(f"the ledger is enrolled for sealing (seq {position.enrollment.seq}) but the sealing "
                         "state is missing; enroll anew, abandoning the open chain (`audit enroll --abandon`)")
    if state_enrollment != fp:
        raise ValueError("the sealing state belongs to another enrollment than the ledger's newest "
                         f"(seq {position.enrollment.seq})")
    if state_epoch == position.next_epoch:
        return "ready"
    if position.last_seal is not None and state_epoch == position.next_epoch - 1:
        return "advance"
    raise ValueError(f"the sealing state is at epoch {state_epoch} but the ledger's next epoch is "
                     f"{position.next_epoch}")


# -- the verifier's side --------------------------------------------------------------------------------


@dataclass
class SealFault(Exception):
    reason: str
    seq: int
    detail: str
    expected: str | None = None
    actual: str | None = None


@dataclass
class _Chain:
    enrollment: Record
    key: bytes | None  # the key of the next epoch, when the auditor's secret is this chain's
    epoch: int = 0
    first_seq: int = 0
    prev_seal: str = NO_SEAL
    last_seal: Record | None = None
    closed: bool = False
    abandoned: bool = False
    abandoned_at: int | None = None


@dataclass
class SealReport:
    """What the seals prove: the span sealed, the span not sealed, and whether tags were checked."""

    enrollments: int = 0
    seals: int = 0
    checked: bool = False
    fingerprint: str | None = None  # the enrollment the auditor's secret matched
    sealed_epoch: int | None = None
    sealed_seq: int | None = None
    sealed_ts: str | None = None
    closed: bool = False
    unsealed_records: int = 0
    unsealed_from: str | None = None
    unsealed_until: str | None = None
    interval: int | None = None
    stale_seconds: float | None = None  # with the auditor's clock: how long since the last seal
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"enrollments": self.enrollments, "seals": self.seals, "tags_checked": self.checked,
                "fingerprint": self.fingerprint,
                "sealed_through": None if self.sealed_seq is None else {
                    "epoch": self.sealed_epoch, "seq": self.sealed_seq, "ts": self.sealed_ts},
                "closed_by_reenrollment": self.closed,
                "unsealed": {"records": self.unsealed_records, "from": self.unsealed_from,
                             "until": self.unsealed_until},
                "interval": self.interval, "stale_seconds": self.stale_seconds, "notes": self.notes}


class SealCheck:
    """Replays the enrollment and seal records of a ledger, in order, against the rules above.

    ``secret`` is the auditor's initial secret (None: check everything but the tags)."""

    def __init__(self, secret: bytes | None = None, kmac: Kmac = kmac256) -> None:
        self.kmac = kmac
        self.secret = secret
        self.mine = None if secret is None else fingerprint(secret, kmac)
        self.chains: dict[str, _Chain] = {}
        self.current: _Chain | None = None  # the newest enrollment's chain
        self.report = SealReport(checked=secret is not None)

    def feed(self, record: Record) -> None:
        """One ``seal.enroll`` or ``ledger.seal`` record, in ledger order; raises SealFault."""
        if record.kind == ENROLL_KIND:
            self._enroll(record)
        else:
            self._seal(record)

    def _enroll(self, record: Record) -> None:
        data = record.data
        fp = data.get("fingerprint")
        if not isinstance(fp, str) or not _TAG_RE.match(fp) or fp in self.chains:
            raise SealFault("seal_malformed", record.seq, "an enrollment needs a fingerprint of its own", None,
                            None if fp is None else str(fp))
        interval = data.get("interval")
        members = set(data) - {"abandons"} == {"fingerprint", "interval", "auditor"}
        if not (members and isinstance(data["auditor"], str) and isinstance(interval, int)
                and not isinstance(interval, bool) and interval >= 1):
            raise SealFault("seal_malformed", record.seq, "an enrollment holds exactly fingerprint, interval (a "
                            "positive integer), auditor and, when it abandons a chain, abandons")
        if self.current is not None and not self.current.closed:
            if record.data.get("abandons") != self.current.enrollment.data["fingerprint"]:
                raise SealFault("seal_unenrolled", record.seq, "a new enrollment must follow the final seal of the "
                                "previous one, or say it abandons it", "final seal", "none")
            self.current.closed = self.current.abandoned = True  # its state was lost: it ends unsealed
            self.current.abandoned_at = record.seq
            self.report.notes.append(f"the chain {self.current.enrollment.data['fingerprint']} was abandoned "
                                     f"unsealed at seq {record.seq} (its sealing state was lost)")
        self.current = self.chains[fp] = _Chain(record, self.secret if fp == self.mine else None, first_seq=record.seq)
        self.report.enrollments += 1

    def _seal(self, record: Record) -> None:
        data, seq = record.data, record.seq
        chain = self.chains.get(str(data.get("enrollment")))
        if chain is None or chain is not self.current or chain.closed:
            raise SealFault("seal_unenrolled", seq, "the seal names no open enrollment", None,
                            str(data.get("enrollment")))
        content = {k: v for k, v in data.items() if k != "tag"}
        if not _well_formed(data):
            raise SealFault("seal_malformed", seq, "the seal's data is malformed")
        if data["epoch"] != chain.epoch:
            raise SealFault("seal_epoch", seq, "the epoch is not the next one of its chain", str(chain.epoch),
                            str(data["epoch"]))
        covers = (data["first_seq"], data["last_seq"], data["last_hash"])
        if covers != (chain.first_seq, seq - 1, record.prev):
            raise SealFault("seal_gap", seq, "the seal does not cover exactly the records since the previous one",
                            f"{chain.first_seq}..{seq - 1} ending {record.prev}",
                            f"{data['first_seq']}..{data['last_seq']} ending {data['last_hash']}")
        if data["prev_seal"] != chain.prev_seal:
            raise SealFault("seal_chain", seq, "prev_seal is not the previous seal's tag", chain.prev_seal,
                            str(data["prev_seal"]))
        if chain.key is not None:
            if data["tag"] != tag(chain.key, content, self.kmac):
                # The tag that would verify is never shown: whoever reads a verdict could copy it in.
                raise SealFault("seal_bad_tag", seq, f"the tag does not verify under the key of epoch {chain.epoch}",
                                None, str(data["tag"]))
            chain.key = next_key(chain.key, self.kmac)
        chain.epoch += 1
        chain.first_seq, chain.prev_seal, chain.last_seal = seq + 1, str(data["tag"]), record
        chain.closed = data.get("final") is True
        self.report.seals += 1

    def finish(self, head: Record | None, first_unsealed: Record | None, now: datetime | None = None) -> SealReport:
        """The report, once every record was fed: ``head`` is the ledger's last record and
        ``first_unsealed`` the one after the newest chain's last seal (or its enrollment)."""
        report = self.report
        if self.mine is not None and self.mine not in self.chains:
            raise SealFault("seal_enrollment_missing", -1 if head is None else head.seq,
                            "no enrollment in the ledger matches the secret given", self.mine, None)
        chain = self.chains.get(self.mine) if self.mine is not None else self.current
        if chain is None:
            return report
        if self.mine is not None and chain.abandoned:
            raise SealFault("seal_abandoned", chain.abandoned_at or -1,
                            "the chain of the secret given was abandoned by a later enrollment, which needs no key: "
                            "nothing after it is covered by this secret", "a final seal", "abandoned")
        report.fingerprint, report.closed = chain.enrollment.data["fingerprint"], chain.closed
        report.interval = _interval(chain)
        if chain.last_seal is not None:
            last = chain.last_seal
            report.sealed_epoch, report.sealed_seq, report.sealed_ts = last.data["epoch"], last.seq, last.ts
        current = self.current
        if current is not None and not current.closed and head is not None and first_unsealed is not None:
            # The newest chain's tail, whichever secret was given: an older one must not hide it.
            count, interval = head.seq - first_unsealed.seq + 1, _interval(current)
            span = (_time(head.ts) - _time(first_unsealed.ts)).total_seconds()
            if interval is not None and span > 2 * interval:
                raise SealFault("seal_overdue", first_unsealed.seq,
                                f"{count} records after the last seal span {span:.0f} s, more than twice the "
                                f"sealing interval of {interval} s: seals were removed",
                                f"<= {2 * interval} s", f"{span:.0f} s")
            if chain is current:
                report.unsealed_records = count
                report.unsealed_from, report.unsealed_until = first_unsealed.ts, head.ts
        if now is not None and chain is self.current and not chain.closed:
            since = report.sealed_ts or chain.enrollment.ts
            report.stale_seconds = max(0.0, (now - _time(since)).total_seconds())
        return report


def _well_formed(data: dict[str, Any]) -> bool:
    ints = all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) and data[k] >= 0
               for k in ("epoch", "first_seq", "last_seq", "interval"))
    texts = (isinstance(data.get("tag"), str) and _TAG_RE.match(data["tag"])
             and isinstance(data.get("prev_seal"), str) and _TAG_RE.match(data["prev_seal"])
             and isinstance(data.get("last_hash"), str) and _HASH_RE.match(data["last_hash"]))
    allowed = {"enrollment", "epoch", "first_seq", "last_seq", "last_hash", "prev_seal", "interval", "final", "tag"}
    return ints and bool(texts) and set(data) <= allowed and data.get("final", True) is True


def _interval(chain: _Chain) -> int | None:
    """The interval a chain's last seal (or, before any, its enrollment) states."""
    value = (chain.last_seal or chain.enrollment).data.get("interval")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))

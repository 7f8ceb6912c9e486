"""The fleet's rules: what only a view of many appliances' verified ledgers shows. Pure.

Each appliance's ledger is verified on its own (`ledger.verify_and_tally`, with its collected
key, checkpoints and sealing secret); these rules then look across the verdicts and the facts
gathered in the same pass (`anticloud.fleet_facts`), and each finding carries its evidence:

* ``rollback`` -- a ledger ends before a checkpoint collected earlier for its appliance, or holds
  other records where that checkpoint pins them;
* ``unverified_checkpoint`` -- a checkpoint collected for an appliance that is another ledger's, or
  whose signature does not verify under the appliance key;
* ``shared_identity`` -- two directories hold ledgers with one ledger id, or one appliance key;
* ``stopped_sealing`` -- an enrolled appliance whose last seal is older than the stale limit, by
  the auditor's clock (``now``) or by the appliance's own last record;
* ``clock_skew`` -- an appliance's last record is dated after the auditor's clock by more than
  the tolerance, or its records' times ran backwards by more than the tolerance.

Exit codes, the worst winning in this order: 2 (unreadable), 1 (broken, or a rollback against a
collected checkpoint), 7 (content damaged), 3 (torn), 5 (unchecked), 8 (every ledger intact but
a fleet finding), 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from anticloud.fleet_facts import REFUSED, ROLLBACK, FleetTally, HeldCheck, seconds
from ledger import Verdict

EXIT_UNREADABLE = 2
EXIT_FLEET = 8
PRECEDENCE = (2, 1, 7, 3, 5, EXIT_FLEET, 6, 0)  # the first a fleet holds is its exit code
STALE_IDLE = 86_400  # seconds: an appliance whose engine stopped owes no seal; a day without one is news
SKEW_TOLERANCE = 300  # seconds


@dataclass(frozen=True, slots=True)
class Outcome:
    """One appliance: its verdict and facts, or why its directory could not be verified."""

    name: str
    verdict: Verdict | None = None
    facts: FleetTally | None = None
    held: list[HeldCheck] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.verdict is None:
            return EXIT_UNREADABLE
        # As `verify ledger --checkpoint` would say of each: a checkpoint collected earlier that the
        # ledger no longer reaches or matches, or that does not verify, breaks the appliance's verdict.
        refused = any(h.status in ROLLBACK | REFUSED for h in self.held)
        return 1 if refused else self.verdict.exit_code

    @property
    def status(self) -> str:
        if self.verdict is None:
            return "unreadable"
        if self.exit_code == 1:
            return "broken"
        return "content_damaged" if self.exit_code == 7 else self.verdict.status


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    appliances: tuple[str, ...]
    detail: str
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "appliances": list(self.appliances), "detail": self.detail,
                "evidence": self.evidence}


def findings(outcomes: list[Outcome], now: datetime, stale_after: float | None = None,
             tolerance: float = SKEW_TOLERANCE) -> list[Finding]:
    """Every fleet finding, appliance by appliance in the order given, then the shared identities."""
    found: list[Finding] = []
    for o in outcomes:
        found += rollbacks(o)
        found += stopped_sealing(o, now, stale_after)
        found += clock_skew(o, now, tolerance)
    return found + shared_identity(outcomes)


def rollbacks(o: Outcome) -> list[Finding]:
    """A collected checkpoint the ledger no longer reaches, or no longer matches; or one that is not
    the appliance's at all."""
    refused = [Finding("unverified_checkpoint", (o.name,),
                       f"the checkpoint collected in {h.source} is not this appliance's: {h.detail}",
                       {"checkpoint": h.to_json(), "ledger_id": o.verdict.ledger_id if o.verdict else None})
               for h in o.held if h.status in REFUSED]
    return refused + [Finding("rollback", (o.name,),
                    f"the ledger {'ends before' if h.status == 'behind' else 'differs from'} the checkpoint "
                    f"collected in {h.source} ({h.kind} of {h.size} records): {h.detail}",
                    {"checkpoint": h.to_json(), "records": o.verdict.records if o.verdict else None,
                     "head_seq": o.verdict.head_seq if o.verdict else None})
            for h in o.held if h.status in ROLLBACK]


def shared_identity(outcomes: list[Outcome]) -> list[Finding]:
    """Ledgers in different directories that claim one ledger id, or one appliance key."""
    found = []
    for what, label in (("ledger_id", "ledger id"), ("key_id", "appliance key")):
        claims: dict[str, list[str]] = defaultdict(list)
        for o in outcomes:
            value = getattr(o.verdict, what) if o.verdict is not None else None
            if value is not None:
                claims[value].append(o.name)
        for value, names in claims.items():
            if len(names) > 1:
                found.append(Finding("shared_identity", tuple(names),
                                     f"{', '.join(names)} claim one {label} {value}", {what: value}))
    return found


def stale_limit(o: Outcome, stale_after: float | None) -> float | None:
    """How old a last seal may be: ``stale_after`` if given; else twice the sealing interval while an
    engine ran at the end of the ledger (it seals at least once per interval then), else a day."""
    seals, facts = o.verdict.seals if o.verdict else None, o.facts
    if stale_after is not None:
        return stale_after
    if seals is None or facts is None:
        return None
    return 2 * seals.interval if facts.engine_running and seals.interval else STALE_IDLE


def stopped_sealing(o: Outcome, now: datetime, stale_after: float | None) -> list[Finding]:
    """An enrolled appliance whose newest open chain's last seal is older than the limit."""
    v, facts = o.verdict, o.facts
    if v is None or facts is None or v.status == "broken" or v.seals is None:
        return []
    seals = v.seals
    limit = stale_limit(o, stale_after)
    if seals.fingerprint is None or seals.closed or seals.sealed_ts is None or limit is None:
        return []
    age = (now - _time(seals.sealed_ts)).total_seconds()
    behind = seconds(v.last_ts, seals.sealed_ts) if v.last_ts else 0.0
    if age <= limit and behind <= limit:
        return []
    why = (f"its last seal (seq {seals.sealed_seq}, {seals.sealed_ts}) is {age:.0f} s old by your clock"
           if age > limit else f"its last record is {behind:.0f} s after its last seal (seq {seals.sealed_seq})")
    return [Finding("stopped_sealing", (o.name,), f"{why}, over the limit of {limit:.0f} s",
                    {"sealed_seq": seals.sealed_seq, "sealed_ts": seals.sealed_ts, "age_s": round(age, 3),
                     "unsealed_span_s": round(behind, 3), "limit_s": limit, "interval": seals.interval,
                     "engine_running": facts.engine_running, "now": _ts(now)})]


def clock_skew(o: Outcome, now: datetime, tolerance: float) -> list[Finding]:
    """A clock ahead of the auditor's, or one that ran backwards, by more than ``tolerance``."""
    v, facts = o.verdict, o.facts
    if v is None or facts is None or facts.last_ts is None:
        return []
    found = []
    context = {"clock": facts.clock, "clock_jumps_recorded": facts.clock_jumps}
    ahead = seconds(facts.last_ts, _ts(now))
    if ahead > tolerance:
        found.append(Finding("clock_skew", (o.name,),
                             f"its last record is dated {facts.last_ts}, {ahead:.0f} s after your clock",
                             {"rule": "ahead_of_auditor", "last_ts": facts.last_ts, "now": _ts(now),
                              "ahead_s": round(ahead, 3), "tolerance_s": tolerance} | context))
    if facts.worst_back > tolerance:
        found.append(Finding("clock_skew", (o.name,),
                             f"its records' times ran backwards {facts.backwards} time(s), at most by "
                             f"{facts.worst_back:.0f} s (at seq {facts.worst_back_seq}); "
                             f"{facts.clock_jumps} clock.jump record(s)",
                             {"rule": "ran_backwards", "times": facts.backwards,
                              "worst_s": round(facts.worst_back, 3), "worst_seq": facts.worst_back_seq,
                              "tolerance_s": tolerance} | context))
    return found


def exit_code(outcomes: list[Outcome], found: list[Finding]) -> int:
    """The worst code in PRECEDENCE order; 8 when every ledger is intact but a fleet check failed."""
    codes = {o.exit_code for o in outcomes} | ({EXIT_FLEET} if found else set())
    return next((code for code in PRECEDENCE if code in codes), 0)


def _time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _ts(moment: datetime) -> str:
    """``moment`` as a record timestamp (RFC 3339, UTC, microseconds)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

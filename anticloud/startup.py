"""Whether an engine may start, and what the engine before it left open.

Invariants:

* The engine starts only if the configuration is one the ledger accepted (in every air-gap
  mode) and no network is reachable (or ``airgap.mode`` is "warn", which every record then
  says). A refusal is recorded as ``engine.refused`` with its evidence, before it is raised.
  An upgrade of anticloud that adds settings at their defaults is not drift: it is recorded
  as ``config.upgrade``, naming them, and the start goes on; any other difference refuses.
* A ``begin`` left without an ``end`` by a crash is closed at the next start by
  ``inference.interrupted``, before that start records ``engine.start``. Only the records
  since the newest ``engine.start`` or ``engine.stop`` are read, so starting does not grow
  with the ledger (`left_open` says why that suffices).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from anticloud import airgap
from anticloud.config import Config, accepted_document, last_accepted, new_defaults, record_accepted
from anticloud.errors import EngineRefused
from anticloud.home import Home
from ledger import LedgerWriter, Record, records_backward

BOUNDARIES = ("engine.start", "engine.stop")


def check_drift(home: Home, writer: LedgerWriter, config: Config) -> None:
    """Refuse to start, in every air-gap mode, on a configuration no record accepted (recorded)."""
    accepted = last_accepted(home.ledger)
    if accepted is None and not home.config.exists():
        record_accepted(home, writer, "config.init")  # a home made before configuration was recorded
        return
    if accepted is not None and accepted.get("digest") == config.digest():
        return
    if accepted is not None and _upgraded(home, writer, str(accepted.get("digest")), config):
        return
    writer.append("config.drift", {"accepted": None if accepted is None else accepted.get("digest"),
                                   "found": config.digest(), "config": config.doc})
    writer.append("engine.refused", {"reason": "configuration changed outside anticloud", "found": config.digest()})
    raise EngineRefused("config.toml was changed outside anticloud (recorded as config.drift); review it with "
                        "`anticloud config show`, then `anticloud config accept`")


def _upgraded(home: Home, writer: LedgerWriter, digest: str, config: Config) -> bool:
    """An upgrade of anticloud that brings new settings at their defaults is not drift: record it
    as ``config.upgrade`` (naming every setting added) and go on. Anything else still is drift."""
    document = accepted_document(home.ledger, digest)
    added = None if document is None else new_defaults(document, config.doc)
    if not added:
        return False
    writer.append("config.upgrade", {"added": added, "accepted": digest, "digest": config.digest(),
                                     "config": config.doc})
    return True


def check_network(writer: LedgerWriter, verdict: airgap.AirGap, mode: str, namespace: bool,
                  kind: str = "engine.refused") -> None:
    """Refuse to start where a network is reachable and ``airgap.mode`` enforces (recorded as
    ``kind``: an engine's or a worker's refusal)."""
    if verdict.isolated or mode != "enforce":
        return
    writer.append(kind, {"reason": "network reachable", "airgap": verdict.to_json(), "namespace": namespace})
    found = "".join(f"\n  {reason}" for reason in verdict.reasons())
    raise EngineRefused(f"refusing to start: a network is reachable{found}\n{airgap.FIX_HINT}")


def left_open(newest_first: Iterable[Record]) -> list[tuple[str, int]]:
    """The inferences begun and never ended, as (id, begin seq) oldest first, from the
    ``inference.*`` records and the boundaries, read newest first down to the first boundary.

    Reading down to the newest ``engine.start`` or ``engine.stop`` suffices, by induction over
    the engines of one home, which run one at a time: each start closes the begins open before
    it, before it records ``engine.start`` (so a crash during that recovery leaves no boundary
    after the begins it has not closed yet), and a clean ``engine.stop`` is recorded after its
    engine's generations ended. A crash leaves neither after its begins, so the scan reaches
    back to its ``engine.start``.
    """
    closed: set[str] = set()
    found: list[tuple[str, int]] = []
    for record in newest_first:
        if record.kind in BOUNDARIES:
            break
        ident = record.data.get("id")
        if not isinstance(ident, str):
            continue
        if record.kind != "inference.begin":
            closed.add(ident)
        elif ident not in closed:
            found.append((ident, record.seq))
    return found[::-1]


def close_interrupted(ledger: Path, writer: LedgerWriter) -> None:
    """Close by ``inference.interrupted`` every begin that the last engine left without an end."""
    scan = (located.record for located in records_backward(ledger, ("inference.", *BOUNDARIES)))
    for ident, seq in left_open(scan):
        writer.append("inference.interrupted", {"id": ident, "begin_seq": seq,
                                                "reason": "the engine stopped before it ended"})

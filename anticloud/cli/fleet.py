"""`anticloud fleet verify DIR`: many appliances' collected ledgers, verified in parallel and as one.

The collection layout (docs/fleet.md): one subdirectory of DIR per appliance, holding
``ledger.jsonl`` (required), ``appliance.pub``, ``seal.key``, ``content/``, and the checkpoints
collected earlier: ``*.json`` documents and ``*.note`` tlog checkpoints (a witness's cosigned one
too), beside the ledger or in ``checkpoints/``. Everything else is ignored.

This module does the I/O: it reads the layout, verifies each appliance in a worker process
(`ledger.verify_and_tally`, once per ledger), and prints; the rules are `anticloud.fleet`'s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from anticloud.cli import CliInputError
from anticloud.cli.verify import emit, read_held
from anticloud.durations import seconds as duration
from anticloud.errors import AnticloudError
from anticloud.fleet import (
    SKEW_TOLERANCE,
    Finding,
    Outcome,
    exit_code,
    findings,
    stale_limit,
)
from anticloud.fleet_facts import Held, check_held, primaries, seconds, want_for
from anticloud.sealing import read_secret
from ledger import LedgerError, load_public_key, verify_and_tally

LEDGER, PUBKEY, SEAL_KEY, CONTENT, CHECKPOINTS = "ledger.jsonl", "appliance.pub", "seal.key", "content", "checkpoints"
SPLIT_BYTES = 32 << 20  # as ledger.verify: below this, a ledger is replayed by one process
WORDS = {0: "INTACT", 1: "BROKEN", 2: "UNREADABLE", 3: "TORN", 5: "UNCHECKED", 7: "CONTENT DAMAGED",
         8: "FLEET FINDINGS"}


@dataclass(frozen=True, slots=True)
class Job:
    """One appliance to verify, as a worker receives it."""

    name: str
    root: Path
    now: datetime
    jobs: int  # worker processes the ledger's own replay may use


def verify_appliance(job: Job) -> Outcome:
    """Verify one collected appliance; any unreadable or malformed file becomes its outcome, named."""
    try:
        return _verify(job)
    except click.ClickException as exc:
        return Outcome(job.name, error=exc.format_message())
    except (LedgerError, AnticloudError) as exc:
        return Outcome(job.name, error=str(exc))
    except OSError as exc:
        return Outcome(job.name, error=f"{exc.filename or job.root}: {exc.strerror or exc}")


def _verify(job: Job) -> Outcome:
    root = job.root
    ledger = root / LEDGER
    if not ledger.is_file():
        return Outcome(job.name, error=f"{ledger}: missing (every appliance directory holds its ledger.jsonl)")
    public_key = load_public_key(root / PUBKEY) if (root / PUBKEY).exists() else None
    secret = read_secret(root / SEAL_KEY) if (root / SEAL_KEY).exists() else None
    content = root / CONTENT if (root / CONTENT).exists() else None
    held = [_held(path, root) for path in checkpoint_files(root)]
    document, note = primaries(held)
    jobs = job.jobs if ledger.stat().st_size >= SPLIT_BYTES else 1
    verdict, facts = verify_and_tally(
        ledger, want_for(held), checkpoint=document.document if document else None, public_key=public_key,
        jobs=jobs, seal_secret=secret, now=job.now, tree_head=note.note if note else None, content_dir=content)
    return Outcome(job.name, verdict, facts, check_held(held, verdict, facts, public_key))


def checkpoint_files(root: Path) -> list[Path]:
    """The checkpoints collected for one appliance: ``*.json`` and ``*.note``, beside the ledger or
    in ``checkpoints/``."""
    places = [root] + ([root / CHECKPOINTS] if (root / CHECKPOINTS).is_dir() else [])
    return sorted(p for place in places for p in place.iterdir()
                  if p.suffix in (".json", ".note") and p.is_file())


def _held(path: Path, root: Path) -> Held:
    document, note = read_held(path)
    return Held(str(path.relative_to(root)), document, note)


def appliance_dirs(directory: Path) -> list[Path]:
    """DIR's subdirectories, one per appliance, by name; hidden ones and plain files are not appliances."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise CliInputError(f"cannot read fleet directory {directory}: {exc.strerror}") from None
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not dirs:
        raise CliInputError(f"{directory}: no appliance directories (expected DIR/<name>/{LEDGER})")
    return dirs


def verify_all(jobs: list[Job], workers: int) -> list[Outcome]:
    """Each appliance verified once, in ``workers`` processes (in this one when 1), in the order given."""
    if workers <= 1 or len(jobs) <= 1:
        return [verify_appliance(job) for job in jobs]
    # fork is quick and safe in a single-threaded command line; a caller with threads gets a forkserver.
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(verify_appliance, jobs))


def plan(count: int, jobs: int | None) -> tuple[int, int]:
    """(appliances verified at once, processes each ledger's replay may use): never more than the cores."""
    cores = os.cpu_count() or 1
    workers = max(1, min(jobs or cores, count))
    return workers, max(1, (jobs or cores) // workers)


@click.group("fleet")
def fleet_group() -> None:
    """Audit many appliances' collected ledgers as one (docs/fleet.md)."""


@fleet_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--now", "now_text", metavar="TIME",
              help="Your clock, as RFC 3339 (2026-01-15T10:00:00Z): best, the time you collected the ledgers. "
                   "Default: this machine's clock.")
@click.option("--stale-after", "stale_text", metavar="DURATION",
              help="How old a last seal may be (300, 5m, 1d). Default: twice an appliance's sealing interval "
                   "if its engine ran at the end of its ledger, else a day.")
@click.option("--skew-tolerance", "skew_text", metavar="DURATION", default=str(SKEW_TOLERANCE), show_default=True,
              help="How far a clock may be ahead of yours, or run backwards, before it is a finding.")
@click.option("--jobs", type=click.IntRange(min=1), help="Worker processes (default: one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print every verdict and finding as one JSON object.")
def fleet_verify(directory: Path, now_text: str | None, stale_text: str | None, skew_text: str, jobs: int | None,
                 as_json: bool) -> None:
    """Verify every appliance's ledger under DIRECTORY (one subdirectory each) in parallel, then look
    across them: rollback against a collected checkpoint, two ledgers claiming one identity, an
    appliance that stopped sealing, a clock ahead of yours or running backwards.

    \b
    Exit 0 all intact, 1 a ledger broken (or rolled back), 2 unreadable input, 3 a torn tail,
    5 signatures not checked, 7 sealed content damaged, 8 every ledger intact but a fleet finding;
    the first of 2, 1, 7, 3, 5, 8 that applies wins.
    """
    now = _moment(now_text) if now_text else datetime.now(UTC)
    stale_after, tolerance = _duration(stale_text, "--stale-after"), _duration(skew_text, "--skew-tolerance")
    dirs = appliance_dirs(directory)
    workers, inner = plan(len(dirs), jobs)
    outcomes = verify_all([Job(d.name, d, now, inner) for d in dirs], workers)
    found = findings(outcomes, now, stale_after, tolerance if tolerance is not None else SKEW_TOLERANCE)
    code = exit_code(outcomes, found)
    if as_json:
        emit(json.dumps(to_json(outcomes, found, code, now, stale_after), indent=2, sort_keys=True))
    else:
        emit("\n".join(render(outcomes, found, code, now, stale_after)))
    raise SystemExit(code)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 time such as 2026-01-15T10:00:00Z",
                                 param_hint="--now") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{text!r} names no time zone (add Z for UTC)", param_hint="--now")
    return moment.astimezone(UTC)


def _duration(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        value = duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    if value < 0:
        raise click.BadParameter(f"{text!r} is negative", param_hint=option)
    return value


def render(outcomes: list[Outcome], found: list[Finding], code: int, now: datetime,
           stale_after: float | None = None) -> list[str]:
    """One line per appliance, then each finding, then the fleet's verdict."""
    width = max(len(o.name) for o in outcomes)
    lines = [f"{o.name:<{width}}  {line(o, now, stale_after)}" for o in outcomes]
    lines += [f"FINDING {f.kind}: {', '.join(f.appliances)}: {f.detail}" for f in found]
    bad = [o.name for o in outcomes if o.exit_code != 0]
    summary = f"{len(outcomes) - len(bad)} of {len(outcomes)} appliance(s) intact"
    if bad:
        summary += f"; not intact: {', '.join(bad)}"
    summary += f"; {len(found)} fleet finding(s)" if found else "; no fleet finding"
    return [*lines, f"FLEET {WORDS.get(code, str(code))}: {summary}"]


def line(o: Outcome, now: datetime, stale_after: float | None = None) -> str:
    """An appliance's verdict, head, records, last seal and last checkpoints, on one line."""
    v, facts = o.verdict, o.facts
    if v is None or facts is None:
        return f"{'UNREADABLE':<15} {o.error}"
    word = WORDS.get(o.exit_code, o.status.upper())
    parts = [f"{word:<15}", f"head {v.head_seq if v.head_seq is not None else '-'}", f"records {v.records}"]
    parts.append(_seal_text(o, now, stale_after))
    in_ledger = f"seq {facts.checkpoint_seq}" if facts.checkpoint_seq is not None else "none"
    newest = max(o.held, key=lambda h: (h.size, h.source), default=None)
    collected = f"{newest.kind} of {newest.size} records {newest.status}" if newest else "none"
    parts.append(f"checkpoint in ledger {in_ledger}, collected {collected}")
    if v.fault is not None:
        parts.append(f"fault {v.fault.reason} at seq {v.fault.seq}")
    return "  ".join(parts)


def _seal_text(o: Outcome, now: datetime, stale_after: float | None) -> str:
    assert o.verdict is not None
    seals = o.verdict.seals
    if seals is None:
        return "last seal none (not enrolled)"
    if seals.sealed_ts is None:
        return "last seal none yet"
    age = seconds(now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), seals.sealed_ts)
    limit = stale_limit(o, stale_after)
    stale = ", STALE" if limit is not None and age > limit and not seals.closed else ""
    return f"last seal {seals.sealed_ts} ({age:.0f} s before now{stale})"


def to_json(outcomes: list[Outcome], found: list[Finding], code: int, now: datetime,
            stale_after: float | None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return {
        "fleet": {"verdict": WORDS.get(code, str(code)).lower().replace(" ", "_"), "exit_code": code,
                  "appliances": len(outcomes), "statuses": counts, "now": now.isoformat(),
                  "findings": len(found)},
        "appliances": [{"name": o.name, "status": o.status, "exit_code": o.exit_code, "error": o.error,
                        "verdict": o.verdict.to_json() if o.verdict else None,
                        "facts": o.facts.to_json() if o.facts else None,
                        "checkpoints": [h.to_json() for h in o.held],
                        "stale_limit_s": stale_limit(o, stale_after)} for o in outcomes],
        "findings": [f.to_json() for f in found],
    }

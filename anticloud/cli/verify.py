"""`anticloud verify ledger`: the auditor's verdict on a ledger file."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from anticloud.cli import pass_home
from anticloud.home import Home
from anticloud.sealing import read_secret
from ledger import SealReport, Verdict, load_checkpoint, load_public_key, verify_file


@click.group("verify")
def verify_group() -> None:
    """Verify what the appliance recorded."""


@verify_group.command("ledger")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint you hold: detects truncation, rollback and rewrites up to it.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path),
              help="The appliance.pub you hold: the genesis and every signature must match it.")
@click.option("--seal-key", "seal_key", type=click.Path(dir_okay=False, path_type=Path),
              help="The sealing secret you took away at enrollment: every seal's tag must verify.")
@click.option("--now", "use_now", is_flag=True,
              help="Compare the last seal with this machine's clock, and report how stale it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@pass_home
def verify_ledger(home: Home, path: Path | None, checkpoint: Path | None, pubkey: Path | None,
                  seal_key: Path | None, use_now: bool, as_json: bool) -> None:
    """Replay the hash chain of PATH (default: the home's ledger) and name the first bad record.

    \b
    Exit 0 intact, 1 broken, 2 unreadable or bad usage, 3 torn tail not yet recovered,
    5 signatures not checked (tools/verify_ledger.py without the cryptography package;
    never here, where signatures are always checked). A closed stdout changes no exit code.
    Seals are checked in structure always, and their tags with --seal-key.
    """
    verdict = verify_file(
        path or home.ledger,
        checkpoint=load_checkpoint(checkpoint) if checkpoint else None,
        public_key=load_public_key(pubkey) if pubkey else None,
        seal_secret=read_secret(seal_key) if seal_key else None,
        now=datetime.now(UTC) if use_now else None,
    )
    emit(json.dumps(verdict.to_json(), indent=2, sort_keys=True) if as_json else "\n".join(render(verdict)))
    raise SystemExit(verdict.exit_code)


def emit(text: str) -> None:
    """Print the verdict; a reader that went away (``| head``) is not an error and changes no verdict."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # so the interpreter's last flush does not fail again
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def render(v: Verdict) -> list[str]:
    """The verdict for people: the status first, then the evidence."""
    lines: list[str] = []
    if v.status == "broken":
        assert v.fault is not None
        f = v.fault
        where = f"seq {f.seq}" + (f" (line {f.line}" + (f", byte {f.offset}" if f.offset is not None else "") + ")"
                                  if f.line is not None else "")
        lines += [f"BROKEN: {v.path}", f"  first bad record  {where}", f"  reason            {f.reason}: {f.detail}"]
        if f.expected is not None:
            lines.append(f"  expected          {f.expected}")
        if f.actual is not None:
            lines.append(f"  actual            {f.actual}")
        lines.append(f"  verified before   {v.records} record(s)")
        return lines
    if v.status == "unchecked":
        unchecked = v.checkpoints_in_ledger + (v.checkpoint is not None)
        lines.append(f"SIGNATURES NOT CHECKED: {v.path}: the chain is intact, but {unchecked} signature(s)"
                     " were not verified (no cryptography package)")
    elif v.status == "torn":
        assert v.torn is not None
        lines += [f"TORN TAIL: {v.path}",
                  f"  {v.torn.length} byte(s) at byte {v.torn.offset} end without a newline (a crash mid-append).",
                  "  Every complete record verified; the appliance quarantines and records the torn bytes"
                  " the next time it opens the ledger."]
    else:
        lines.append(f"INTACT: {v.path}")
    lines += [
        f"  records           {v.records}  ({v.first_ts} .. {v.last_ts})",
        f"  head              seq {v.head_seq}  {v.head_hash}",
        f"  ledger id         {v.ledger_id}",
        f"  appliance key     {v.key_id}",
        f"  checkpoints       {v.checkpoints_in_ledger} in the ledger"
        + (", signatures verified" if v.signatures_checked else ", signatures NOT checked"),
    ]
    if v.checkpoint is not None:
        lines.append(f"  your checkpoint   seq {v.checkpoint['seq']} matched"
                     + ("" if v.signatures_checked else ", its signature NOT checked"))
    return lines + render_seals(v.seals)


def render_seals(s: SealReport | None) -> list[str]:
    """What the seals prove, and what they do not, in the words journald uses for its own."""
    if s is None:
        return ["  seals             none: nothing is sealed (no auditor has enrolled)"]
    checked = "tags verified" if s.checked else "tags NOT checked (give --seal-key)"
    lines = [f"  seals             {s.seals} in {s.enrollments} enrollment(s), {checked}"]
    if s.sealed_seq is None:
        lines.append("  sealed through    nothing yet")
    else:
        lines.append(f"  sealed through    epoch {s.sealed_epoch} (seq <= {s.sealed_seq}, {s.sealed_ts})"
                     + (", then closed by a re-enrollment" if s.closed else ""))
    if s.unsealed_records:
        lines.append(f"  NOT sealed        {s.unsealed_records} record(s) after it ({s.unsealed_from} .. "
                     f"{s.unsealed_until})")
    if s.stale_seconds is not None and s.interval is not None:
        stale = s.stale_seconds > 2 * s.interval
        lines.append(f"  last seal         {s.stale_seconds:.0f} s ago by your clock (interval {s.interval} s)"
                     + (": STALE, the appliance stopped sealing or its tail was cut" if stale else ""))
    return lines + [f"  note              {note}" for note in s.notes]

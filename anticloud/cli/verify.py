"""`anticloud verify ledger`: the auditor's verdict on a ledger file."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from anticloud.cli import CliInputError, pass_home, read_vkey
from anticloud.home import Home
from anticloud.identity import appliance_vkey
from anticloud.sealing import read_secret
from ledger import (
    COSIGNED_KIND,
    ContentReport,
    NoteError,
    SealReport,
    SignedCheckpoint,
    Verdict,
    WitnessReport,
    check_cosignatures,
    check_extension,
    check_receipt,
    load_checkpoint,
    load_public_key,
    parse_vkey,
    records_forward,
    signed_heads,
    tree_head_of,
    verify_file,
)

EXIT_UNWITNESSED = 6


@click.group("verify")
def verify_group() -> None:
    """Verify what the appliance recorded."""


@verify_group.command("ledger")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint you hold (the JSON document, or a tlog checkpoint note such as a witness's "
                   "cosigned one): detects truncation, rollback and rewrites up to it.")
@click.option("--witness", "witnesses", multiple=True, metavar="VKEY",
              help="A witness you trust, by its verifier key (or a file holding it); repeat for each.")
@click.option("--quorum", type=click.IntRange(min=1), help="How many of the --witness keys must have cosigned "
                                                          "(default: all of them).")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path),
              help="The appliance.pub you hold: the genesis and every signature must match it.")
@click.option("--seal-key", "seal_key", type=click.Path(dir_okay=False, path_type=Path),
              help="The sealing secret you took away at enrollment: every seal's tag must verify.")
@click.option("--now", "use_now", is_flag=True,
              help="Compare the last seal with this machine's clock, and report how stale it is.")
@click.option("--content", "content_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The content store (HOME/content): every sealed reference that is not erased must have its "
                   "file there, of the SHA3-256 its record states. Default: the home's own, when verifying "
                   "the home's ledger and it has one.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@pass_home
def verify_ledger(home: Home, path: Path | None, checkpoint: Path | None, witnesses: tuple[str, ...],
                  quorum: int | None, pubkey: Path | None, seal_key: Path | None, use_now: bool,
                  content_dir: Path | None, as_json: bool) -> None:
    """Replay the hash chain of PATH (default: the home's ledger) and name the first bad record.

    \b
    Exit 0 intact, 1 broken, 2 unreadable or bad usage, 3 torn tail not yet recovered,
    5 signatures not checked (tools/verify_ledger.py without the cryptography package;
    never here, where signatures are always checked), 6 intact but fewer than --quorum of the
    --witness keys cosigned any of its signed tree heads, 7 intact but sealed content that is not
    erased is malformed, or missing or altered in the content store (7 outranks 6). A closed
    stdout changes no exit code. Seals are checked in structure always, and their tags with
    --seal-key. Sealed content is counted always, and checked against the content store given
    with --content, or by default the home's own (HOME/content) when PATH is the home's ledger.
    """
    ledger_path = path or home.ledger
    if content_dir is None and _same_file(ledger_path, home.ledger) and home.content.is_dir():
        content_dir = home.content
    document, note = read_held(checkpoint) if checkpoint else (None, None)
    keys = [read_vkey(w, witness=True) for w in witnesses]
    if quorum is not None and quorum > len(keys):
        raise click.UsageError(f"--quorum {quorum} needs at least {quorum} --witness keys")
    verdict = verify_file(
        ledger_path,
        checkpoint=document,
        public_key=load_public_key(pubkey) if pubkey else None,
        seal_secret=read_secret(seal_key) if seal_key else None,
        now=datetime.now(UTC) if use_now else None,
        tree_head=note,
        content_dir=content_dir,
    )
    report = None
    if keys and verdict.status != "broken":
        cosigned = (located.record.data for located in records_forward(ledger_path, [COSIGNED_KIND])
                    if located.record.seq < verdict.records)
        heads = [signed.head for signed in signed_heads(ledger_path) if signed.record.record.seq < verdict.records]
        report = check_cosignatures(heads, cosigned, keys, quorum or len(keys), note)
    doc = verdict.to_json() | ({"witnesses": report.to_json()} if report is not None else {})
    emit(json.dumps(doc, indent=2, sort_keys=True) if as_json
         else "\n".join(render(verdict) + render_witnesses(report)))
    unwitnessed = report is not None and not report.met and verdict.exit_code == 0
    raise SystemExit(EXIT_UNWITNESSED if unwitnessed else verdict.exit_code)


@verify_group.command("proof")
@click.argument("proof", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--vkey", metavar="VKEY", help="The appliance's verifier key (or a file holding it); default: this "
                                              "appliance's own (`anticloud keys show --vkey`).")
@click.option("--from", "old", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="For a consistency proof: the older tlog checkpoint you hold.")
@click.option("--witness", "witnesses", multiple=True, metavar="VKEY", help="A witness you trust; repeat for each.")
@click.option("--quorum", type=click.IntRange(min=1), help="How many of the --witness keys must have cosigned "
                                                          "(default: all of them).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@pass_home
def verify_proof(home: Home, proof: Path, vkey: str | None, old: Path | None, witnesses: tuple[str, ...],
                 quorum: int | None, as_json: bool) -> None:
    """Check a receipt for one record (`anticloud ledger prove SEQ`), or with --from a consistency
    proof (`anticloud ledger prove --from`), without the ledger. Exit 0 valid, 1 not, 2 unreadable."""
    log = read_vkey(vkey) if vkey else parse_vkey(appliance_vkey(home))
    keys = [read_vkey(w, witness=True) for w in witnesses]
    need = quorum or len(keys)
    if need > len(keys):
        raise click.UsageError(f"--quorum {need} needs at least {need} --witness keys")
    raw = proof.read_bytes()
    verdict = (check_extension(raw, old.read_bytes().decode("utf-8", "replace"), log, keys, need) if old is not None
               else check_receipt(raw, log, keys, need))
    if as_json:
        emit(json.dumps(verdict.to_json(), indent=2, sort_keys=True))
    elif verdict.ok:
        record = verdict.record
        what = (f"record {record['seq']} ({record['kind']}, {record['ts']}) is in the tree of size {verdict.size} "
                f"signed by {log.name}" if record else
                f"the tree of size {verdict.size} signed by {log.name} extends the one of size {verdict.old_size} "
                "you hold")
        emit(f"VALID: {what}" + (f", cosigned by {', '.join(verdict.witnesses)}" if verdict.witnesses else ""))
    else:
        emit(f"NOT VALID: {verdict.reason}: {verdict.detail}")
    raise SystemExit(0 if verdict.ok else 1)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def read_held(path: Path) -> tuple[SignedCheckpoint | None, str | None]:
    """A checkpoint the auditor holds: the JSON document (with its tree head, if it has one), or a note."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliInputError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if raw.lstrip().startswith(b"{"):
        document = load_checkpoint(path)
        return document, None
    try:
        text = raw.decode()
        tree_head_of(text)
    except (UnicodeDecodeError, NoteError) as exc:
        raise CliInputError(f"{path}: neither a checkpoint document nor a tlog checkpoint: {exc}") from None
    return None, text


def render_witnesses(report: WitnessReport | None) -> list[str]:
    if report is None:
        return []
    lines = [f"  witnesses         {report.witnessed_size and 'records 0..' + str(report.witnessed_size - 1)}"
             f" cosigned by at least {report.quorum} of {len(report.cosigned)}"
             if report.met else f"  witnesses         NOT WITNESSED: fewer than {report.quorum} of "
                                f"{len(report.cosigned)} cosigned any signed tree head"]
    for vkey, size in report.cosigned.items():
        lines.append(f"    {vkey.split('+')[0]:<28} {'cosigned up to size ' + str(size) if size else 'no cosignature'}")
    if report.unknown:
        lines.append(f"    ({report.unknown} cosignature(s) by witnesses not given)")
    lines += [f"    INVALID: {line}" for line in report.invalid]
    return lines


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
    if v.tree_head is not None:
        lines.append(f"  your tree head    size {v.tree_head['size']} matched the Merkle tree of the ledger")
    if v.tree is not None:
        lines.append(f"  Merkle tree       size {v.tree['size']}  root {v.tree['root']}")
    return lines + ([] if v.content is None else render_content(v.content)) + render_seals(v.seals)


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


def render_content(report: ContentReport) -> list[str]:
    """The sealed content: the counts on one line, then the first findings (tools/verify_ledger.py's words)."""
    c = report.to_json()
    line = f"  content           {c['sealed']} sealed, {c['erased']} erased"
    if c["store"] is None:
        line += ", files not checked (give --content DIR)"
    else:
        line += f", {c['checked']} checked: {c['missing_count']} missing, {c['mismatched_count']} mismatched"
    if c["malformed_count"]:
        line += f", {c['malformed_count']} MALFORMED"
    lines = [line]
    for what in ("missing", "mismatched"):
        for f in c[what]:
            lines.append(f"    {what.upper():<14} seq {f['seq']} {f['field']} {f['id']}"
                         + (f": expected {f['expected']}, actual {f['actual']}" if f["actual"] is not None else ""))
    lines += [f"    MALFORMED      seq {m['seq']}" + (f" {m['field']}" if m["field"] else "") + f": {m['reason']}"
              for m in c["malformed"]]
    if report.faulty:
        lines.append("  CONTENT FAULT     sealed content that is not erased is missing, altered or malformed")
    return lines

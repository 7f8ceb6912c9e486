"""`anticloud ledger show|tail|checkpoint`: read the ledger as a person, sign its head.

Records carry text that others chose (request paths, bundle and model names, keys of a
model's metadata), so `show` and `tail` never hand a terminal a character it could act on:
C0 and C1 controls (ESC begins every escape sequence, and C1's CSI is one on its own), DEL,
and Unicode's invisible and bidirectional formatting are printed escaped, in keys and
values alike. ``--json`` escapes them as JSON does, so its records are still exact.

Both read with the ledger's own reader, which checks each record's hash: a bad record ends
the listing with a one-line error naming its offset (`anticloud verify ledger` says why).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import click

from anticloud.cli import ledger_proofs, open_ledger, pass_home
from anticloud.fsutil import atomic_write
from anticloud.home import Home
from anticloud.identity import load_identity
from ledger import Record, append_checkpoint, records_backward, records_forward


@click.group("ledger")
def ledger_group() -> None:
    """Read the ledger and sign checkpoints of it."""


ledger_proofs.register(ledger_group)


@ledger_group.command("show")
@click.option("--from", "start", type=click.IntRange(min=0), default=0, help="First seq to show.")
@click.option("--kind", "kind", help="Only records whose kind starts with this prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw records (JSON Lines).")
@pass_home
def show(home: Home, start: int, kind: str | None, as_json: bool) -> None:
    """Print records in order. This reads; `anticloud verify ledger` checks."""
    records = (located.record for located in records_forward(home.ledger))
    _print((r for r in records if r.seq >= start and r.kind.startswith(kind or "")), as_json)


@ledger_group.command("tail")
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help="How many records.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw records (JSON Lines).")
@pass_home
def tail(home: Home, count: int, as_json: bool) -> None:
    """Print the last records."""
    newest = [located.record for located in islice(records_backward(home.ledger), count)]
    _print(reversed(newest), as_json)


@ledger_group.command("checkpoint")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the signed checkpoint to this file, for an auditor to keep.")
@click.option("--note", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the signed tree head as a C2SP tlog-checkpoint (a signed note) to this file.")
@pass_home
def checkpoint(home: Home, out: Path | None, note: Path | None) -> None:
    """Sign the ledger's head, and the Merkle tree of its records, with the appliance key, and
    record the checkpoint in the ledger."""
    key = load_identity(home)
    with open_ledger(home) as writer:
        signed = append_checkpoint(writer, key)
    cp = signed.checkpoint
    for path, body in ((out, signed.to_bytes()), (note, (signed.tlog or "").encode())):
        if path is not None:
            atomic_write(path, body)
            click.echo(f"checkpoint of seq {cp.seq} ({cp.hash}) written to {path}")
    if out is None and note is None:
        click.echo(signed.to_bytes().decode(), nl=False)


def _print(records: Iterable[Record], as_json: bool) -> None:
    for record in records:
        if as_json:
            click.echo(_printable(json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True,
                                             separators=(",", ":")), _json_escape))
            continue
        fields = " ".join(f"{k}={_short(v)}" for k, v in record.data.items())
        line = f"{record.seq:>6}  {record.ts}  {record.kind:<22} {fields}".rstrip()
        click.echo(_printable(line, _python_escape))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 24 else text[:21] + "..."


def _printable(text: str, escape: Callable[[str], str]) -> str:
    """``text`` with every character that is not printable (as `str.isprintable` judges) escaped."""
    return text if text.isprintable() else "".join(c if c.isprintable() else escape(c) for c in text)


def _python_escape(char: str) -> str:
    return repr(char)[1:-1]  # \x1b, \x9b, \u202e: as Python would write it


def _json_escape(char: str) -> str:
    """JSON's own escape, so a ``--json`` line still parses to the very record (outside strings,
    json.dumps writes only printable ASCII)."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"

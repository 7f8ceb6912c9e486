"""`anticloud witness`: the auditor's side, cosigning an appliance's checkpoints by sneakernet.

The witness lives in its own directory (``--dir``, default ``$ANTICLOUD_WITNESS`` or
``~/.anticloud-witness``), on a machine that never sees the appliance's network: requests come
in as files made by `anticloud ledger witness-request`, cosignatures go back as files for
`anticloud ledger add-cosignature`. See docs/witness.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from anticloud.fsutil import atomic_write
from anticloud.witness import Witness

_DIR = click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), envvar="ANTICLOUD_WITNESS",
                    default=lambda: str(Path.home() / ".anticloud-witness"), show_default="~/.anticloud-witness",
                    help="The witness's directory (or $ANTICLOUD_WITNESS).")


@click.group("witness")
def witness_group() -> None:
    """Be a witness: cosign an appliance's checkpoints only if they extend what you cosigned."""


@witness_group.command("init")
@_DIR
@click.option("--name", required=True, help="The witness's name, as its cosignatures carry it (e.g. audit.example/w1).")
def init(root: Path, name: str) -> None:
    """Make this witness's Ed25519 key (0600) and its own ledger."""
    witness = Witness.init(root, name)
    click.echo(f"witness {name} in {root}")
    click.echo(f"  verifier key  {Witness.vkey(witness.key(), name)}")
    click.echo("  give it to the appliance's operator and to whoever verifies: "
               "`anticloud verify ledger --witness VKEY`")


@witness_group.command("add-log")
@_DIR
@click.argument("vkey")
def add_log(root: Path, vkey: str) -> None:
    """Follow an appliance, by its verifier key (`anticloud keys show --vkey` on the appliance).

    VKEY is the key itself, or a file holding it. Compare it with the operator by a second channel."""
    text = Path(vkey).read_text() if os.path.isfile(vkey) else vkey
    log = Witness(root).add_log(text)
    click.echo(f"following {log.origin}; the first request it sends starts from size 0")


@witness_group.command("cosign")
@_DIR
@click.argument("request", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the cosignature (signature lines, C2SP tlog-witness), to carry back.")
@click.option("--checkpoint", "keep", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the cosigned checkpoint, for `verify ledger --checkpoint`.")
def cosign(root: Path, request: Path, out: Path, keep: Path | None) -> None:
    """Cosign the checkpoint in an add-checkpoint REQUEST, or refuse it with the reason (exit 1).

    Refused: a log never added (unknown_log), a checkpoint not signed by its key (bad_signature),
    a request from another size than the one last cosigned (stale), or a checkpoint that does not
    extend it (inconsistent: a fork or a rewrite). Every answer is recorded in the witness's ledger."""
    line, cosigned = Witness(root).cosign(request.read_bytes())
    atomic_write(out, line.encode())
    if keep is not None:
        atomic_write(keep, cosigned.encode())
    head = cosigned.split("\n", 3)
    click.echo(f"cosigned {head[0]} at size {head[1]}; cosignature written to {out}")


@witness_group.command("show")
@_DIR
@click.option("--checkpoint", "origin", metavar="ORIGIN", help="Print the latest checkpoint cosigned for ORIGIN.")
def show(root: Path, origin: str | None) -> None:
    """Show the witness's verifier key and the logs it follows, with the size last cosigned."""
    witness = Witness(root)
    logs = witness.logs()
    if origin is not None:
        log = logs.get(origin)
        if log is None or log.checkpoint is None:
            raise click.ClickException(f"no checkpoint of {origin} was cosigned here")
        click.echo(log.checkpoint, nl=False)
        return
    click.echo(f"witness       {witness.name}")
    click.echo(f"verifier key  {Witness.vkey(witness.key(), witness.name)}")
    for log in logs.values():
        click.echo(f"  {log.origin}  cosigned up to size {log.size}")

"""`anticloud audit enroll`: give an auditor the secret that forward-secure seals are checked with."""

from __future__ import annotations

from pathlib import Path

import click

from anticloud.cli import pass_home
from anticloud.home import Home
from anticloud.sealing import enroll, sealer_for
from ledger import LedgerWriter


@click.group("audit")
def audit_group() -> None:
    """What auditors take away from the appliance."""


@audit_group.command("enroll")
@click.option("--auditor", required=True, help="Who takes the secret away (recorded).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the secret (0600): removable media, outside the home.")
@click.option("--abandon", is_flag=True,
              help="The sealing state was lost: end the open chain unsealed (recorded) and enroll anew.")
@pass_home
def enroll_auditor(home: Home, auditor: str, out: Path, abandon: bool) -> None:
    """Start forward-secure sealing for AUDITOR, closing any sealing chain before it.

    \b
    The secret is written to --out once and kept nowhere else: the appliance seals its first
    epoch at once and from then on holds only the key of the epoch in progress, which it
    evolves one way. Keep the file off the appliance; verify with
    `anticloud verify ledger --seal-key FILE` (or tools/verify_ledger.py --seal-key FILE).
    """
    with LedgerWriter.open(home.ledger, sealer_for(home, always=True, abandon=abandon)) as writer:
        record = enroll(home, writer, auditor, out)
    click.echo(f"enrolled {auditor}: sealing from seq {record.seq}, fingerprint {record.data['fingerprint']}")
    click.echo(f"  secret  {out}  (0600; take it away, and keep it off this machine)")

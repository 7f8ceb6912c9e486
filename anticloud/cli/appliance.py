"""`anticloud init`: create the appliance's identity and ledger."""

from __future__ import annotations

import click

from anticloud.cli import open_ledger, pass_home
from anticloud.config import record_accepted
from anticloud.home import Home
from anticloud.identity import appliance_vkey, initialise


@click.command()
@pass_home
def init(home: Home) -> None:
    """Create the appliance identity key and the ledger's genesis record."""
    key_id = initialise(home)
    with open_ledger(home) as writer:
        record_accepted(home, writer, "config.init")
    click.echo(f"initialised {home.root}")
    click.echo(f"  ledger         {home.ledger}")
    click.echo(f"  appliance key  {key_id}")
    click.echo(f"  public key     {home.identity_pub}  (give this to your auditors)")
    click.echo(f"  verifier key   {appliance_vkey(home)}  (for witnesses and tlog tools)")

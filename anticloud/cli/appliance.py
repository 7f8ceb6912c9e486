"""`anticloud init`: create the appliance's identity and ledger."""

from __future__ import annotations

from pathlib import Path

import click

from anticloud.cli import open_ledger, pass_home
from anticloud.cli.content import PASSPHRASE_ENV, ask_passphrase, check_new_key, create_key, key_record
from anticloud.config import record_accepted, set_override
from anticloud.home import Home
from anticloud.identity import appliance_vkey, initialise, refuse_initialised


@click.command()
@click.option("--content-key", "content_key", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the private content key (which reads sealed prompts and outputs) to this new file, "
                   "on separate media, rather than into the home.")
@click.option("--content-passphrase", is_flag=True,
              help=f"Encrypt the private content key under a passphrase (prompted, or ${PASSPHRASE_ENV}).")
@pass_home
def init(home: Home, content_key: Path | None, content_passphrase: bool) -> None:
    """Create the appliance identity key and the ledger's genesis record, and the content key
    that seals prompts and outputs (inference.record_content = "sealed", a new home's policy)."""
    refuse_initialised(home)
    check_new_key(home, content_key)  # everything that can be refused or asked is, before anything is made
    secret = ask_passphrase(content_passphrase)
    key_id = initialise(home)
    where = create_key(home, content_key, secret)
    set_override(home, "inference", "record_content", "sealed")
    with open_ledger(home) as writer:
        record_accepted(home, writer, "config.init")
        writer.append("content.key", key_record(home, content_key, content_passphrase))
    click.echo(f"initialised {home.root}")
    click.echo(f"  ledger         {home.ledger}")
    click.echo(f"  appliance key  {key_id}")
    click.echo(f"  public key     {home.identity_pub}  (give this to your auditors)")
    click.echo(f"  verifier key   {appliance_vkey(home)}  (for witnesses and tlog tools)")
    click.echo(f"  content key    {where}")

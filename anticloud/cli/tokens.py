"""`anticloud tokens`: per-person bearer tokens for the HTTP API."""

from __future__ import annotations

import click

from anticloud import durations
from anticloud import tokens as store
from anticloud.cli import open_ledger, pass_home
from anticloud.home import Home
from ledger import utc_timestamp


@click.group("tokens")
def tokens_group() -> None:
    """Per-person tokens: every inference through the API is recorded under one."""


@tokens_group.command("create")
@click.argument("name")
@click.option("--expires-in", "lifetime", metavar="DURATION",
              help="Expire after this long (e.g. 90d, 12h); without it, the token lives until revoked.")
@pass_home
def create(home: Home, name: str, lifetime: str | None) -> None:
    """Make a token for NAME and print it, once. Recorded as token.create."""
    try:
        seconds = None if lifetime is None else durations.seconds(lifetime)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    with open_ledger(home) as writer:
        token, secret = store.create(home, writer, name, seconds)
    click.echo(secret)
    until = f", valid until {token.expires}" if token.expires else ""
    click.echo(f"token {token.short_id} for {name}{until}: give it to them now; it is stored only as a hash",
               err=True)


@tokens_group.command("list")
@pass_home
def list_tokens(home: Home) -> None:
    """Every token ever made (never the tokens themselves): live, expired or revoked, and when last used."""
    used, now = store.last_used(home), utc_timestamp()
    for token in sorted(store.load(home).values(), key=lambda t: (t.name, t.created)):
        if token.revoked:
            state = f"revoked {token.revoked}"
        elif not token.live(now):
            state = f"EXPIRED {token.expires}"
        else:
            state = "live" + (f" until {token.expires}" if token.expires else "")
        click.echo(f"{token.name:<24} {token.short_id}  created {token.created}  {state}  "
                   f"last used {used.get(token.short_id, 'never')}")


@tokens_group.command("revoke")
@click.argument("name")
@pass_home
def revoke(home: Home, name: str) -> None:
    """Revoke NAME's token. Recorded as token.revoke."""
    with open_ledger(home) as writer:
        store.revoke(home, writer, name)
    click.echo(f"revoked the token of {name}")

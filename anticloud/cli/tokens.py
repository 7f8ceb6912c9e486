"""`anticloud tokens`: per-person bearer tokens for the HTTP API."""

from __future__ import annotations

import click

from anticloud import tokens as store
from anticloud.cli import open_ledger, pass_home
from anticloud.home import Home


@click.group("tokens")
def tokens_group() -> None:
    """Per-person tokens: every inference through the API is recorded under one."""


@tokens_group.command("create")
@click.argument("name")
@pass_home
def create(home: Home, name: str) -> None:
    """Make a token for NAME and print it, once. Recorded as token.create."""
    with open_ledger(home) as writer:
        token, secret = store.create(home, writer, name)
    click.echo(secret)
    click.echo(f"token {token.short_id} for {name}: give it to them now; it is stored only as a hash", err=True)


@tokens_group.command("list")
@pass_home
def list_tokens(home: Home) -> None:
    """Who has a token (never the tokens themselves)."""
    for token in sorted(store.load(home).values(), key=lambda t: t.name):
        state = f"revoked {token.revoked}" if token.revoked else f"created {token.created}"
        click.echo(f"{token.name:<24} {token.short_id}  {state}")


@tokens_group.command("revoke")
@click.argument("name")
@pass_home
def revoke(home: Home, name: str) -> None:
    """Revoke NAME's token. Recorded as token.revoke."""
    with open_ledger(home) as writer:
        store.revoke(home, writer, name)
    click.echo(f"revoked the token of {name}")

"""`anticloud config`: show, change (recorded) and accept the configuration."""

from __future__ import annotations

import json

import click

from anticloud.cli import open_ledger, pass_home
from anticloud.config import AT_NEXT_START, load_config, record_accepted, set_value
from anticloud.home import Home
from anticloud.models import ModelStore


@click.group("config")
def config_group() -> None:
    """The appliance's configuration and policy (see policies/README.md)."""


@config_group.command("show")
@pass_home
def show(home: Home) -> None:
    """Print the configuration in force, and its digest."""
    config = load_config(home)
    click.echo(json.dumps(config.doc, indent=2, sort_keys=True))
    click.echo(f"digest {config.digest()}")


@config_group.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be -1
@click.argument("key")
@click.argument("value")
@pass_home
def set_(home: Home, key: str, value: str) -> None:
    """Change one setting, e.g. `config set airgap.mode warn`. Recorded as config.change.

    Settings in seconds also take durations (`config set engine.keep_alive 5m`; -1 keeps a
    model loaded). A running engine applies the change before its next operation, except
    engine.name and ledger.seal_interval, which take effect at the next start."""
    if key == "inference.default_model":
        ModelStore(home).get(value)  # ModelError, naming what the store holds, before anything is recorded
    with open_ledger(home) as writer:
        old, new, config = set_value(home, writer, key, value)
    when = "at the next start of the engine" if tuple(key.split(".")) in AT_NEXT_START else "now"
    click.echo(f"{key}: {old!r} -> {new!r}  (config {config.digest()}; in force {when})")


@config_group.command("accept")
@pass_home
def accept(home: Home) -> None:
    """Accept config.toml as it is now, after an edit made outside anticloud. Recorded as config.accept."""
    with open_ledger(home) as writer:
        config, changes = record_accepted(home, writer, "config.accept")
    for c in changes:
        click.echo(f"  {c['key']}: {c['old']!r} -> {c['new']!r}")
    click.echo(f"accepted config {config.digest()} ({len(changes)} change(s) since the last accepted, recorded)")

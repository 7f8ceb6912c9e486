"""`anticloud import` and `anticloud models`: bring bundles in, and manage the model store."""

from __future__ import annotations

import time
from pathlib import Path

import click

from anticloud.cli import open_ledger, pass_home
from anticloud.config import load_policy
from anticloud.home import Home
from anticloud.models import ModelStore
from anticloud.trust import TrustStore


@click.command("import")
@click.argument("bundle", type=click.Path(path_type=Path))
@pass_home
def import_bundle(home: Home, bundle: Path) -> None:
    """Verify a signed bundle and copy its model into the store, or refuse it and say why.

    Recorded as model.import, or model.import.rejected with the reason.
    """
    policy = load_policy(home)
    start = time.monotonic()
    with open_ledger(home) as writer:
        imported = ModelStore(home).import_bundle(bundle, TrustStore.load(home), policy, writer)
    seconds = max(time.monotonic() - start, 1e-9)
    click.echo(f"imported {imported.manifest.name} ({imported.digest})")
    click.echo(f"  signed by  {', '.join(imported.signers)}")
    click.echo(f"  {imported.bytes} bytes in {seconds:.1f} s ({imported.bytes / seconds / 1e6:.0f} MB/s)")


@click.group("models")
def models_group() -> None:
    """The model store."""


@models_group.command("list")
@pass_home
def list_models(home: Home) -> None:
    """The imported models."""
    models = ModelStore(home).list()
    if not models:
        click.echo("no models; bring one in with `anticloud import BUNDLE`")
    for model in models:
        size = sum(f.size for f in model.manifest.files)
        click.echo(f"{model.name:<24} {size / 1e6:9.1f} MB  imported manifest {model.digest}")


@models_group.command("show")
@click.argument("name")
@pass_home
def show(home: Home, name: str) -> None:
    """A model's signed manifest."""
    model = ModelStore(home).get(name)
    m = model.manifest
    click.echo(f"{m.name}\n  manifest  {model.digest}\n  created   {m.created}\n  expires   {m.expires or 'never'}")
    for entry in m.files:
        click.echo(f"  file      {entry.path}  {entry.size} bytes  {entry.sha3_256}")
    for template in m.chat_templates:
        click.echo(f"  template  {template.file}:{template.key}  {template.sha3_256}")


@models_group.command("remove")
@click.argument("name")
@pass_home
def remove(home: Home, name: str) -> None:
    """Remove a model and the blobs no other model uses. Recorded as model.remove."""
    with open_ledger(home) as writer:
        ModelStore(home).remove(name, writer)
    click.echo(f"removed {name}")

"""`anticloud bundle`: make and co-sign model bundles on the connected staging machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from anticloud.bundle import create_bundle, sign_bundle
from anticloud.cli.keys import load_signing_key


@click.group("bundle")
def bundle_group() -> None:
    """Signed model bundles, carried to the appliance on removable media."""


@bundle_group.command("create")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name: lowercase letters, digits, '.', '_' or '-'.")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The publisher's private key.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="A new directory for the bundle.")
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Refuse to import after this many days.")
def create(files: tuple[Path, ...], name: str, key_path: Path, out: Path, expires_in_days: int | None) -> None:
    """Copy FILES into a new bundle, hash them, describe them in a manifest and sign it."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    manifest = create_bundle(list(files), name, load_signing_key(key_path), out, expires)
    click.echo(f"bundle {out}: {manifest.name}, {len(manifest.files)} file(s), "
               f"{len(manifest.chat_templates)} chat template(s)")
    for entry in manifest.files:
        click.echo(f"  {entry.path}  {entry.size} bytes  {entry.sha3_256}")


@bundle_group.command("sign")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
def sign(bundle: Path, key_path: Path) -> None:
    """Add another publisher's signature to BUNDLE (for a policy that needs several)."""
    key_id = sign_bundle(bundle, load_signing_key(key_path))
    click.echo(f"signed {bundle} with {key_id}")

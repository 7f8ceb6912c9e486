"""`anticloud kit build`: the offline install kit, on the connected staging machine."""

from __future__ import annotations

from pathlib import Path

import click

from anticloud import __version__
from anticloud.cli.keys import load_signing_key
from anticloud.kit import build_kit


@click.group("kit")
def kit_group() -> None:
    """Install kits for workstations with no network."""


@kit_group.command("build")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The publisher key that signs the kit.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("dist") / f"anticloud-kit-{__version__}",
              show_default=True, help="A new directory for the kit.")
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Where the target's llama-cpp-python wheel was built (the Makefile's wheelhouse).")
@click.option("--model-bundle", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A signed model bundle to carry along.")
def build(key_path: Path, out: Path, wheelhouse: Path | None, model_bundle: Path | None) -> None:
    """Wheels for the appliance and every dependency, hash-pinned, with an SBOM, signed."""
    kit = build_kit(load_signing_key(key_path), out, wheelhouse, model_bundle)
    click.echo(f"kit {kit.path}: {kit.wheels} wheels, signed by {kit.key_id}")
    click.echo(f"  install.sh SHA-256 {kit.install_sh_sha256}  (check it on the workstation before running it)")

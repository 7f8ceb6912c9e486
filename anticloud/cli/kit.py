"""`anticloud kit`: build the offline install kit on the connected staging machine; on the workstation,
check the installed llama.cpp against this CPU and record an install in the ledger (both run by install.sh)."""

from __future__ import annotations

from pathlib import Path

import click

from anticloud import __version__
from anticloud.cli import open_ledger, pass_home
from anticloud.cli.keys import load_signing_key
from anticloud.cpu import NATIVE, load_cpu_backend
from anticloud.errors import EngineError
from anticloud.home import Home
from anticloud.kit import build_kit
from anticloud.upgrade import installed_receipt, record_install


@click.group("kit")
def kit_group() -> None:
    """Install kits for workstations with no network."""


@kit_group.command("build")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The publisher key that signs the kit.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("dist") / f"anticloud-kit-{__version__}",
              show_default=True, help="A new directory for the kit.")
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Where llama-cpp-python was built (`make kit` gives the portable build's wheelhouse).")
@click.option("--model-bundle", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A signed model bundle to carry along.")
def build(key_path: Path, out: Path, wheelhouse: Path | None, model_bundle: Path | None) -> None:
    """Wheels for the appliance and every dependency, hash-pinned, with an SBOM, signed.

    The kit is built from the committed files of the checkout (git HEAD); uncommitted changes
    to tracked files are refused, and untracked files are left out and named.
    """
    kit = build_kit(load_signing_key(key_path), out, wheelhouse, model_bundle)
    click.echo(f"kit {kit.path}: anticloud {kit.version} at commit {kit.commit[:12]}, {kit.wheels} wheels, "
               f"signed by {kit.key_id}")
    if kit.cpu.build == NATIVE:
        click.echo("  llama.cpp: NATIVE build for this machine's CPU; install.sh refuses CPUs without: "
                   f"{' '.join(kit.cpu.requires)} (`make kit` builds a portable kit)")
    else:
        click.echo(f"  llama.cpp: portable build, any {kit.cpu.baseline} CPU; "
                   f"CPU backends {', '.join(kit.cpu.variants)}")
    if kit.left_out:
        shown = ", ".join(kit.left_out[:5]) + (f" and {len(kit.left_out) - 5} more" if len(kit.left_out) > 5 else "")
        click.echo(f"  left out (not tracked by git): {shown}")
    click.echo(f"  install.sh SHA-256 {kit.install_sh_sha256}  (check it on the workstation before running it)")


@kit_group.command("cpu")
def cpu() -> None:
    """Load the installed llama.cpp's CPU backend that this CPU runs, and name it (install.sh runs this)."""
    try:
        variant = load_cpu_backend()
    except (OSError, RuntimeError) as exc:  # llama_cpp raises RuntimeError when its library does not load
        raise EngineError(f"llama.cpp does not load on this machine: {exc}") from None
    if variant is None:
        click.echo("llama.cpp: native build, its CPU backend linked in; it loads on this CPU")
    else:
        click.echo(f"llama.cpp: portable build; this CPU runs its {variant} CPU backend")


@kit_group.command("record-install")
@click.option("--from", "previous", metavar="VERSION", help="The version installed before (an upgrade).")
@click.option("--from-manifest", "previous_manifest", metavar="DIGEST",
              help="The digest of the previous kit's signed manifest, where known.")
@click.option("--forced-downgrade", is_flag=True, help="The operator forced an older kit over a newer one.")
@pass_home
def record_install_command(home: Home, previous: str | None, previous_manifest: str | None,
                           forced_downgrade: bool) -> None:
    """Record this installation's kit in the ledger: appliance.install, or appliance.upgrade (install.sh runs this).

    The kit recorded is the one this anticloud was installed from (PREFIX/share/anticloud/installed.json).
    """
    if previous_manifest is not None and previous is None:
        raise click.UsageError("--from-manifest needs --from")
    installed = installed_receipt()
    with open_ledger(home) as writer:
        way = record_install(writer, installed, previous, previous_manifest, forced_downgrade)
    what = "install" if previous is None else f"{way} from {previous}"
    forced = " (forced)" if forced_downgrade and way == "downgrade" else ""
    click.echo(f"recorded appliance.{'install' if previous is None else 'upgrade'}: {what} to {installed.version}"
               f"{forced}, kit {installed.manifest}")

"""`anticloud keys`: publisher keys and the appliance's trust store."""

from __future__ import annotations

import os
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.cli import open_ledger, pass_home
from anticloud.cli.confirm import YES_HELP, confirm
from anticloud.config import load_policy
from anticloud.home import Home
from anticloud.identity import appliance_vkey, key_id, load_identity, read_private_key
from anticloud.models import ModelStore
from anticloud.trust import TrustStore, generate_publisher_key, revocable, revoke_key, trust_key

PASSPHRASE_ENV = "ANTICLOUD_KEY_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret


@click.group("keys")
def keys_group() -> None:
    """Publisher keys, and which of them this appliance trusts."""


@keys_group.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for publisher.key (0600) and publisher.pub.")
@click.option("--encrypt", is_flag=True,
              help=f"Encrypt the private key with a passphrase (prompted, or ${PASSPHRASE_ENV}).")
def generate(out: Path, encrypt: bool) -> None:
    """Make an Ed25519 publisher key pair, on the staging machine."""
    passphrase = None
    if encrypt:
        passphrase = (os.environ.get(PASSPHRASE_ENV) or click.prompt("passphrase", hide_input=True,
                                                                      confirmation_prompt=True)).encode()
    key_id = generate_publisher_key(out, passphrase)
    click.echo(f"publisher key {key_id}")
    click.echo(f"  private  {out / 'publisher.key'}  (keep it on the staging machine)")
    click.echo(f"  public   {out / 'publisher.pub'}  (give it to the appliance: anticloud keys trust)")


@keys_group.command("trust")
@click.argument("pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", help="A name for people (default: the file name).")
@pass_home
def trust(home: Home, pubkey: Path, name: str | None) -> None:
    """Trust a publisher's public key (PEM) to sign model manifests. Recorded as trust.add."""
    with open_ledger(home) as writer:
        key = trust_key(home, writer, pubkey.read_bytes(), str(pubkey), name)
    click.echo(f"trusted {key.key_id} ({key.name})")


@keys_group.command("list")
@pass_home
def list_keys(home: Home) -> None:
    """Show trusted and revoked publisher keys."""
    keys = TrustStore.load(home).keys()
    if not keys:
        click.echo("no trusted keys; add one with `anticloud keys trust PUBKEY`")
    for key in keys:
        state = f"revoked {key.revoked}" if key.revoked else f"trusted {key.added}"
        click.echo(f"{key.key_id}  {key.name:<20} {state}")


@keys_group.command("show")
@click.option("--vkey", "only_vkey", is_flag=True, help="Print only the verifier key (for a script or a witness).")
@pass_home
def show(home: Home, only_vkey: bool) -> None:
    """Show the appliance's own key: its id, its public key file, and its signed-note verifier key."""
    vkey = appliance_vkey(home)
    if only_vkey:
        click.echo(vkey)
        return
    click.echo(f"appliance key  {key_id(load_identity(home))}")
    click.echo(f"public key     {home.identity_pub}")
    click.echo(f"origin         {vkey.split('+')[0]}")
    click.echo(f"verifier key   {vkey}")


@keys_group.command("revoke")
@click.argument("key_id")
@click.option("--yes", is_flag=True, help=YES_HELP)
@pass_home
def revoke(home: Home, key_id: str, yes: bool) -> None:
    """Revoke a publisher key, for good. Recorded as trust.revoke.

    Says first which stored models would no longer load (their signatures would fall below
    trust.min_signatures); a running server unloads its models and verifies them again."""
    trust, policy, store = TrustStore.load(home), load_policy(home), ModelStore(home)
    key = revocable(trust, key_id)

    def without(kid: str) -> tuple[bytes | None, bool]:
        public, revoked = trust.lookup(kid)
        return public, revoked or kid == key_id

    stranded = [m.name for m in store.list()
                if store.readiness(m.name, trust.lookup, policy) is None
                and store.readiness(m.name, without, policy) is not None]
    click.echo(f"revoking {key.key_id} ({key.name}) cannot be undone; models that would no longer load: "
               f"{', '.join(stranded) or 'none'}")
    confirm("revoke it?", yes)
    with open_ledger(home) as writer:
        key = revoke_key(home, writer, key_id)
    click.echo(f"revoked {key.key_id} ({key.name})")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """A publisher key, decrypted with $ANTICLOUD_KEY_PASSPHRASE or a prompted passphrase if needed."""
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None and b"ENCRYPTED" in path.read_bytes()[:64]:
        passphrase = click.prompt(f"passphrase for {path}", hide_input=True)
    return read_private_key(path, passphrase.encode() if passphrase else None)

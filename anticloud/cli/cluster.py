"""`anticloud cluster` (the link's keys and settings) and `anticloud worker` (docs/cluster.md)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from anticloud import airgap
from anticloud.cli import CliInputError, open_ledger, pass_home
from anticloud.cluster import settings, tls
from anticloud.cluster.worker import Worker
from anticloud.config import change, load_config
from anticloud.errors import ClusterError
from anticloud.fsutil import atomic_write
from anticloud.home import Home


@click.group("cluster")
def cluster_group() -> None:
    """The isolated cable to other appliances: TLS keys, pinned peers, the guard's verdict."""


@cluster_group.command("init")
@pass_home
def init(home: Home) -> None:
    """Make this end's TLS key (0600) and self-signed certificate; print the certificate's
    fingerprint, to be compared by hand with the one the other end trusts."""
    with open_ledger(home) as writer:
        fingerprint = tls.make_identity(home.cluster, f"anticloud {home.root.name}")
        try:
            writer.append("cluster.keys", {"certificate": fingerprint})
        except BaseException:  # an unrecorded key is no key: the next `cluster init` makes it anew
            for name in (tls.KEY_FILE, tls.CERT_FILE):
                (home.cluster / name).unlink(missing_ok=True)
            raise
    click.echo(f"certificate {home.cluster / tls.CERT_FILE}")
    click.echo(f"fingerprint {fingerprint}")
    click.echo("copy the certificate to the other end by hand, and run `anticloud cluster trust` there")


@cluster_group.command("trust")
@click.argument("certificate", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--fingerprint", "expected", help="The fingerprint read out by the other end's operator; "
                                                 "refused if the file's differs.")
@pass_home
def trust(home: Home, certificate: Path, expected: str | None) -> None:
    """Pin a peer's TLS certificate (recorded as config.change of cluster.certificates)."""
    pem = certificate.read_bytes()
    try:
        fingerprint = tls.fingerprint(pem)
    except ClusterError as exc:
        raise CliInputError(f"{certificate}: {exc}") from None
    if expected is not None and expected.strip().lower() != fingerprint:
        raise CliInputError(f"{certificate} has fingerprint {fingerprint}, not {expected}: it is not the one "
                            "the other end read out")
    pinned = list(load_config(home).get("cluster", "certificates"))
    if fingerprint in pinned:
        click.echo(f"already pinned: {fingerprint}")
        return
    peers = home.cluster / tls.PEERS_DIR
    peers.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(peers / f"{fingerprint.removeprefix('sha256:')}.crt", pem, 0o600)
    with open_ledger(home) as writer:
        change(home, writer, "cluster.certificates", [*pinned, fingerprint], {"trusted": str(certificate)})
    click.echo(f"pinned {fingerprint} (in force at the next start)")


@cluster_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_home
def show(home: Home, as_json: bool) -> None:
    """This end's certificate, the pinned peers, and the guard's verdict with the cluster's exception."""
    config = load_config(home)
    link = settings.link(config.doc["cluster"])
    verdict = airgap.assess(airgap.read_state(), link)
    certificate = home.cluster / tls.CERT_FILE
    report = {"cluster": link.to_json() if link else None,
              "certificate": tls.fingerprint(certificate.read_bytes()) if certificate.exists() else None,
              "pinned": config.get("cluster", "certificates"), "airgap": verdict.to_json()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"cluster     {'none configured' if link is None else f'{link.interface} {link.address}'}")
    if link is not None:
        click.echo(f"peers       {', '.join(str(peer) for peer in link.peers) or 'none'}")
    click.echo(f"certificate {report['certificate'] or 'none (anticloud cluster init)'}")
    for pin in report["pinned"]:
        click.echo(f"pinned      {pin}")
    click.echo(f"air gap     {'isolated' if verdict.isolated else 'REACHABLE'}")
    for reason in verdict.reasons():
        click.echo(f"  {reason}")


@click.command("worker")
@click.option("--watch-interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between two checks of the network.")
@pass_home
def worker(home: Home, watch_interval: float) -> None:
    """Lend this machine's CPU to an engine across the cluster's cable: llama.cpp's RPC server
    on loopback, behind a mutual-TLS gate on the cluster address. Every session is recorded."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open_ledger(home) as writer:
        serving = Worker.start(home, writer)
        address, port = serving.gate.address
        click.echo(f"worker serving on {address}:{port} (air gap: {serving.watch.state.label}); "
                   "stop with SIGTERM or Ctrl-C", err=True)
        serving.run(stop, watch_interval)

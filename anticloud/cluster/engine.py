"""The engine's side of a cluster: prove the link to each worker, register its devices, record it.

Invariants (fail closed):

* The engine connects to no one but the configured peers, from its cluster address, over
  mutual TLS with the peers' pinned certificates; llama.cpp's RPC client reaches them only
  through a loopback tunnel per worker (`anticloud.cluster.relay.Tunnel`).
* Each link is proven by a handshake before llama.cpp touches it (llama.cpp aborts the whole
  process when an RPC connection fails). A link that cannot be proven refuses the start:
  ``engine.refused`` with the peer and the reason, recorded before it is raised.
* ``cluster.start`` states the interface, the peers and their certificates, each remote
  device with its memory, and the layer settings, before ``engine.start``; each ``model.load``
  states its split (`anticloud.cluster.split`), and each inference on a split model the
  devices it used and the bytes that crossed the link while it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anticloud.airgap import ClusterLink
from anticloud.cluster import rpc, tls
from anticloud.cluster.listener import show
from anticloud.cluster.relay import Tunnel
from anticloud.config import Config
from anticloud.errors import AnticloudError, EngineRefused, first_line
from anticloud.home import Home
from ledger import LedgerWriter


@dataclass
class Cluster:
    """The links of one running engine, and the devices behind them."""

    link: ClusterLink
    tunnels: list[Tunnel] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    devices: list[rpc.Device] = field(default_factory=list)

    def link_bytes(self) -> tuple[int, int]:
        """The bytes sent to and received from every worker so far, as the tunnels counted them."""
        counts = [tunnel.counter.snapshot() for tunnel in self.tunnels]
        return sum(c.sent for c in counts), sum(c.received for c in counts)

    def lost(self) -> dict[str, str] | None:
        """The first worker whose session ended on its side (it stopped, or cut it on a breach),
        and why; None while every link holds."""
        for tunnel in self.tunnels:
            if tunnel.lost is not None:
                return {"peer": show(tunnel.peer), "reason": tunnel.lost}
        return None

    def free_memory(self) -> list[tuple[str, int]]:
        """Each remote device's name and free memory, as llama.cpp weighs them at a load."""
        return [(device.name, device.free) for device in rpc.refresh(self.devices)]

    def close(self) -> None:
        for tunnel in self.tunnels:
            tunnel.close()


def start(home: Home, writer: LedgerWriter, config: Config, link: ClusterLink) -> Cluster:
    """Connect to every worker and record ``cluster.start``, or record the refusal and raise."""
    section = config.doc["cluster"]
    cluster = Cluster(link)
    peer = None
    try:
        identity = tls.Identity.load(home.cluster)
        pins = tls.load_pins(home.cluster / tls.PEERS_DIR, section["certificates"])
        context = tls.client_context(identity, pins)
        for address in link.peers:
            peer = f"{address}:{section['port']}"
            tunnel = Tunnel((str(address), section["port"]), context, pins, source=str(link.address.ip))
            cluster.tunnels.append(tunnel)
            certificate = tunnel.probe()
            devices = rpc.add_server(tunnel.endpoint)
            cluster.devices += devices
            cluster.peers.append({"address": str(address), "port": section["port"], "certificate": certificate,
                                  "devices": [device.to_json() for device in devices]})
    except (AnticloudError, OSError) as exc:  # keys, a peer, llama.cpp's RPC backend
        cluster.close()
        detail = first_line(exc)
        writer.append("engine.refused", {"reason": "cluster link", "peer": peer, "detail": detail,
                                         "cluster": link.to_json()})
        raise EngineRefused(f"refusing to start: the cluster link to {peer or 'its peers'} failed: {detail}") from None
    compute = config.doc["compute"]
    writer.append("cluster.start", {
        **link.to_json(), "peers": cluster.peers, "certificate": identity.fingerprint,
        "transport": "mutual TLS 1.3, certificates pinned by SHA-256", "gpu_layers": compute["gpu_layers"],
        "models": {name: table["gpu_layers"] for name, table in config.doc.get("models", {}).items()
                   if "gpu_layers" in table}})
    return cluster

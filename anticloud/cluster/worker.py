"""``anticloud worker``: lend this machine's CPU to an engine across the cluster's cable.

Invariants (fail closed):

* The worker starts only under a configuration the ledger accepted and a network isolated
  but for the cluster's cable (the air-gap guard's one exception); a refusal is recorded
  (``worker.refused``) before it is raised.
* llama.cpp's RPC server listens on 127.0.0.1 only. The one way in from the cable is the gate
  on the cluster address (`anticloud.cluster.relay.Gate`): a configured peer, mutual TLS, a
  pinned certificate. Every connection it turns away is recorded (``worker.rejected``).
* Each session is recorded: ``worker.session.begin`` before a byte reaches the RPC server (no
  record, no session), ``worker.session.end`` with the peer, the bytes each way and how long.
* While serving, the network is checked every interval by the engine's own watch
  (`anticloud.watch`): a breach, or a network that cannot be checked, is recorded once, ends
  every session and turns new ones away until it is over.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from anticloud import airgap, startup
from anticloud.backlog import Backlog
from anticloud.cluster import rpc, settings, sockets, tls
from anticloud.cluster.relay import Gate
from anticloud.config import load_config
from anticloud.errors import AirGapBreached, AirGapUnobserved, AnticloudError, ClusterError, first_line
from anticloud.home import Home
from anticloud.watch import AirGapWatch
from ledger import LedgerError, LedgerWriter

RPC_START_TIMEOUT = 30.0


class Worker:
    """One running worker over one home: the RPC server, its gate and the watch over both."""

    def __init__(self, home: Home, writer: LedgerWriter, watch: AirGapWatch, gate: Gate) -> None:
        self.home, self.writer, self.watch, self.gate = home, writer, watch, gate
        self._paused: str | None = None

    @classmethod
    def start(cls, home: Home, writer: LedgerWriter, state: airgap.NetworkState | None = None) -> Worker:
        """Run the start checks, start the RPC server and the gate, and record ``worker.start``;
        or record the refusal and raise."""
        config = load_config(home)
        startup.check_drift(home, writer, config)
        section = config.doc["cluster"]
        link = settings.link(section)
        if link is None:
            writer.append("worker.refused", {"reason": "no cluster configured"})
            raise ClusterError("no cluster is configured: set cluster.interface, cluster.address and cluster.peers "
                               "(docs/cluster.md)")
        mode = config.get("airgap", "mode")
        verdict = airgap.assess(state or airgap.read_state(), link)
        startup.check_network(writer, verdict, mode, False, kind="worker.refused")
        backlog = Backlog(writer.append)
        endpoint = f"127.0.0.1:{section['rpc_port']}"
        try:
            identity = tls.Identity.load(home.cluster)
            pins = tls.load_pins(home.cluster / tls.PEERS_DIR, section["certificates"])
            context = tls.server_context(identity, pins)
            devices = rpc.local_devices()
            serve_rpc(endpoint, section["rpc_port"], config.doc["compute"]["threads"] or os.cpu_count() or 1)
            gate = Gate((str(link.address.ip), section["port"]), ("127.0.0.1", section["rpc_port"]), context, pins,
                        {str(peer) for peer in link.peers}, recorder(writer, backlog))
        except (AnticloudError, OSError) as exc:  # keys, llama.cpp, the RPC server, the gate's address
            writer.append("worker.refused", {"reason": "cluster link", "detail": first_line(exc)})
            raise ClusterError(f"the worker cannot start: {first_line(exc)}") from None
        gate.pause("the worker is starting")  # no session before worker.start is in the ledger
        try:
            writer.append("worker.start", {**link.to_json(), "port": section["port"], "rpc": endpoint,
                                           "certificate": identity.fingerprint,
                                           "pinned": list(section["certificates"]),
                                           "devices": [device.to_json() for device in devices],
                                           "airgap": verdict.to_json(), "pid": os.getpid()})
        except BaseException:
            gate.close()
            raise
        gate.resume()
        return cls(home, writer, AirGapWatch(verdict, mode, backlog, link=link), gate)

    def run(self, stop: threading.Event, interval: float,
            read_state: Callable[[], airgap.NetworkState] = airgap.read_state) -> None:
        """Serve until ``stop``, checking the network every ``interval`` seconds, then record ``worker.stop``."""
        self.watch.run(interval, stop, read_state, self._heal)
        try:
            while not stop.wait(interval / 2):
                self.enforce()
        finally:
            self.gate.close()
            self.writer.append("worker.stop", {"pid": os.getpid()})

    def enforce(self) -> None:
        """End every session and turn new ones away while the watch refuses; resume once it allows."""
        try:
            self.watch.allow()
        except (AirGapBreached, AirGapUnobserved) as exc:
            if self._paused is None:
                self._paused = str(exc)
                self.gate.pause(self._paused)
                self.gate.close_sessions(self._paused)
            return
        if self._paused is not None:
            self._paused = None
            self.gate.resume()

    def _heal(self) -> None:
        self.writer.heal()
        self.watch.tell()


def recorder(writer: LedgerWriter, backlog: Backlog) -> Callable[[str, dict[str, Any]], None]:
    """The gate's events as records. A session whose begin cannot be recorded is refused; an end
    or a rejection waits in the backlog until the ledger takes it."""
    def record(event: str, data: dict[str, Any]) -> None:
        if event == "begin":
            writer.append("worker.session.begin", data)  # no record, no session
            return
        try:
            if event == "end":
                writer.append("worker.session.end", data)
            else:
                writer.append("worker.rejected", data)
        except LedgerError:
            backlog.hold("worker.session.end" if event == "end" else "worker.rejected", data)
    return record


def serve_rpc(endpoint: str, port: int, threads: int) -> threading.Thread:
    """Start llama.cpp's RPC server on loopback, in a thread of its own; wait until it listens
    with a socket of this process (not another's that took the port meanwhile)."""
    if sockets.listening(port):
        raise ClusterError(f"something already listens on {endpoint}; set cluster.rpc_port to a free port")
    thread = threading.Thread(target=rpc.serve, args=(endpoint, threads), name="rpc-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + RPC_START_TIMEOUT
    while not sockets.ours(port, sockets.LISTEN):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ClusterError(f"llama.cpp's RPC server did not start on {endpoint}")
        time.sleep(0.05)
    return thread


"""The cluster link: identities and pins (`anticloud.cluster.tls`), and the tunnel and gate that
carry bytes between them (`anticloud.cluster.relay`), on real sockets on loopback addresses.

The engine's tunnel leaves from 127.0.0.3; the worker's gate listens on 127.0.0.2 and relays
to a small server on 127.0.0.1 that stands in for llama.cpp's RPC server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from anticloud.cluster.relay import Gate, Traffic, Tunnel
from anticloud.cluster.tls import (
    Identity,
    Pins,
    client_context,
    fingerprint,
    make_identity,
    server_context,
)
from anticloud.errors import ClusterError
from tests.waiting import join, poll

ENGINE_ADDRESS = "127.0.0.3"
WORKER_ADDRESS = "127.0.0.2"


def identity(root: Path, name: str) -> Identity:
    make_identity(root / name, name)
    return Identity.load(root / name)


def pins(*identities: Identity) -> Pins:
    return Pins.of(i.certificate.read_bytes() for i in identities)


def read_all(sock: socket.socket) -> bytes:
    received = bytearray()
    while chunk := sock.recv(1 << 20):
        received += chunk
    return bytes(received)


class Listening:
    """A listener on 127.0.0.1 whose accepting thread hands each connection to `accepted`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted(sock)

    def accepted(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def stop_listening(self, what: str) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        join(self.thread, 10, what)


class Server(Listening):
    """A stand-in for the RPC server on 127.0.0.1: ``reply`` maps everything a connection sent
    (up to its half-close) to what goes back; without it, it echoes as bytes arrive."""

    def __init__(self, reply: Callable[[bytes], bytes] | None = None) -> None:
        self.reply = reply
        self.connections = 0
        self.received = bytearray()
        super().__init__()

    def accepted(self, sock: socket.socket) -> None:
        self.connections += 1
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                if self.reply is None:
                    while chunk := sock.recv(1 << 20):
                        self.received += chunk
                        sock.sendall(chunk)
                else:
                    data = read_all(sock)
                    self.received += data
                    sock.sendall(self.reply(data))
            except OSError:
                pass  # cut off: what a test looks at is what arrived

    def close(self) -> None:
        self.stop_listening("the test server's accepting thread")


@dataclass
class Events:
    """What the gate reported, in order; ``fail_on`` makes the callback raise for that kind."""

    seen: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    fail_on: str | None = None

    def __call__(self, kind: str, facts: dict[str, object]) -> None:
        if kind == self.fail_on:
            raise OSError("the ledger cannot record")
        self.seen.append((kind, facts))

    def of(self, kind: str) -> list[dict[str, object]]:
        return [facts for k, facts in self.seen if k == kind]

    def wait(self, kind: str, count: int = 1) -> dict[str, object]:
        poll(lambda: len(self.of(kind)) >= count, 20, f"{count} {kind!r} event(s) from the gate")
        return self.of(kind)[count - 1]


@dataclass
class Link:
    engine: Identity
    worker: Identity
    server: Server
    gate: Gate
    tunnel: Tunnel
    events: Events

    def connect(self) -> socket.socket:
        host, port = self.tunnel.endpoint.split(":")
        return socket.create_connection((host, int(port)), timeout=30)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Identity]:
    return {name: identity(tmp_path, name) for name in ("engine", "worker", "stranger")}


def make_gate(keys: dict[str, Identity], server: Server, events: Events, context: ssl.SSLContext | None = None,
              listen: tuple[str, int] = (WORKER_ADDRESS, 0), allowed: str = ENGINE_ADDRESS) -> Gate:
    """The worker's gate: by default its own key, pinning the engine, admitting the engine's address."""
    context = context or server_context(keys["worker"], pins(keys["engine"]))
    return Gate(listen, server.address, context, pins(keys["engine"]), {allowed}, events)


def make_tunnel(keys: dict[str, Identity], peer: tuple[str, int], me: str = "engine", trusts: str = "worker",
                source: str = ENGINE_ADDRESS) -> Tunnel:
    trusted = pins(keys[trusts])
    return Tunnel(peer, client_context(keys[me], trusted), trusted, source=source)


@pytest.fixture
def link(keys: dict[str, Identity]) -> Iterator[Link]:
    server, events = Server(), Events()
    gate = make_gate(keys, server, events)
    tunnel = make_tunnel(keys, gate.address)
    yield Link(keys["engine"], keys["worker"], server, gate, tunnel, events)
    tunnel.close()
    gate.close()
    server.close()


# -- identities, fingerprints, pins ---------------------------------------------------------------


def test_identity_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    found = make_identity(directory, "worker-1")
    key = directory / "tls.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in directory.iterdir()) == ["tls.crt", "tls.key"]  # no temporary left behind
    before = key.read_bytes(), (directory / "tls.crt").read_bytes()
    with pytest.raises(ClusterError, match="refusing to overwrite"):
        make_identity(directory, "worker-1")
    assert (key.read_bytes(), (directory / "tls.crt").read_bytes()) == before
    assert Identity.load(directory).fingerprint == found


def test_certificate_names_the_appliance_and_is_no_authority(tmp_path: Path) -> None:
    made = identity(tmp_path, "engine-a")
    cert = x509.load_pem_x509_certificate(made.certificate.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=engine-a"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 20 <= years < 20.1


def test_identity_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    make_identity(tmp_path / "id", "engine")
    (tmp_path / "id" / "tls.key").chmod(0o644)
    with pytest.raises(ClusterError, match="mode 0644"):
        Identity.load(tmp_path / "id")
    with pytest.raises(ClusterError, match="does not exist"):
        Identity.load(tmp_path / "nowhere")
    key = tmp_path / "id" / "tls.key"
    key.rename(tmp_path / "elsewhere.key")
    (tmp_path / "elsewhere.key").chmod(0o600)
    key.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(ClusterError, match="not a regular file"):
        Identity.load(tmp_path / "id")


def test_fingerprint_is_the_same_for_pem_and_der(tmp_path: Path) -> None:
    made = identity(tmp_path, "engine")
    pem = made.certificate.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert fingerprint(pem) == fingerprint(pem.decode()) == fingerprint(der) == made.fingerprint == expected
    with pytest.raises(ClusterError, match=r"not an X\.509 certificate"):
        fingerprint(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ClusterError, match=r"not an X\.509 certificate"):
        fingerprint(der[:-1])


def test_pins_expecting_refuses_a_certificate_under_another_fingerprint(keys: dict[str, Identity]) -> None:
    engine, stranger = keys["engine"], keys["stranger"]
    pinned = Pins.expecting({engine.fingerprint: engine.certificate.read_bytes()})
    assert engine.fingerprint in pinned and stranger.fingerprint not in pinned
    with pytest.raises(ClusterError, match=f"pinned as {engine.fingerprint} is {stranger.fingerprint}"):
        Pins.expecting({engine.fingerprint: stranger.certificate.read_bytes()})
    with pytest.raises(ClusterError, match="no cluster peer is pinned"):
        client_context(engine, Pins({}))


# -- the link carries bytes, and counts them --------------------------------------------------------


def test_round_trip_carries_bytes_both_ways_and_counts_them(keys: dict[str, Identity]) -> None:
    # The stand-in RPC server answers with more than it was sent, so that a count taken the wrong
    # way round, or a reply cut short at the client's half-close, cannot pass.
    server, events = Server(reply=lambda data: data[::-1] + b"+reply"), Events()
    gate = make_gate(keys, server, events)
    tunnel = make_tunnel(keys, gate.address)
    try:
        assert tunnel.probe() == keys["worker"].fingerprint
        events.wait("end")  # the probe's own session: nothing carried
        before = tunnel.counter.snapshot()
        payload = os.urandom(300_000)
        host, port = tunnel.endpoint.split(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)  # a half-close: the reply must still come back
            answer = read_all(client)
        assert answer == payload[::-1] + b"+reply"
        assert bytes(server.received) == payload
        assert tunnel.counter.snapshot() - before == Traffic(sent=len(payload), received=len(answer))
        end = events.wait("end", 2)
        assert end == {
            "peer": ENGINE_ADDRESS,
            "certificate": keys["engine"].fingerprint,
            "bytes_in": len(payload),
            "bytes_out": len(answer),
            "duration_ms": end["duration_ms"],
            "reason": "closed",
        }
        assert events.of("begin") == [{"peer": ENGINE_ADDRESS, "certificate": keys["engine"].fingerprint}] * 2
        assert events.of("rejected") == []
        assert events.of("end")[0]["bytes_in"] == 0  # the probe sent nothing
    finally:
        tunnel.close()
        gate.close()
        server.close()


class GreetingServer(Server):
    """Speaks first and ends its side at once, then reads all the client sends: the half-close
    from the worker's end."""

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.sendall(b"greetings from the RPC server" * 1000)
            sock.shutdown(socket.SHUT_WR)
            self.received += read_all(sock)


def test_a_half_close_from_the_worker_loses_nothing_the_engine_sends_after_it(keys: dict[str, Identity]) -> None:
    server, events = GreetingServer(), Events()
    gate = make_gate(keys, server, events)
    tunnel = make_tunnel(keys, gate.address)
    payload = os.urandom(2_000_000)
    try:
        with socket.create_connection(("127.0.0.1", int(tunnel.endpoint.split(":")[1])), timeout=30) as client:
            assert read_all(client) == b"greetings from the RPC server" * 1000  # its end of stream reached us
            client.sendall(payload)  # ... and we may still send
            client.shutdown(socket.SHUT_WR)
            end = events.wait("end")
    finally:
        tunnel.close()
        gate.close()
        server.close()
    assert bytes(server.received) == payload
    assert (end["bytes_in"], end["bytes_out"], end["reason"]) == (len(payload), 29_000, "closed")


def test_large_transfer_arrives_intact(link: Link) -> None:
    size = 64 << 20
    sent = hashlib.sha256()
    received = hashlib.sha256()
    count = 0

    def send(client: socket.socket) -> None:
        block = os.urandom(1 << 20)
        for i in range(size >> 20):
            piece = hashlib.sha256(block + i.to_bytes(4, "big")).digest() * (1 << 15)  # 1 MiB, each different
            sent.update(piece)
            client.sendall(piece)
        client.shutdown(socket.SHUT_WR)

    with link.connect() as client:
        sender = threading.Thread(target=send, args=(client,))
        sender.start()
        while chunk := client.recv(1 << 20):
            received.update(chunk)
            count += len(chunk)
        join(sender, 60, "the client's sending thread")
    assert count == size
    assert received.hexdigest() == sent.hexdigest()
    end = link.events.wait("end")
    assert end["bytes_in"] == end["bytes_out"] == size
    assert link.tunnel.counter.snapshot() == Traffic(size, size)


def ends(client: socket.socket) -> bytes:
    """What a client still gets before its connection ends, whether closed or reset."""
    try:
        return read_all(client)
    except ConnectionResetError:
        return b""


def test_close_sessions_ends_a_live_session_and_reports_its_bytes(link: Link) -> None:
    with link.connect() as client:
        client.sendall(b"x" * 1000)
        echoed = bytearray()
        while len(echoed) < 1000:
            echoed += client.recv(1000)
        link.events.wait("begin")
        link.gate.close_sessions("the air gap was breached")
        assert ends(client) == b""
    end = link.events.wait("end")
    assert end["reason"] == "the air gap was breached"
    assert (end["bytes_in"], end["bytes_out"]) == (1000, 1000)
    assert link.tunnel.counter.snapshot() == Traffic(1000, 1000)


# -- what the link refuses ------------------------------------------------------------------------


def test_a_client_the_gate_does_not_pin_is_rejected(link: Link, keys: dict[str, Identity]) -> None:
    stranger = make_tunnel(keys, link.gate.address, me="stranger")
    try:
        with pytest.raises(ClusterError, match="refused this appliance"):
            stranger.probe()
        with socket.create_connection(("127.0.0.1", int(stranger.endpoint.split(":")[1])), timeout=30) as client:
            client.sendall(b"an RPC command")
            assert ends(client) == b""
        assert "refused this appliance" in str(stranger.last_error)
    finally:
        stranger.close()
    rejected = link.events.wait("rejected", 2)
    assert rejected["peer"] == ENGINE_ADDRESS
    assert "TLS handshake failed" in str(rejected["reason"]) and "certificate" in str(rejected["reason"])
    assert link.events.of("begin") == []
    assert link.server.connections == 0


def test_a_certificate_trusted_but_not_pinned_is_rejected_after_the_handshake(keys: dict[str, Identity]) -> None:
    # The context lets the stranger's certificate through the handshake; the pin check after it must not.
    server, events = Server(), Events()
    both = pins(keys["engine"], keys["stranger"])
    gate = make_gate(keys, server, events, context=server_context(keys["worker"], both))
    stranger = make_tunnel(keys, gate.address, me="stranger")
    try:
        with pytest.raises(ClusterError, match="without admitting this appliance"):
            stranger.probe()
    finally:
        stranger.close()
        gate.close()
        server.close()
    reason = f"the cluster peer's certificate {keys['stranger'].fingerprint} is not pinned"
    assert events.of("rejected") == [{"peer": ENGINE_ADDRESS, "reason": reason}]
    assert server.connections == 0


class Tap(Listening):
    """A man in the middle's wire: forwards connections to ``upstream`` and keeps every byte the
    tunnel sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.seen = bytearray()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        super().__init__()

    def accepted(self, down: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        self.sockets += [down, up]
        for src, dst, keep in ((down, up, True), (up, down, False)):
            self.threads.append(threading.Thread(target=self._copy, args=(src, dst, keep), daemon=True))
            self.threads[-1].start()

    def _copy(self, src: socket.socket, dst: socket.socket, keep: bool) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if keep:
                    self.seen += chunk
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side has gone: the copy in the other direction ends too

    def close(self) -> None:
        self.stop_listening("the tap's accepting thread")
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            join(thread, 10, "the tap's copying threads")
        for sock in self.sockets:
            sock.close()


def test_a_gate_the_tunnel_does_not_pin_gets_nothing(keys: dict[str, Identity]) -> None:
    # A man in the middle with a key of its own, which would gladly admit the engine.
    recorder, events = Server(), Events()
    impostor = make_gate(keys, recorder, events, context=server_context(keys["stranger"], pins(keys["engine"])),
                         listen=("127.0.0.1", 0), allowed="127.0.0.1")
    tap = Tap(impostor.address)
    tunnel = make_tunnel(keys, tap.address, source="127.0.0.1")
    payload = b"a prompt's tensors, which must never cross in clear " * 100
    try:
        with pytest.raises(ClusterError, match=r"TLS handshake with the cluster peer .* failed"):
            tunnel.probe()
        with socket.create_connection(("127.0.0.1", int(tunnel.endpoint.split(":")[1])), timeout=30) as client:
            client.sendall(payload)
            assert ends(client) == b""
        assert "TLS handshake" in str(tunnel.last_error)
        poll(lambda: len(events.of("rejected")) == 2, 20, "the impostor's two failed handshakes")
    finally:
        tunnel.close()
        tap.close()
        impostor.close()
        recorder.close()
    assert len(tap.seen) > 0  # the tunnel did speak to it: two ClientHellos, two alerts
    assert b"tensors" not in tap.seen
    assert events.of("begin") == [] and recorder.connections == 0


def test_a_plaintext_client_gets_nothing_through(link: Link) -> None:
    with socket.create_connection(link.gate.address, timeout=30, source_address=(ENGINE_ADDRESS, 0)) as raw:
        raw.sendall(b"\x00RPC_CMD_HELLO" * 64)
        raw.shutdown(socket.SHUT_WR)
        answer = ends(raw)
    assert b"RPC_CMD_HELLO" not in answer
    rejected = link.events.wait("rejected")
    assert rejected["peer"] == ENGINE_ADDRESS and str(rejected["reason"]).startswith("TLS handshake failed")
    assert link.server.connections == 0


def test_a_peer_address_not_allowed_is_closed_before_the_handshake(link: Link, keys: dict[str, Identity]) -> None:
    with socket.create_connection(link.gate.address, timeout=30, source_address=("127.0.0.4", 0)) as raw:
        assert ends(raw) == b""  # not one byte: no ServerHello, no alert
    assert link.events.wait("rejected") == {"peer": "127.0.0.4", "reason": "address not allowed"}
    elsewhere = make_tunnel(keys, link.gate.address, source="127.0.0.4")
    try:
        with pytest.raises(ClusterError, match=r"TLS handshake with the cluster peer .* failed"):
            elsewhere.probe()
    finally:
        elsewhere.close()
    assert link.events.of("rejected") == [{"peer": "127.0.0.4", "reason": "address not allowed"}] * 2
    assert link.server.connections == 0


def test_a_paused_gate_refuses_new_sessions_until_resumed(link: Link) -> None:
    link.gate.pause("the network is reachable")
    with pytest.raises(ClusterError):
        link.tunnel.probe()
    assert link.events.wait("rejected") == {"peer": ENGINE_ADDRESS, "reason": "paused: the network is reachable"}
    link.gate.resume()
    assert link.tunnel.probe() == link.worker.fingerprint
    assert link.events.wait("begin")["certificate"] == link.engine.fingerprint


def test_a_session_the_ledger_cannot_record_does_not_happen(link: Link) -> None:
    link.events.fail_on = "begin"
    with pytest.raises(ClusterError, match="without admitting this appliance"):
        link.tunnel.probe()
    with link.connect() as client:
        client.sendall(b"an RPC command")
        assert ends(client) == b""
    assert link.server.connections == 0
    assert link.events.seen == []


def refused_probe(keys: dict[str, Identity], server: Server) -> dict[str, object]:
    """What the gate recorded of a probe it could not admit to ``server``."""
    events = Events()
    gate = make_gate(keys, server, events)
    tunnel = make_tunnel(keys, gate.address)
    try:
        with pytest.raises(ClusterError, match="without admitting"):
            tunnel.probe()
    finally:
        tunnel.close()
        gate.close()
    return events.wait("end")


def test_an_rpc_server_that_is_down_fails_the_probe(keys: dict[str, Identity]) -> None:
    server = Server()
    server.close()  # its port is now closed
    end = refused_probe(keys, server)
    assert str(end["reason"]).startswith(f"the RPC server at 127.0.0.1:{server.address[1]} is unreachable")
    assert (end["bytes_in"], end["bytes_out"]) == (0, 0)


def test_the_gate_never_listens_on_every_address(keys: dict[str, Identity]) -> None:
    server = Server()
    try:
        with pytest.raises(ClusterError, match="cluster address only"):
            make_gate(keys, server, Events(), listen=("0.0.0.0", 0))
    finally:
        server.close()


HOLDER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
print("accepted", flush=True)
"""


def test_an_rpc_port_another_process_holds_gets_no_session(keys: dict[str, Identity]) -> None:
    """Any local process may take a free loopback port: the gate hands sessions to its own RPC server only."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        server = Server()
        server.close()
        server.address = ("127.0.0.1", port)  # where the gate will look for its RPC server
        end = refused_probe(keys, server)
        assert end["reason"] == f"the RPC port 127.0.0.1:{port} is held by another process"
    finally:
        holder.kill()
        said = holder.communicate()[0]
    assert "accepted" not in said


def test_the_tunnel_carries_no_other_process_connection(keys: dict[str, Identity]) -> None:
    server, events = Server(), Events()
    gate = make_gate(keys, server, events)
    tunnel = make_tunnel(keys, gate.address)
    try:
        port = tunnel.endpoint.split(":")[1]
        other = subprocess.run([sys.executable, "-c", f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
s.sendall(b"hello")
s.shutdown(socket.SHUT_WR)
try:
    print(len(s.recv(100)))
except OSError:
    print(0)
"""], capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "0"
        assert tunnel.last_error is not None and "not this process's" in tunnel.last_error
        assert server.connections == 0 and not events.of("begin")
    finally:
        tunnel.close()
        gate.close()
        server.close()

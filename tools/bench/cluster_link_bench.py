#!/usr/bin/env python3
"""Cluster link benchmark: llama.cpp's RPC bytes through the tunnel and the gate (mutual TLS,
two relays) against the same bytes on a direct loopback socket.

    python tools/bench/cluster_link_bench.py [--mib 128] [--rounds 5] [--pings 2000]

A stand-in RPC server on 127.0.0.1 takes an upload (the engine sending weights and inputs),
gives a download (the worker's results), or answers small messages one at a time, each
written in pieces as llama.cpp's RPC client and server write them, with TCP_NODELAY (the round
trips of a graph computation). The worker's side (the server and the gate, on 127.0.0.2)
runs in a process of its own, as it would on its own machine; the engine's side (the client
and the tunnel, leaving from 127.0.0.3) in this one. Through the link every byte crosses two
more sockets, is encrypted once and decrypted once. Each configuration runs in interleaved
rounds; each reports its median.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.cluster.relay import Gate, Tunnel  # noqa: E402
from anticloud.cluster.tls import Identity, Pins, client_context, make_identity, server_context  # noqa: E402

BLOCK = b"\xa5" * (1 << 20)
PING = 64


class Server:
    """``u`` + size: read that many bytes, answer b"k"; ``d`` + size: send that many; ``p``: echo
    PING-byte messages until the end of the stream."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            try:
                head = exactly(sock, 9)
            except ConnectionError:
                return  # the tunnel's probe: a session that carries nothing
            size = int.from_bytes(head[1:], "big")
            if head[:1] == b"u":
                while size > 0:
                    size -= len(sock.recv(min(size, 1 << 20)))
                sock.sendall(b"k")
            elif head[:1] == b"d":
                view = memoryview(BLOCK)
                while size > 0:
                    size -= sock.send(view[: min(size, len(BLOCK))])
            else:  # answer each message as llama.cpp's RPC server does: a size, then the body
                with contextlib.suppress(ConnectionError):
                    while True:
                        exactly(sock, PING)
                        sock.sendall((PING - 8).to_bytes(8, "little"))
                        sock.sendall(bytes(PING - 8))


def exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the stream ended early")
        data += chunk
    return bytes(data)


def upload(address: tuple[str, int], size: int) -> float:
    with socket.create_connection(address) as sock:
        start = time.perf_counter()
        sock.sendall(b"u" + size.to_bytes(8, "big"))
        for _ in range(size // len(BLOCK)):
            sock.sendall(BLOCK)
        assert exactly(sock, 1) == b"k"
        return time.perf_counter() - start


def download(address: tuple[str, int], size: int) -> float:
    with socket.create_connection(address) as sock:
        start = time.perf_counter()
        sock.sendall(b"d" + size.to_bytes(8, "big"))
        left = size
        while left:
            left -= len(sock.recv(1 << 20))
        return time.perf_counter() - start


def pings(address: tuple[str, int], count: int) -> float:
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"p" + bytes(8))
        start = time.perf_counter()
        for _ in range(count):
            # As llama.cpp's RPC client sends a command: a byte, the size, then the body, each a send().
            sock.sendall(b"\x0a")
            sock.sendall((PING - 9).to_bytes(8, "little"))
            sock.sendall(bytes(PING - 9))
            exactly(sock, PING)
        return time.perf_counter() - start


def worker_side(directory: Path) -> None:
    """The child process: the stand-in RPC server and the gate; prints their ports, runs until stdin ends."""
    server = Server()
    engine, worker = Identity.load(directory / "engine"), Identity.load(directory / "worker")
    engine_pins = Pins.of([engine.certificate.read_bytes()])
    gate = Gate(("127.0.0.2", 0), server.address, server_context(worker, engine_pins), engine_pins,
                {"127.0.0.3"}, lambda kind, facts: None)
    print(gate.address[1], server.address[1], flush=True)
    sys.stdin.read()
    gate.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--worker-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_side:
        return worker_side(args.worker_side)
    size = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("engine", "worker"):
            make_identity(Path(tmp) / name, name)
        child = subprocess.Popen([sys.executable, __file__, "--worker-side", tmp], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        gate_port, server_port = map(int, child.stdout.readline().split())
        engine = Identity.load(Path(tmp) / "engine")
        worker_pins = Pins.of([(Path(tmp) / "worker" / "tls.crt").read_bytes()])
        tunnel = Tunnel(("127.0.0.2", gate_port), client_context(engine, worker_pins), worker_pins, source="127.0.0.3")
        tunnel.probe()
        host, port = tunnel.endpoint.split(":")
        routes = {"direct": ("127.0.0.1", server_port), "tunnel+gate": (host, int(port))}
        tests: dict[str, Callable[[tuple[str, int]], float]] = {
            "upload": lambda address: upload(address, size),
            "download": lambda address: download(address, size),
            "round trip": lambda address: pings(address, args.pings),
        }
        times: dict[tuple[str, str], list[float]] = {(t, r): [] for t in tests for r in routes}
        try:
            for _ in range(args.rounds):
                for test, run in tests.items():
                    for route, address in routes.items():
                        times[test, route].append(run(address))
        finally:
            tunnel.close()
            child.stdin.close()
            child.wait(30)
    print(f"cluster link on loopback: {args.mib} MiB transfers, {args.pings} round trips of {PING} bytes, "
          f"median of {args.rounds} interleaved rounds")
    for test in ("upload", "download"):
        rates = {route: size / statistics.median(times[test, route]) / 1e6 for route in routes}
        print(f"  {test:<10} direct {rates['direct']:6.0f} MB/s   tunnel+gate {rates['tunnel+gate']:5.0f} MB/s   "
              f"ratio {rates['tunnel+gate'] / rates['direct']:5.2f}x")
    rtt = {route: statistics.median(times["round trip", route]) / args.pings * 1e6 for route in routes}
    print(f"  round trip direct {rtt['direct']:6.0f} µs     tunnel+gate {rtt['tunnel+gate']:5.0f} µs     "
          f"ratio {rtt['tunnel+gate'] / rtt['direct']:5.2f}x")


if __name__ == "__main__":
    main()

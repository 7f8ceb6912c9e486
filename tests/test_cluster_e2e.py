"""A model split across an isolated cable, for real: two network namespaces joined by a veth
pair, `anticloud worker` in one, the engine in the other, Gemma 3 270M's last layers on the
worker through llama.cpp's RPC backend, over mutual TLS.

No packet leaves the two namespaces: the cable is a veth pair between them, with IPv6 off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.cluster import tls
from anticloud.home import Home
from tests.conftest import operator_imports_real_model

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and ip(8)")

ANTICLOUD = [sys.executable, "-m", "anticloud"]
ENGINE, WORKER = "10.77.0.1", "10.77.0.2"
PROMPT = "The capital of France is"
GPU_LAYERS = 10  # of Gemma 3 270M's 18 layers and its output layer: layers 9-17 and the output go remote
GREEDY = ["--temperature", "0", "--num-predict", "32"]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [r["data"] for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == kind]


def anticloud(home: Home, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


@dataclass
class Cluster:
    engine_ns: str
    worker_ns: str
    engine: Home
    worker: Home
    local_answer: str  # the same greedy generation, on this machine alone

    def run(self, namespace: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", namespace, *args], capture_output=True, text=True,
                              timeout=timeout)

    def answer(self) -> subprocess.CompletedProcess[str]:
        return self.run(self.engine_ns, *ANTICLOUD, "--home", str(self.engine.root), "run", "gemma3-270m", PROMPT,
                        *GREEDY)

    def start_worker(self) -> subprocess.Popen[str]:
        before = len(records(self.worker, "worker.start"))
        worker = subprocess.Popen(["ip", "netns", "exec", self.worker_ns, *ANTICLOUD, "--home", str(self.worker.root),
                                   "worker", "--watch-interval", "0.3"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(records(self.worker, "worker.start")) == before:
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        return worker


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then what it said on stderr."""
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=30)[1] or ""


@pytest.fixture(scope="module")
def cluster(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    engine = operator_imports_real_model(base / "engine", gemma_path)
    anticloud(engine, "config", "set", "compute.repack", "false")  # the kernels a worker computes with
    local = subprocess.run([*ANTICLOUD, "--home", str(engine.root), "run", "--isolate", "gemma3-270m", PROMPT,
                            *GREEDY], capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    anticloud(engine, "config", "set", "compute.repack", "true")  # a split turns it off on its own
    worker = Home(base / "worker" / "home")
    anticloud(worker, "init")
    for home in (engine, worker):
        anticloud(home, "cluster", "init")
    for home, peer in ((engine, worker), (worker, engine)):
        fingerprint = tls.fingerprint((peer.cluster / tls.CERT_FILE).read_bytes())
        anticloud(home, "cluster", "trust", str(peer.cluster / tls.CERT_FILE), "--fingerprint", fingerprint)
    for home, address, other in ((engine, ENGINE, WORKER), (worker, WORKER, ENGINE)):
        anticloud(home, "config", "set", "cluster.address", f"{address}/30")
        anticloud(home, "config", "set", "cluster.peers", f'["{other}"]')
        anticloud(home, "config", "set", "cluster.interface", "cable0")
    anticloud(engine, "config", "set", "compute.gpu_layers", str(GPU_LAYERS))
    tag = uuid.uuid4().hex[:6]
    engine_ns, worker_ns = f"ac-engine-{tag}", f"ac-worker-{tag}"
    ip("netns", "add", engine_ns)
    ip("netns", "add", worker_ns)
    try:
        ip("-n", engine_ns, "link", "add", "cable0", "type", "veth", "peer", "name", "cable0", "netns", worker_ns)
        for namespace, address in ((engine_ns, ENGINE), (worker_ns, WORKER)):
            ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.cable0.disable_ipv6=1")
            ip("-n", namespace, "address", "add", f"{address}/30", "dev", "cable0")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "link", "set", "cable0", "up")
        yield Cluster(engine_ns, worker_ns, engine, worker, local.stdout)
    finally:
        for namespace in (engine_ns, worker_ns):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def test_a_split_model_answers_as_a_local_run_token_for_token_and_both_ends_record_it(cluster: Cluster) -> None:
    worker = cluster.start_worker()
    try:
        answered = cluster.answer()
    finally:
        stop(worker)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout == cluster.local_answer and len(answered.stdout.split()) > 5

    start = records(cluster.engine, "cluster.start")[-1]
    worker_certificate = tls.fingerprint((cluster.worker.cluster / tls.CERT_FILE).read_bytes())
    (peer,) = start["peers"]
    assert (start["interface"], peer["address"], peer["certificate"]) == ("cable0", WORKER, worker_certificate)
    assert peer["devices"] and all(d["memory_total"] > 0 for d in peer["devices"])
    load = records(cluster.engine, "model.load")[-1]
    assert load["split"]["remote_layers"] == GPU_LAYERS and load["repack"] is False
    assert [run["device"] for run in load["split"]["runs"]] == ["CPU", peer["devices"][0]["name"]]
    assert load["split"]["runs"][-1]["last"] == "output"
    begin, end = records(cluster.engine, "inference.begin")[-1], records(cluster.engine, "inference.end")[-1]
    assert begin["devices"] == ["CPU", peer["devices"][0]["name"]]
    assert end["link_bytes"]["sent"] > 0 and end["link_bytes"]["received"] > 0

    (session,) = records(cluster.worker, "worker.session.end")[-1:]
    assert session["peer"] == ENGINE and session["bytes_in"] > 10 << 20  # the remote layers' weights crossed
    assert session["certificate"] == start["certificate"] and session["duration_ms"] > 0
    assert records(cluster.worker, "worker.session.begin")[-1]["peer"] == ENGINE
    assert records(cluster.worker, "worker.stop")
    for home in (cluster.engine, cluster.worker):
        assert anticloud(home, "verify", "ledger").startswith("INTACT")


@pytest.mark.parametrize("change, named", [
    (["link", "add", "spare0", "type", "veth", "peer", "name", "spare1"], "spare0"),
    (["route", "add", "default", "via", WORKER, "dev", "cable0"], "default"),
])
def test_the_guard_refuses_anything_beyond_the_cable(cluster: Cluster, change: list[str], named: str) -> None:
    ip("-n", cluster.engine_ns, *change)
    if change[0] == "link":
        ip("-n", cluster.engine_ns, "link", "set", named, "up")
    try:
        refused = cluster.answer()
    finally:
        undo = ["link", "del", named] if change[0] == "link" else ["route", "del", "default"]
        ip("-n", cluster.engine_ns, *undo)
    assert refused.returncode == 4 and named in refused.stderr
    assert named in json.dumps(records(cluster.engine, "engine.refused")[-1]["airgap"])


def test_the_guard_refuses_route_localnet_which_puts_loopback_on_the_cable(cluster: Cluster) -> None:
    setting = "net.ipv4.conf.cable0.route_localnet"
    ip("netns", "exec", cluster.engine_ns, "sysctl", "-qw", f"{setting}=1")
    try:
        refused = cluster.answer()
    finally:
        ip("netns", "exec", cluster.engine_ns, "sysctl", "-qw", f"{setting}=0")
    assert refused.returncode == 4 and "route_localnet" in refused.stderr
    assert "route_localnet is on for cable0" in json.dumps(records(cluster.engine, "engine.refused")[-1])


def test_the_guard_refuses_a_peer_outside_the_prefix(cluster: Cluster) -> None:
    anticloud(cluster.engine, "config", "set", "cluster.peers", '["10.77.0.9"]')
    try:
        refused = cluster.answer()
    finally:
        anticloud(cluster.engine, "config", "set", "cluster.peers", f'["{WORKER}"]')
    assert refused.returncode == 4 and "10.77.0.9" in refused.stderr
    assert "10.77.0.9" in json.dumps(records(cluster.engine, "engine.refused")[-1])


def test_an_unknown_neighbour_while_serving_is_a_recorded_breach(cluster: Cluster) -> None:
    worker = cluster.start_worker()
    server = subprocess.Popen(["ip", "netns", "exec", cluster.engine_ns, *ANTICLOUD, "--home",
                               str(cluster.engine.root), "serve", "--uds", str(cluster.engine.socket),
                               "--watch-interval", "0.3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with wait_for_socket(cluster.engine, server) as client:
            ok = client.post("/api/generate", json={"model": "gemma3-270m", "prompt": PROMPT, "stream": False,
                                                    "options": {"temperature": 0, "num_predict": 8}})
            assert ok.status_code == 200, ok.text
            ip("-n", cluster.engine_ns, "neigh", "add", "10.77.0.3", "lladdr", "02:00:00:00:00:03", "dev", "cable0",
               "nud", "permanent")
            wait_for(lambda: records(cluster.engine, "airgap.breach"))
            refused = client.post("/api/generate", json={"model": "gemma3-270m", "prompt": PROMPT, "stream": False})
            assert refused.status_code == 503 and "10.77.0.3" in refused.text
            breach = records(cluster.engine, "airgap.breach")[-1]
            assert "unknown neighbour 10.77.0.3" in json.dumps(breach)
            ip("-n", cluster.engine_ns, "neigh", "del", "10.77.0.3", "dev", "cable0")
            wait_for(lambda: len(records(cluster.engine, "airgap.restored")) > 0)
    finally:
        stop(server)
        stop(worker)


def wait_for_socket(home: Home, process: subprocess.Popen[str]) -> httpx.Client:
    deadline = time.monotonic() + 120
    while not home.socket.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(home.socket)), base_url="http://anticloud",
                        timeout=120)


def wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


IMPOSTOR = """
import socket, ssl, sys, pathlib
from anticloud.cluster import tls
key_dir = pathlib.Path(sys.argv[1])
tls.make_identity(key_dir, "impostor")
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(key_dir / tls.CERT_FILE, key_dir / tls.KEY_FILE)
server = socket.create_server(("10.77.0.2", 50052))
print("listening", flush=True)
connection, _ = server.accept()
received = b""
try:
    with context.wrap_socket(connection, server_side=True) as tunnel:
        received = tunnel.recv(65536)
except (ssl.SSLError, OSError) as exc:
    print("handshake failed:", exc, flush=True)
print("cleartext bytes:", len(received), flush=True)
"""


def test_an_impostor_worker_without_the_keys_is_refused_and_hears_nothing(cluster: Cluster,
                                                                        tmp_path: Path) -> None:
    impostor = subprocess.Popen(["ip", "netns", "exec", cluster.worker_ns, sys.executable, "-c", IMPOSTOR,
                                 str(tmp_path / "impostor")], stdout=subprocess.PIPE, text=True)
    assert impostor.stdout is not None and impostor.stdout.readline().strip() == "listening"
    refused = cluster.answer()
    said, _ = impostor.communicate(timeout=30)
    assert refused.returncode == 4 and "certificate" in refused.stderr
    assert records(cluster.engine, "engine.refused")[-1]["reason"] == "cluster link"
    assert "cleartext bytes: 0" in said


INTRUDER = """
import socket, ssl, sys
plain = socket.create_connection(("10.77.0.2", 50052), timeout=10)
plain.sendall(b"\\x00" * 64)  # an RPC hello in the clear
try:
    print("plain got", len(plain.recv(100)), flush=True)
except OSError:
    print("plain got 0", flush=True)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
try:
    with context.wrap_socket(socket.create_connection(("10.77.0.2", 50052), timeout=10)) as tunnel:
        tunnel.sendall(b"\\x00" * 64)
        print("tls got", len(tunnel.recv(100)), flush=True)
except (ssl.SSLError, OSError) as exc:
    print("tls refused", flush=True)
"""


def listeners(table: str) -> set[str]:
    """The listening TCP sockets in a /proc/net/tcp table, as address:port."""
    found = set()
    for line in table.splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            address, port = local.split(":")
            found.add(f"{socket.inet_ntoa(bytes.fromhex(address)[::-1])}:{int(port, 16)}")
    return found


def test_a_client_without_the_keys_reaches_nothing_on_the_worker(cluster: Cluster) -> None:
    worker = cluster.start_worker()
    sessions = len(records(cluster.worker, "worker.session.begin"))
    rejections = len(records(cluster.worker, "worker.rejected"))
    try:
        intruder = cluster.run(cluster.engine_ns, sys.executable, "-c", INTRUDER, timeout=60)
        wait_for(lambda: len(records(cluster.worker, "worker.rejected")) >= rejections + 2)
        listening = listeners(cluster.run(cluster.worker_ns, "cat", "/proc/net/tcp").stdout)
    finally:
        stop(worker)
    assert "plain got 0" in intruder.stdout and "tls got" not in intruder.stdout, intruder.stdout
    assert all(r["peer"] == ENGINE for r in records(cluster.worker, "worker.rejected")[rejections:])
    assert len(records(cluster.worker, "worker.session.begin")) == sessions
    # On the cable only the gate listens; llama.cpp's RPC server is on loopback alone.
    assert listening == {f"{WORKER}:50052", "127.0.0.1:50053"}


def test_a_worker_that_goes_away_is_a_recorded_loss_and_the_engine_refuses_rather_than_dies(cluster: Cluster) -> None:
    worker = cluster.start_worker()
    server = subprocess.Popen(["ip", "netns", "exec", cluster.engine_ns, *ANTICLOUD, "--home",
                               str(cluster.engine.root), "serve", "--uds", str(cluster.engine.socket)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stops = len(records(cluster.engine, "engine.stop"))
    try:
        with wait_for_socket(cluster.engine, server) as client:
            ok = client.post("/api/generate", json={"model": "gemma3-270m", "prompt": PROMPT, "stream": False,
                                                    "options": {"temperature": 0, "num_predict": 4}})
            assert ok.status_code == 200, ok.text
            stop(worker)
            wait_for(lambda: records(cluster.worker, "worker.session.end"))
            refused = client.post("/api/generate", json={"model": "gemma3-270m", "prompt": PROMPT, "stream": False})
            assert refused.status_code == 503 and "was lost" in refused.text
            assert server.poll() is None  # refused, not aborted by llama.cpp
            lost = records(cluster.engine, "cluster.lost")[-1]
            assert lost["peer"] == f"{WORKER}:50052"
    finally:
        said = stop(server)
        if worker.poll() is None:
            stop(worker)
    assert len(records(cluster.engine, "engine.stop")) == stops + 1, said

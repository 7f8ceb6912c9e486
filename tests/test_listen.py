"""The server's sockets. The unix socket never replaces another file (the ledger least of all), a live
socket is left alone, a stale one is removed, and the socket is 0660 from its first instant. TCP is
loopback only, whether bound here or handed over (by systemd, or by serve --isolate --port)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from anticloud.api import listen
from anticloud.errors import EngineRefused
from anticloud.home import Home
from ledger import verify_file
from tests.waiting import wait_for_socket

ROOT = Path(__file__).resolve().parent.parent


def test_serve_refuses_to_replace_the_ledger_with_its_socket(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    before = home.ledger.read_bytes()
    # --isolate: inside the namespace the server would start, and it used to unlink the ledger to bind.
    serve = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate",
                            "--uds", str(home.ledger)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert serve.returncode == 4
    assert serve.stderr.strip().splitlines() == [
        f"anticloud: error: refusing to listen on {home.ledger}: it exists and is not a socket; "
        "choose another --uds path"]
    assert stat.S_ISREG(home.ledger.stat().st_mode) and home.ledger.read_bytes().startswith(before)
    last = json.loads(home.ledger.read_bytes().splitlines()[-1])
    assert last["kind"] == "engine.refused" and "not a socket" in last["data"]["reason"]
    assert verify_file(home.ledger).status == "intact"
    assert not (home.root / "anticloud.pid").exists()


def test_a_live_socket_is_refused_and_a_stale_one_removed(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(EngineRefused, match="a server is answering on it"):
            listen.check_path(path)
        assert stat.S_ISSOCK(path.lstat().st_mode)
    listen.check_path(path)  # closed: stale, removed
    assert not path.exists()


def test_the_socket_is_0660_from_birth_even_under_a_lax_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        listener = listen.bind_unix(tmp_path / "api.sock")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "api.sock").stat().st_mode) == 0o660
    (tmp_path / "api.sock").unlink()
    (tmp_path / "api.sock").write_text("put there since")
    listener.close()  # removes only the socket it made
    assert (tmp_path / "api.sock").read_text() == "put there since"


# -- TCP: bound here, or handed over to an engine that has no network of its own ------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_only_a_listening_stream_socket_on_loopback_is_adopted() -> None:
    good = listen.bind_tcp("127.0.0.1", 0)
    with listen.adopt(os.dup(good.fileno())) as adopted:
        assert adopted.getsockname() == good.getsockname()
    wildcard = socket.socket()
    wildcard.bind(("0.0.0.0", 0))  # what a careless unit file would hand over
    wildcard.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    idle = socket.socket()
    for sock, why in ((wildcard, "the appliance listens on loopback only"), (udp, "not a listening stream socket"),
                      (idle, "not a listening stream socket")):
        with pytest.raises(EngineRefused, match=why):
            listen.adopt(os.dup(sock.fileno()))
        sock.close()
    with pytest.raises(EngineRefused, match="is not a socket"):
        listen.adopt(os.open("/dev/null", os.O_RDONLY))
    good.close()


def test_sockets_handed_to_another_process_are_not_taken_and_the_variables_are_not_inherited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))  # systemd's, meant for another process
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen.handed() == []
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ


def test_a_busy_port_refuses_the_start_in_one_recorded_line(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    with listen.bind_tcp("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        serve = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate",
                                "--port", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert serve.returncode != 0 and serve.stderr.strip().splitlines()[-1] == \
        f"anticloud: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    last = json.loads(home.ledger.read_bytes().splitlines()[-1])
    assert last["kind"] == "engine.refused" and str(port) in last["data"]["reason"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None or shutil.which("unshare") is None,
                    reason="needs systemd-socket-activate and unshare")
def test_socket_activation_hands_the_host_loopback_to_an_engine_in_its_own_network(
        imported_home: Callable[..., Home]) -> None:
    """As systemd starts the unit: the socket bound in the host's network, the engine in a namespace
    of its own (PrivateNetwork=yes, here unshare), served on both; TCP callers need a token."""
    home = imported_home("tiny")
    _, secret = create_token(home, "alice")
    port = free_port()
    uds = home.root / "api.sock"
    engine = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", "ANTICLOUD_NAMESPACE=1", "--",
         "unshare", "--user", "--map-root-user", "--net", "--",
         sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--uds", str(uds)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as tcp:
            anonymous = tcp.get("/api/tags")  # the first connection starts the engine, as systemd does
            alice = tcp.get("/api/tags", headers={"Authorization": f"Bearer {secret}"})
            # A browser on the host reaches the console of the engine that has no network, through the same socket.
            page = tcp.get("/", headers={"Accept": "text/html"})
            signed = tcp.post("/console/session", json={"token": secret})
            status = tcp.get("/console/status", headers={"x-anticloud-session": signed.json()["key"]}).json()
        assert page.status_code == 200 and "anticloud" in page.text and "default-src 'none'" in \
            page.headers["content-security-policy"]
        assert signed.json()["person"] == "alice" and status["airgap"]["state"] == "isolated"
        assert status["namespace"] is True
        assert anonymous.status_code == 401 and "a bearer token is required over TCP" in anonymous.json()["error"]
        assert alice.status_code == 200 and alice.json()["models"][0]["name"] == "tiny:latest"
        wait_for_socket(uds, 30, engine)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(uds)), base_url="http://appliance") as local:
            assert local.get("/api/status").json()["namespace"] is True
    finally:
        engine.terminate()
        _, err = engine.communicate(timeout=60)
    assert engine.returncode == 0, err
    assert f"serving on unix socket {uds} and http://127.0.0.1:{port}" in err
    records = [json.loads(line) for line in home.ledger.read_bytes().splitlines()]
    start = next(r for r in records if r["kind"] == "engine.start")
    assert start["data"]["namespace"] is True and start["data"]["airgap"] == "isolated"
    assert any(r["kind"] == "request.rejected" and r["data"]["identity"] == "anonymous" for r in records)
    assert verify_file(home.ledger).status == "intact"


def create_token(home: Home, name: str) -> tuple[object, str]:
    from anticloud import tokens
    from ledger import LedgerWriter

    with LedgerWriter.open(home.ledger) as writer:
        return tokens.create(home, writer, name)

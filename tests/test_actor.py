"""Who acted: the rule (pure), the process's real uid across a user namespace, and every way a
request is identified on a real server (unix socket and TCP), each checked in the ledger."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from anticloud import actor, tokens
from anticloud.actor import acting, actor_of, current, local, of_identity, person
from anticloud.api.app import create_app
from anticloud.api.identity import PeerCredProtocol
from tests.test_api import GENERATE, Served, in_thread
from tests.test_api import served as served  # the fixture: a real server on a unix socket, fake engine
from tests.waiting import join

ROOT = Path(__file__).resolve().parent.parent
NAMES = {1000: "ann", 0: "root"}.get


# -- the rule -------------------------------------------------------------------------------------------


def test_an_actor_is_a_token_and_or_a_uid_with_its_name() -> None:
    assert actor_of(1000, "ann") == {"uid": 1000, "user": "ann"}
    assert actor_of(4242, None) == {"uid": 4242}, "no passwd entry: the uid alone"
    assert actor_of(None) == {}
    assert actor_of(1000, "ann", token="alice") == {"token": "alice", "uid": 1000, "user": "ann"}
    assert type(actor_of(True)["uid"]) is int, "canonical JSON: an integer, never a bool"


@pytest.mark.parametrize(("identity", "peer", "expected"), [
    ("token:alice", 1000, {"token": "alice", "uid": 1000, "user": "ann"}),  # a token on the socket
    ("token:alice", None, {"token": "alice"}),  # a token over TCP
    ("uid:1000", 1000, {"uid": 1000, "user": "ann"}),  # the socket peer alone
    ("uid:4242", 4242, {"uid": 4242}),  # a peer with no passwd entry
    ("anonymous", None, {}),  # refused over TCP before it was identified
])
def test_a_requests_actor_comes_from_its_identity_and_the_socket_peer(identity: str, peer: int | None,
                                                                      expected: dict[str, Any]) -> None:
    assert of_identity(identity, peer, NAMES) == expected


@pytest.mark.parametrize(("data", "expected"), [
    ({"actor": {"token": "alice", "uid": 1000, "user": "ann"}}, "alice"),
    ({"actor": {"uid": 1000, "user": "ann"}}, "ann"),
    ({"actor": {"uid": 4242}}, "uid:4242"),
    ({"actor": {}}, "anonymous"),
    ({"actor": {"uid": 5}, "client": "token:bob"}, "uid:5"),  # the actor wins over the old member
    ({"client": "token:bob"}, "bob"),  # an inference.begin written before actors were recorded
    ({"client": "uid:1000"}, "uid:1000"),
    ({"identity": "anonymous"}, "anonymous"),  # a request.rejected written before
    ({"key": "engine.keep_alive"}, None),  # an old administrative record: nobody is named
])
def test_the_person_an_auditor_reads(data: dict[str, Any], expected: str | None) -> None:
    assert person(data) == expected


def test_the_actor_in_force_is_the_processes_unless_a_context_says_otherwise() -> None:
    assert current() == local() == {"uid": os.getuid(), **({"user": u} if (u := actor.user_name(os.getuid())) else {})}
    seen: list[dict[str, Any]] = []
    with acting({"token": "alice"}):
        assert actor.stamp() == {"actor": {"token": "alice"}}
        with acting({}):
            assert current() == {}, "anonymous is an actor, not the absence of one"
        worker = threading.Thread(target=lambda: seen.append(current()))  # a plain thread: not the request's
        worker.start()
        join(worker, 10, "the worker")
    assert current() == local() and seen == [local()]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_inside_a_user_namespace_the_process_is_its_real_uid() -> None:
    # Under --isolate the engine reads its own uid as the one its namespace maps the operator to;
    # the record must name the operator's real uid. Here: mapped to 4242 inside.
    script = "import os, json; from anticloud.actor import local; print(os.getuid(), json.dumps(local()))"
    run = subprocess.run(["unshare", "--user", "--map-user=4242", sys.executable, "-c", script], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if run.returncode and "unshare" in run.stderr:
        pytest.skip(f"user namespaces are unavailable here: {run.stderr.strip()}")
    inside, found = run.stdout.split(" ", 1)
    assert int(inside) == 4242 != os.getuid()
    assert json.loads(found) == local()


# -- on a real server -----------------------------------------------------------------------------------


def test_a_token_on_the_socket_is_recorded_with_its_peer_on_every_record_it_causes(served: Served) -> None:
    _, secret = tokens.create(served.home, served.app.writer, "alice")
    assert served.last("token.create")["actor"] == local(), "the operator made it"
    before = len(served.records())
    with served.client(secret) as c:
        assert c.post("/api/generate", json=GENERATE).status_code == 200
    caused = served.records()[before:]
    assert [r["kind"] for r in caused] == ["model.load", "inference.begin", "inference.end"]
    assert all(r["data"]["actor"] == {"token": "alice", **local()} for r in caused), caused
    assert caused[1]["data"]["client"] == "token:alice", "the older member is kept"


def test_a_refused_token_on_the_socket_is_recorded_under_its_peer(served: Served) -> None:
    with served.client("not-a-token") as c:
        assert c.post("/api/generate", json=GENERATE).status_code == 401
    rejected = served.last("request.rejected")
    assert rejected["identity"] == f"uid:{os.getuid()}" and rejected["actor"] == local()


def test_over_tcp_a_token_is_its_person_and_a_refusal_is_anonymous(served: Served) -> None:
    server = uvicorn.Server(uvicorn.Config(create_app(served.app), host="127.0.0.1", port=0, http=PeerCredProtocol,
                                           log_level="warning"))
    with in_thread(server):
        port = server.servers[0].sockets[0].getsockname()[1]
        _, secret = tokens.create(served.home, served.app.writer, "bob")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.post("/api/generate", json=GENERATE).status_code == 401
            assert served.last("request.rejected")["actor"] == {}
            reply = c.post("/api/generate", json=GENERATE, headers={"authorization": f"Bearer {secret}"})
    assert reply.status_code == 200
    assert served.last("inference.begin")["actor"] == served.last("inference.end")["actor"] == {"token": "bob"}


ANOTHER_PERSON = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    body = b'{"model": "tiny", "prompt": "one two three", "stream": false}'
    s.sendall(b"POST /api/generate HTTP/1.1\\r\\nhost: a\\r\\ncontent-type: application/json\\r\\n"
              b"content-length: %d\\r\\nconnection: close\\r\\n\\r\\n" % len(body) + body)
    print(s.recv(100).split(b"\\r\\n")[0].decode())
""")


@pytest.fixture
def open_socket(served: Served) -> Iterator[Path]:
    """The served socket, reachable by another uid (the test's own tmp directory is private)."""
    place = Path(f"/tmp/anticloud-actor-{os.getpid()}")
    place.mkdir(mode=0o755)
    sock = place / "api.sock"
    server = uvicorn.Server(uvicorn.Config(create_app(served.app), uds=str(sock), http=PeerCredProtocol,
                                           log_level="warning"))
    try:
        with in_thread(server):
            os.chmod(sock, 0o777)
            yield sock
    finally:
        shutil.rmtree(place, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_persons_request_is_recorded_as_theirs(served: Served, open_socket: Path) -> None:
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I",
                          "-c", ANOTHER_PERSON, str(open_socket)], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "HTTP/1.1 200 OK", run.stderr
    begin = served.last("inference.begin")
    assert begin["client"] == "uid:65534"
    assert begin["actor"] == actor_of(65534, actor.user_name(65534)) != local()

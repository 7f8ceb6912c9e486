"""A unix socket peer's real uid: the namespace rule, the credential oracle over real sockets, and the
API refusing (recorded) rather than guessing when the uid cannot be established."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from anticloud.api.app import create_app
from anticloud.api.identity import _WithPeer
from anticloud.config import set_value
from anticloud.errors import IdentityUnavailable
from anticloud.home import Home
from anticloud.peercred import CredentialOracle, LocalCredentials, answer_oracle_questions, translate
from anticloud.runtime import Appliance
from ledger import LedgerWriter
from tests.fake_engine import FakeModel  # noqa: F401 - registers the "fake" engine
from tests.test_api import ISOLATED


def test_translate_one_hop_out_of_a_user_namespace() -> None:
    assert translate(0, "         0       1000          1\n") == 1000
    assert translate(65534, "         0       1000          1\n") is None  # unmapped: not an identity
    assert translate(1234, "         0          0 4294967295\n") == 1234  # the initial namespace
    assert translate(7, "0 1000 1\n5 200000 65536\n") == 200002


@pytest.fixture
def connection() -> Iterator[socket.socket]:
    """The server's end of a real unix socket connection from this process."""
    listener, client = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    listener.bind("\0anticloud-test-" + os.urandom(6).hex())
    listener.listen()
    client.connect(listener.getsockname())
    conn, _ = listener.accept()
    try:
        yield conn
    finally:
        for s in (conn, client, listener):
            s.close()


def test_local_credentials_translate_and_refuse_the_unmapped(connection: socket.socket) -> None:
    assert LocalCredentials().uid_of(connection) == os.getuid()
    assert LocalCredentials(f"{os.getuid()} 4242 1\n").uid_of(connection) == 4242
    with pytest.raises(IdentityUnavailable, match="no mapping outside"):
        LocalCredentials("100000 100000 10\n").uid_of(connection)


def test_the_oracle_answers_with_the_peer_credentials_it_reads(connection: socket.socket) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=answer_oracle_questions, args=(ours,), daemon=True)
    thread.start()
    oracle = CredentialOracle(theirs)
    assert oracle.uid_of(connection) == os.getuid()
    # Anything but a unix socket: "unknown".
    with socket.socket(socket.AF_INET) as not_unix, pytest.raises(IdentityUnavailable, match="could not read it"):
        oracle.uid_of(not_unix)
    theirs.close()
    thread.join(10)
    assert not thread.is_alive(), "the oracle ends when the engine closes its end"
    ours.close()


def test_without_its_oracle_the_engine_knows_no_uid_and_stays_so(connection: socket.socket) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.close()  # the launcher is gone
    oracle = CredentialOracle(theirs)
    with pytest.raises(IdentityUnavailable, match="did not answer"):
        oracle.uid_of(connection)
    with pytest.raises(IdentityUnavailable, match="stopped answering earlier"):
        oracle.uid_of(connection)


@pytest.fixture
def appliance(imported_home: Callable[..., Home]) -> Iterator[Appliance]:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        set_value(home, writer, "inference.default_model", "tiny")
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        yield app
        app.stop()


def last(home: Home) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(home.ledger.read_bytes().splitlines()[-1])
    return record


def test_a_peer_whose_uid_is_unknown_is_refused_and_recorded_never_guessed(appliance: Appliance) -> None:
    problem = "the caller's uid cannot be established: the credential oracle did not answer"
    with TestClient(_WithPeer(create_app(appliance), None, problem)) as client:
        reply = client.post("/api/generate", json={"prompt": "one", "stream": False})
    assert reply.status_code == 503 and reply.json() == {"error": problem}
    record = last(appliance.home)
    assert record["kind"] == "request.rejected"
    assert record["data"] == {"identity": "anonymous", "path": "/api/generate", "status": 503, "reason": problem,
                              "actor": {}}

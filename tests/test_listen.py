"""The server's unix socket: it never replaces another file (the ledger least of all), a live socket is
left alone, a stale one is removed, and the socket is 0660 from its first instant."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from anticloud.api import listen
from anticloud.errors import EngineRefused
from anticloud.home import Home
from ledger import verify_file

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

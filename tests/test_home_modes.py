"""A home (or a file in it) that someone other than its owner could change is refused, as ssh's
StrictModes does: by every command, and by the stores the server re-reads while serving."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from anticloud import tokens
from anticloud.api.app import create_app
from anticloud.cli import cli
from anticloud.config import set_value
from anticloud.errors import UnsafeHomeError
from anticloud.home import Home, check_home, problem
from anticloud.runtime import Appliance
from anticloud.trust import TrustStore
from ledger import LedgerWriter
from tests.fake_engine import FakeModel  # noqa: F401 - registers the "fake" engine
from tests.test_api import ISOLATED


def cli_run(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("name", ["tokens.json", "trust.json", "config.toml", "ledger.jsonl"])
def test_a_file_others_can_write_is_refused_with_the_fix(imported_home: Callable[..., Home], name: str) -> None:
    home = imported_home("tiny")
    for args in (("tokens", "create", "alice"), ("config", "set", "engine.keep_alive", "301")):
        assert cli_run(home, *args)[0] == 0
    path = home.root / name
    before = home.ledger.read_bytes()
    path.chmod(0o664)
    code, out = cli_run(home, "ledger", "tail")
    assert code == 2
    assert out.strip() == (f"anticloud: error: {path} is writable by group or others (mode 0664); refusing to use it "
                           f"(fix: chmod go-w {path})")
    assert home.ledger.read_bytes() == before
    path.chmod(0o600)
    assert cli_run(home, "ledger", "tail")[0] == 0


def test_stores_refuse_a_swapped_file_when_they_read_it(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    assert cli_run(home, "tokens", "create", "alice")[0] == 0
    for path in (home.root / "tokens.json", TrustStore.path(home)):
        os.chown(path, 1234, 1234)  # another user's file, put in place of ours
    with pytest.raises(UnsafeHomeError, match=r"tokens.json is owned by uid 1234, not by you \(uid 0\) or root"):
        tokens.load(home)
    with pytest.raises(UnsafeHomeError, match=r"trust\.json is owned by uid 1234"):
        TrustStore.load(home)
    (home.root / "tokens.json").chmod(0o606)
    os.chown(home.root / "tokens.json", 0, 0)
    with pytest.raises(UnsafeHomeError, match="writable by group or others"):
        tokens.load(home)


def test_a_home_or_a_directory_above_it_that_others_can_write_is_refused(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    home.root.chmod(0o777)
    code, out = cli_run(home, "models", "list")
    assert code == 2 and f"{home.root} is writable by group or others (mode 0777)" in out
    home.root.chmod(0o700)
    home.root.parent.chmod(0o775)
    with pytest.raises(UnsafeHomeError, match=f"{home.root.parent} is writable by group or others"):
        check_home(home)
    home.root.parent.chmod(0o1777)  # sticky and world-writable: exempt only when it is root's, like /tmp
    os.chown(home.root.parent, 1234, 1234)
    with pytest.raises(UnsafeHomeError, match="owned by uid 1234"):
        check_home(home)
    os.chown(home.root.parent, 0, 0)
    check_home(home)  # root's sticky directory, like /tmp
    home.root.parent.chmod(0o755)


def test_the_private_key_must_be_0600() -> None:
    st = os.stat_result((stat.S_IFREG | 0o640, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    found = problem(Path("/h/keys/appliance.key"), st, 0, private=True)
    assert found is not None and "must be 0600" in found
    assert problem(Path("/h/tokens.json"), st, 0) is None


def test_above_the_home_an_unmapped_owner_is_the_launchers_to_check() -> None:
    st = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 1, 65534, 65534, 0, 0, 0, 0))
    assert problem(Path("/"), st, 0, above=True, unmapped=65534) is None
    assert problem(Path("/home"), st, 0, above=True, unmapped=None) is not None
    assert problem(Path("/h"), st, 0, unmapped=65534) is not None  # the home itself must show as yours


def test_a_sticky_tmp_shown_as_unmapped_inside_the_namespace_is_the_launchers_to_check() -> None:
    tmp = os.stat_result((stat.S_IFDIR | stat.S_ISVTX | 0o777, 0, 0, 1, 65534, 65534, 0, 0, 0, 0))
    assert problem(Path("/tmp"), tmp, 1000, above=True, unmapped=65534) is None  # --isolate, as uid 1000
    assert problem(Path("/tmp"), tmp, 1000, above=True, unmapped=None) is not None  # outside: 65534 is nobody
    plain = os.stat_result((stat.S_IFDIR | 0o777, 0, 0, 1, 65534, 65534, 0, 0, 0, 0))
    assert problem(Path("/tmp"), plain, 1000, above=True, unmapped=65534) is not None  # not sticky: refused


@pytest.fixture
def appliance(imported_home: Callable[..., Home]) -> Iterator[Appliance]:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        yield app
        app.stop()


def test_a_tokens_file_others_could_write_is_refused_while_serving(appliance: Appliance) -> None:
    _, secret = tokens.create(appliance.home, appliance.writer, "alice")
    auth = {"authorization": f"Bearer {secret}"}
    with TestClient(create_app(appliance), base_url="http://127.0.0.1") as client:  # a loopback Host, as over TCP
        assert client.get("/api/tags", headers=auth).status_code == 200
        (appliance.home.root / "tokens.json").chmod(0o666)  # anyone could have put their own token in
        reply = client.get("/api/tags", headers=auth)
    assert reply.status_code == 503 and "tokens.json is writable by group or others" in reply.json()["error"]
    assert json.loads(appliance.home.ledger.read_bytes().splitlines()[-1])["kind"] == "request.rejected"

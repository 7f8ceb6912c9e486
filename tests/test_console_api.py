"""The web console's server side, over a real uvicorn on loopback TCP with the fake engine:
sign-in for a cookie, what the cookie may do, its ends (each recorded), receipts, status, and the
Host and Origin rules that keep a misled browser out."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from anticloud import tokens
from anticloud.api import console as console_module
from anticloud.api.app import create_app
from anticloud.api.identity import PeerCredProtocol
from anticloud.api.origin import is_loopback_name, refusal
from anticloud.api.sessions import Sessions
from anticloud.config import set_value
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriter, verify_file
from tests.test_api import ISOLATED, fake_home, in_thread


@dataclass
class Console:
    home: Home
    app: Appliance
    base: str
    secret: str

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30, headers=headers)

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in map(json.loads, self.home.ledger.read_bytes().splitlines()) if r["kind"] == kind]

    @contextlib.contextmanager
    def signed_in(self) -> Iterator[httpx.Client]:
        with self.client() as client:
            sign_in(client, self.secret)
            yield client


def sign_in(client: httpx.Client, secret: str) -> httpx.Response:
    """What the page does: exchange the token, then send the session's key beside the cookie."""
    signed = client.post("/console/session", json={"token": secret})
    assert signed.status_code == 200, signed.text
    client.headers["x-anticloud-session"] = signed.json()["key"]
    return signed


@pytest.fixture
def console(imported_home: Callable[..., Home], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "index.html").write_text("<!doctype html><title>anticloud</title>")
    (assets / "console.js").write_text("'use strict';")
    monkeypatch.setattr(console_module, "ASSETS", assets)
    home = fake_home(imported_home)
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "api.session_idle_timeout", "1m")
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        _, secret = tokens.create(home, writer, "alice")
        server = uvicorn.Server(uvicorn.Config(create_app(app, 0.2), host="127.0.0.1", port=0,
                                               http=PeerCredProtocol, log_level="warning"))
        with in_thread(server):
            port = server.servers[0].sockets[0].getsockname()[1]
            yield Console(home, app, f"http://127.0.0.1:{port}", secret)
        app.stop()


def test_a_browser_gets_the_page_with_a_strict_policy_and_other_clients_keep_ollamas_answer(console: Console) -> None:
    with console.client() as c:
        page = c.get("/", headers={"accept": "text/html,application/xhtml+xml"})
        probe = c.get("/")
        script = c.get("/console/console.js")
        missing = c.get("/console/nothing.js")
        sneaky = c.get("/console/..%2Fconfig.toml")
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe" not in csp and page.headers["x-content-type-options"] == "nosniff"
    assert probe.text == "Ollama is running"
    assert script.status_code == 200 and script.headers["content-security-policy"] == csp
    assert missing.status_code == 404 and sneaky.status_code == 404


def test_signing_in_exchanges_the_token_for_an_httponly_strict_cookie_and_is_recorded(console: Console) -> None:
    with console.client() as c:
        signed = sign_in(c, console.secret)
        cookie = signed.headers["set-cookie"]
        assert {k: v for k, v in signed.json().items() if k != "key"} == {"person": "alice", "idle_timeout": 60}
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and console.secret not in cookie
        assert c.get("/console/session").json()["person"] == "alice"
        tags = c.get("/api/tags")  # the cookie stands for alice on the API itself
        answer = c.post("/api/generate", json={"model": "tiny", "prompt": "one two", "stream": False})
    assert tags.status_code == 200 and answer.status_code == 200
    [start] = console.records("session.start")
    assert start["data"]["person"] == "alice" and start["data"]["actor"]["token"] == "alice"
    assert console.secret not in console.home.ledger.read_text()
    begin = console.records("inference.begin")[-1]
    assert begin["data"]["actor"]["token"] == "alice" and begin["data"]["client"] == "token:alice"


def test_a_wrong_token_is_refused_and_recorded_and_gives_no_cookie(console: Console) -> None:
    with console.client() as c:
        wrong = c.post("/console/session", json={"token": "act_" + "x" * 40})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert c.get("/console/session").json() == {"person": None, "reason": "not signed in"}
        assert c.get("/api/tags").status_code == 401
    console.app.stop()
    assert any(r["data"]["path"] == "/console/session" and r["data"]["status"] == 401
               for r in console.records("request.rejected"))


def test_lock_ends_the_session_at_once_and_is_recorded(console: Console) -> None:
    with console.signed_in() as c:
        ended = c.post("/console/session/end", json={"reason": "locked"})
        assert ended.status_code == 200 and ended.json() == {"ended": True}
        assert c.get("/api/tags").status_code == 401
    [end] = console.records("session.end")
    assert end["data"]["reason"] == "locked" and end["data"]["person"] == "alice"


def test_revoking_the_token_ends_its_console_session(console: Console) -> None:
    with console.signed_in() as c:
        tokens.revoke(console.home, console.app.writer, "alice")
        refused = c.get("/api/tags")
    assert refused.status_code == 401 and "token revoked" in refused.json()["error"]
    assert console.records("session.end")[-1]["data"]["reason"] == "token revoked"


def test_an_idle_session_is_over_and_its_end_recorded() -> None:
    now = [0.0]
    sessions = Sessions(lambda: 60.0, lambda: now[0])
    value, key, session = sessions.start("alice", "abc")
    now[0] = 59.0
    assert sessions.use(value, key, lambda s: True) == (session, None)
    now[0] = 119.5
    assert sessions.use(value, key, lambda s: True) == (session, "idle")
    assert sessions.use(value, key, lambda s: True) == (None, None)
    other, _, _ = sessions.start("bob", "def")
    now[0] = 500.0
    assert [s.person for s in sessions.sweep()] == ["bob"] and sessions.all() == []
    assert other not in repr(sessions.all())


@pytest.mark.parametrize(("headers", "reason"), [
    ({"origin": "http://evil.example"}, "origin"),
    ({"origin": "null"}, "origin"),
    ({"host": "evil.example"}, "not a loopback name"),
    ({"host": "anticloud.attacker.example:11434"}, "not a loopback name"),
])
def test_a_foreign_origin_or_a_rebinding_host_is_refused_before_any_route_and_recorded(
        console: Console, headers: dict[str, str], reason: str) -> None:
    with console.client(**headers) as c:
        answers = [c.post("/console/session", json={"token": console.secret}),
                   c.get("/api/tags", headers={"authorization": f"Bearer {console.secret}"}),
                   c.get("/", headers={"accept": "text/html"})]
    for refused in answers:
        assert refused.status_code == 403 and reason in refused.json()["error"]
    assert not console.records("session.start")
    console.app.stop()
    assert sum(r["data"]["status"] == 403 for r in console.records("request.rejected")) >= 1


def test_the_pages_own_origin_is_welcome(console: Console) -> None:
    with console.client(origin=console.base) as c:
        sign_in(c, console.secret)
        assert c.get("/api/tags").status_code == 200


def test_the_rules_for_host_and_origin() -> None:
    assert is_loopback_name("127.0.0.1:11434") and is_loopback_name("localhost") and is_loopback_name("[::1]:80")
    assert is_loopback_name("127.3.4.5") and not is_loopback_name("10.0.0.1") and not is_loopback_name("evil")
    assert refusal("127.0.0.1:8", None, tcp=True) is None
    assert refusal("127.0.0.1:8", "http://127.0.0.1:8", tcp=True) is None
    assert refusal("127.0.0.1:8", "http://localhost:8", tcp=True) is not None  # another origin, even local
    assert refusal("appliance", None, tcp=False) is None  # the unix socket: no browser reaches it
    assert refusal("appliance", "http://evil.example", tcp=False) is not None


def test_a_receipt_names_the_records_of_ones_own_inference_only(console: Console) -> None:
    with console.signed_in() as c:
        answer = c.post("/api/generate", json={"model": "tiny", "prompt": "one two three", "stream": False})
        ident = answer.headers["x-anticloud-inference"]
        receipt = c.get(f"/console/receipt/{ident}").json()
    begin = next(r for r in console.records("inference.begin") if r["data"]["id"] == ident)
    end = next(r for r in console.records("inference.end") if r["data"]["id"] == ident)
    assert receipt["begin"]["seq"] == begin["seq"] and receipt["end"]["seq"] == end["seq"]
    assert receipt["begin"]["hash"] == begin["hash"] and receipt["records"] == [begin, end]
    assert receipt["manifest"] == begin["data"]["manifest"] and receipt["model"] == "tiny"
    assert receipt["end"]["completion_tokens"] == end["data"]["completion_tokens"] == 3
    assert receipt["person"] == "alice" and receipt["begin"]["airgap"] == "isolated"
    _, bob = tokens.create(console.home, console.app.writer, "bob")
    with console.client() as c:
        sign_in(c, bob)
        assert c.get(f"/console/receipt/{ident}").status_code == 404  # alice's, not bob's
        assert c.get("/console/receipt/0000000000000000").status_code == 404


def test_status_and_models_show_the_air_gap_the_ledgers_verdict_and_each_models_signer(console: Console) -> None:
    with console.signed_in() as c:
        status = c.get("/console/status").json()
        models = c.get("/console/models").json()["models"]
    assert status["airgap"]["state"] == "isolated" and status["ledger"]["verified"]["verdict"] == "intact"
    assert status["ledger"]["seq"] >= status["ledger"]["verified"]["records"] - 1
    assert verify_file(console.home.ledger).status == "intact"
    [tiny] = models
    assert tiny["name"] == "tiny" and tiny["manifest"].startswith("sha3-256:")
    assert tiny["signers"] and tiny["signers"][0]["name"] == "tests"


def test_a_receipt_offers_a_proof_once_a_checkpoint_signs_it_and_the_proof_verifies(
        console: Console, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from anticloud.cli import cli
    from anticloud.identity import appliance_vkey, load_identity
    from ledger import append_checkpoint

    with console.signed_in() as c:
        ident = c.post("/api/generate", json={"model": "tiny", "prompt": "one two", "stream": False}).headers[
            "x-anticloud-inference"]
        assert c.get(f"/console/receipt/{ident}").json()["proof"] is None
        assert c.get(f"/console/proof/{ident}").status_code == 404  # no signed checkpoint holds it yet
        append_checkpoint(console.app.writer, load_identity(console.home))
        receipt = c.get(f"/console/receipt/{ident}").json()
        download = c.get(receipt["proof"]["url"])
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    proof = tmp_path / "r.tlog-proof"
    proof.write_bytes(download.content)
    checked = CliRunner().invoke(cli, ["verify", "proof", str(proof), "--vkey", appliance_vkey(console.home)])
    assert checked.exit_code == 0, checked.output
    begin = next(r for r in console.records("inference.begin") if r["data"]["id"] == ident)
    assert str(begin["seq"]) in checked.output
    assert console.records("ledger.proof")[-1]["data"]["seq"] == begin["seq"]


def test_the_cookie_alone_stands_for_nobody_so_another_port_sent_it_cannot_use_it(console: Console) -> None:
    """Browsers send a loopback cookie to every port; the session's key, held by the page, is not sent."""
    with console.signed_in() as c:
        cookie = c.cookies["anticloud_session"]
        key = c.headers["x-anticloud-session"]
    with console.client() as thief:
        thief.cookies.set("anticloud_session", cookie)
        assert thief.get("/api/tags").status_code == 401
        assert thief.get("/console/session").json()["person"] is None
        thief.headers["x-anticloud-session"] = "a" + key[1:]
        assert thief.get("/api/tags").status_code == 401  # another key: no session
        thief.headers["x-anticloud-session"] = key
        assert thief.get("/api/tags").status_code == 200  # both secrets: the session itself


def test_a_session_ended_while_the_ledger_fails_is_over_at_once_and_its_end_recorded_later(
        console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger import LedgerWriteError
    from tests.waiting import poll

    real = type(console.app.writer).append

    def failing(writer: LedgerWriter, kind: str, data: dict[str, Any]) -> Any:
        if kind == "session.end":
            raise LedgerWriteError(console.home.ledger, "No space left on device")
        return real(writer, kind, data)

    with console.signed_in() as c:
        monkeypatch.setattr(type(console.app.writer), "append", failing)
        assert c.post("/console/session/end", json={"reason": "locked"}).status_code == 200
        assert not console.records("session.end")
        monkeypatch.undo()
        assert c.get("/api/tags").status_code == 401  # over at once, recorded or not
    poll(lambda: console.records("session.end"), 10, "the end recorded at a later sweep")
    assert console.records("session.end")[-1]["data"]["reason"] == "locked"

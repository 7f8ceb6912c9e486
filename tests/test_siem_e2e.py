"""Export a real ledger, written by the appliance's CLI and its HTTP API, in every SIEM format,
and check every line: OCSF against the vendored 1.8.0 JSON Schema, CEF and syslog against their
grammars, CSV through the stdlib reader; with hostile content in what clients control."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.home import Home
from anticloud.runtime import Appliance
from anticloud.siem import FORMATS, export
from anticloud.siem.csvrows import COLUMNS, unguard
from ledger import LedgerWriter, records_forward, verify_file
from tests.conftest import operator_imports_real_model
from tests.fake_engine import FakeModel  # registers the "fake" engine
from tests.gguf_builder import build
from tests.siem_grammar import cef_fields, csv_rows, ocsf_errors, syslog_fields
from tests.test_api import CONNECTED, ISOLATED, running
from tests.test_siem import cef_kept, one_line

HOSTILE_PATH = "/api/x%0Ay%0D%0Az|a=b]c%22d%5Ce%E2%80%A8caf%C3%A9" + "L" * 3000
HOSTILE_PROMPT = '=1+1\r\nline,"two"|a=b]\\\u2028 é ☕\x00 '
HOSTILE_MODEL = "=cmd|' /C calc'!A0 ]\"\\\n"


def cli_ok(home: Home, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def appliance_ledger(tmp_path: Path, make_client: Callable[..., Any]) -> Home:
    """A ledger as an operator and clients make one: init, keys, a signed import, a token, settings
    through the CLI; requests, refusals with hostile content and a breach through the API."""
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(build())
    home = operator_imports_real_model(tmp_path, weights, name="tiny")
    secret = cli_ok(home, "tokens", "create", "alice@example.org").strip()
    cli_ok(home, "config", "set", "engine.name", "fake")
    cli_ok(home, "config", "set", "inference.default_model", "tiny")
    cli_ok(home, "config", "set", "inference.record_content", "plaintext")  # prompts in the ledger, as sent
    FakeModel.loads, FakeModel.unloads, FakeModel.generations, FakeModel.gate = [], [], 0, None
    with LedgerWriter.open(home.ledger) as writer:
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        sock = tmp_path / "api.sock"
        with running(app, sock):
            with make_client(sock) as c:  # by the socket peer's uid
                assert c.post("/api/generate", json={"model": "tiny", "prompt": "one two", "stream": False}).is_success
                assert c.post("/api/generate", json={"model": HOSTILE_MODEL, "prompt": "x"}).status_code == 404
                assert c.get(HOSTILE_PATH).status_code == 404
            with make_client(sock, secret) as c:  # by a token
                assert c.post("/v1/completions", json={"model": "tiny", "prompt": HOSTILE_PROMPT}).is_success
            with make_client(sock, "not-a-token") as c:
                assert c.post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code == 401
            app.observe(CONNECTED)
            with make_client(sock) as c:
                assert c.post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code == 503
            app.observe(ISOLATED)
    cli_ok(home, "tokens", "revoke", "alice@example.org")
    return home


def test_a_real_ledger_exports_in_every_format_and_every_line_checks(tmp_path: Path) -> None:
    import httpx

    def client(sock: Path, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://appliance",
                            headers=headers, timeout=30)

    home = appliance_ledger(tmp_path, client)
    assert verify_file(home.ledger).status == "intact"
    ledger_lines = home.ledger.read_text().split("\n")[:-1]
    records = [json.loads(line) for line in ledger_lines]
    kinds = {r["kind"] for r in records}
    assert {"inference.begin", "inference.end", "request.rejected", "airgap.breach", "airgap.restored",
            "token.create", "token.revoke", "config.change", "model.import", "engine.start"} <= kinds

    out: dict[str, list[str]] = {}
    for fmt in FORMATS:
        path = tmp_path / f"export.{fmt}"
        with path.open("wb") as handle:
            assert export(records_forward(home.ledger), fmt, handle, host="appliance-1") == len(records)
        text = path.read_bytes().decode()
        assert text.endswith("\n") and not any(c in text for c in "\x85\u2028\u2029" if fmt != "csv")
        out[fmt] = text.removesuffix("\r\n" if fmt == "csv" else "\n").split("\r\n" if fmt == "csv" else "\n")

    # OCSF: one JSON event a line, each valid against the schema, each carrying its record whole.
    events = [json.loads(line) for line in out["ocsf"]]
    for event, line, rec in zip(events, ledger_lines, records, strict=True):
        assert ocsf_errors(event) == [], (rec["kind"], ocsf_errors(event))
        assert event["raw_data"] == line and event["metadata"]["uid"] == rec["hash"]
        assert event["metadata"]["sequence"] == rec["seq"] and event["class_uid"] == 6003
    by_kind = {e["api"]["operation"]: e for e in events}
    assert by_kind["airgap.breach"]["severity_id"] == 4 and by_kind["airgap.restored"]["severity_id"] == 1
    ends = [e for e in events if e["api"]["operation"] == "inference.end"]
    assert [e["ai_model"]["name"] for e in ends] == ["tiny", "tiny"], "an end names its begin's model"
    assert [e["actor"]["user"]["name"] for e in ends][1] == "alice@example.org"
    assert all(e["message_context"]["total_tokens"] > 0 for e in ends)
    rejected = [e for e in events if e["api"]["operation"] == "request.rejected"]
    assert sorted(e["status_code"] for e in rejected) == ["401", "404", "404", "503"]

    # CEF and syslog: every line in its grammar, naming its record.
    for cef, syslog, rec in zip(out["cef"], out["syslog"], records, strict=True):
        fields = cef_fields(cef)
        assert fields["signature"] == rec["kind"] and fields["ext"]["cs1"] == rec["hash"]
        assert fields["ext"]["externalId"] == str(rec["seq"]) and fields["ext"]["dvchost"] == "appliance-1"
        parsed = syslog_fields(syslog)
        assert parsed["params"]["hash"] == rec["hash"] and parsed["timestamp"] == rec["ts"]
        assert parsed["hostname"] == "appliance-1" and parsed["msgid"] == rec["kind"][:32]
    # What clients sent (a model name, a path) reached the ledger hostile, and came out escaped.
    hostile = [(cef, syslog, rec["data"]) for cef, syslog, rec in zip(out["cef"], out["syslog"], records, strict=True)
               if rec["kind"] == "request.rejected"]
    assert any('"' in data["reason"] and "|" in data["reason"] and "]" in data["reason"] for _, _, data in hostile)
    assert any("\u2028" in data["path"] and len(data["path"]) > 1023 for _, _, data in hostile)
    for cef, syslog, data in hostile:
        assert cef_fields(cef)["ext"]["reason"] == cef_kept(data["reason"])
        assert cef_fields(cef)["ext"]["request"] == cef_kept(data["path"])
        assert syslog_fields(syslog)["params"]["reason"] == one_line(data["reason"])

    # CSV: the stdlib reader gives back every record.
    rows = csv_rows("\r\n".join(out["csv"]) + "\r\n")
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(records) + 1
    for cells, rec in zip(rows[1:], records, strict=True):
        row = dict(zip(COLUMNS, (unguard(c) for c in cells), strict=True))
        assert json.loads(row["data"]) == rec["data"] and row["hash"] == rec["hash"] and row["ts"] == rec["ts"]
    prompts = [json.loads(unguard(r[-1])).get("prompt") for r in rows[1:]]
    assert HOSTILE_PROMPT in prompts, "a prompt with line breaks, quotes and commas comes back whole"
    people = {dict(zip(COLUMNS, r, strict=True))["person"] for r in rows[1:]}
    assert {"alice@example.org", pwd.getpwuid(os.getuid()).pw_name} <= people  # a token's person; the socket peer's
    models = [dict(zip(COLUMNS, r, strict=True))["model"] for r in rows[1:]]
    assert "tiny" in models

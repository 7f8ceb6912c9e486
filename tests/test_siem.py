"""Each SIEM format on its own, with hostile field content: every line keeps its format's grammar
and gives back what the record said (or its documented one-line form), and the severity table is
applied the same way everywhere."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anticloud.actor import person
from anticloud.errors import AnticloudError, ExportError
from anticloud.siem import FORMATS, SEVERITY, Correlator, export, to_cef, to_ocsf, to_syslog
from anticloud.siem.csvrows import COLUMNS, guard, unguard
from anticloud.siem.event import outcome_of
from ledger import canonical_bytes
from ledger.record import GENESIS_PREV, Record, seal
from tests.siem_grammar import cef_fields, csv_rows, ocsf_errors, syslog_fields

TS = "2026-01-15T09:00:01.250000Z"
HOSTILE = [
    "plain",
    "pipe|and\\backslash",
    "equals=sign and ]bracket[ and \"quotes\"",
    "line\nbreak\r\nand\rcarriage",
    "nul\x00 bell\x07 del\x7f nel\x85 ls\u2028 ps\u2029 tab\t",
    "café ☕ 名前 \U0001f600",
    "=HYPERLINK(\"http://example.invalid\")",
    "-2+3", "+1", "@SUM(A1)", "'quoted", "\\", "]", "\"", "=",
    "x" * 5000,
]


def record(kind: str, data: dict[str, Any], seq: int = 1) -> Record:
    return seal(seq, kind, data, GENESIS_PREV, TS)[0]


def begin(person: str, model: str = "tiny", ident: str = "0123456789abcdef") -> Record:
    return record("inference.begin", {"id": ident, "model": model, "manifest": "sha3-256:" + "ab" * 32,
                                      "actor": {"token": person}, "airgap": "isolated"})


def one_line(text: str, limit: int = 1023) -> str:
    """What CEF headers and syslog values promise to keep of ``text``: cut, one line."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return "".join("\ufffd" if (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029") else c for c in cut)


def cef_kept(text: str) -> str:
    """What a CEF extension value keeps of ``text``: cut, CR and LF kept (CRLF read back as LF),
    every other control character and line separator U+FFFD."""
    cut = text if len(text) <= 1023 else text[:1022] + "…"
    return "".join(c if c in "\r\n" else one_line(c) for c in cut).replace("\r\n", "\n")


# -- who, and how grave ----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    ({"actor": {"token": "alice", "uid": 1000, "user": "bob"}}, "alice"),
    ({"actor": {"uid": 1000, "user": "bob"}}, "bob"),
    ({"actor": {"uid": 4242}}, "uid:4242"),
    ({"actor": {"uid": 4242, "user": ""}}, "uid:4242"),
    ({"actor": {}}, "anonymous"),
    ({"client": "token:carol"}, "carol"),  # older records: the client member
    ({"client": "uid:1000"}, "uid:1000"),
    ({"identity": "anonymous"}, "anonymous"),  # request.rejected names it identity
    ({"actor": {"token": "alice"}, "client": "token:mallory"}, "alice"),  # the actor wins
    ({}, None),
])
def test_the_person_follows_the_identity_contract(data: dict[str, Any], expected: str | None) -> None:
    assert person(data) == expected


@pytest.mark.parametrize(("kind", "data", "outcome", "level"), [
    ("airgap.breach", {}, "breach", "high"),
    ("config.drift", {}, "breach", "high"),
    ("engine.refused", {"reason": "network reachable"}, "refused", "high"),
    ("model.import.rejected", {}, "refused", "high"),
    ("model.load.refused", {}, "refused", "high"),
    ("request.rejected", {"status": 401}, "refused", "high"),
    ("request.rejected", {"status": 503}, "refused", "high"),  # a breach or a full queue refuses
    ("request.rejected", {"status": 500}, "error", "medium"),
    ("inference.end", {"done_reason": "error"}, "error", "medium"),
    ("airgap.unobserved", {}, "error", "medium"),
    ("ledger.recovered", {}, "error", "medium"),
    ("inference.end", {"done_reason": "client_disconnected"}, "interrupted", "low"),
    ("inference.interrupted", {}, "interrupted", "low"),
    ("inference.end", {"done_reason": "stop"}, "success", "informational"),
    ("inference.end", {"done_reason": "length"}, "success", "informational"),
    ("config.change", {}, "success", "informational"),
    ("airgap.restored", {}, "success", "informational"),
])
def test_one_severity_table_for_every_format(kind: str, data: dict[str, Any], outcome: str, level: str) -> None:
    assert outcome_of(kind, data) == outcome and SEVERITY[outcome].name == level
    event = Correlator().event(record(kind, data))
    assert to_ocsf(event)["severity_id"] == SEVERITY[outcome].ocsf_id
    assert int(cef_fields(to_cef(event))["severity"]) == SEVERITY[outcome].cef
    assert int(syslog_fields(to_syslog(event))["prival"]) == 13 * 8 + SEVERITY[outcome].syslog
    levels = sorted(SEVERITY.values(), key=lambda lv: lv.ocsf_id)
    for scale in ("ocsf_id", "cef"):  # every scale ranks the levels the same way
        assert [getattr(lv, scale) for lv in levels] == sorted(getattr(lv, scale) for lv in levels)
    assert [lv.syslog for lv in levels] == sorted((lv.syslog for lv in levels), reverse=True)


def test_an_end_names_the_model_and_person_of_its_begin_and_memory_is_bounded() -> None:
    correlator = Correlator(limit=2)
    correlator.event(begin("alice", "gemma", "a" * 16))
    end = correlator.event(record("inference.end", {"id": "a" * 16, "done_reason": "stop", "prompt_tokens": 3,
                                                    "completion_tokens": 4}))
    assert (end.person, end.model, end.inference) == ("alice", "gemma", "a" * 16)
    ocsf = to_ocsf(end)
    assert ocsf["message_context"]["total_tokens"] == 7 and ocsf["metadata"]["correlation_uid"] == "a" * 16
    for i in range(3):
        correlator.event(begin("bob", "m", f"{i:016x}"))
    assert len(correlator._open) == 2
    forgotten = correlator.event(record("inference.end", {"id": f"{0:016x}", "done_reason": "stop"}))
    assert forgotten.model == "" and forgotten.person == ""


# -- each format, hostile content --------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_ocsf_events_validate_and_carry_the_record_whole(text: str) -> None:
    for rec in (begin(text, model=text),
                record("request.rejected", {"identity": "token:" + text, "path": "/" + text, "status": 401,
                                            "reason": text, "count": 3})):
        event = to_ocsf(Correlator().event(rec), host="appliance-1")
        assert ocsf_errors(event) == []
        assert event["raw_data"].encode() + b"\n" == seal(1, rec.kind, rec.data, GENESIS_PREV, TS)[1]
        assert event["metadata"]["uid"] == rec.hash and event["api"]["operation"] == rec.kind
        assert event["actor"]["user"]["name"] == text
        assert json.loads(canonical_bytes(event)) == event  # within the canonical JSON profile


@pytest.mark.parametrize("text", HOSTILE)
def test_cef_lines_keep_the_grammar_and_give_the_values_back(text: str) -> None:
    event = Correlator().event(record("engine.refused", {"reason": text, "actor": {"uid": 7, "user": text},
                                                         "model": text}))
    fields = cef_fields(to_cef(event, host=text))
    assert (fields["vendor"], fields["product"], fields["signature"]) == ("anticloud", "anticloud", "engine.refused")
    assert fields["ext"]["suser"] == cef_kept(text)
    assert fields["ext"]["reason"] == fields["ext"]["suser"] and fields["ext"]["cs2"] == fields["ext"]["suser"]
    assert fields["ext"]["suid"] == "7" and fields["ext"]["cs1"] == event.record.hash
    assert fields["ext"]["outcome"] == "refused" and fields["ext"]["cs1Label"] == "recordHash"
    assert "\n" not in fields["name"] and len(fields["name"]) <= 1023


def test_cef_escapes_exactly_as_the_standard_says() -> None:
    from anticloud.siem.cef import extension_value, header_field

    assert header_field("a|b\\c=d\ne") == "a\\|b\\\\c=d e"
    assert extension_value("a|b\\c=d\ne\r\nf\rg") == "a|b\\\\c\\=d\\ne\\nf\\rg"


@pytest.mark.parametrize("text", HOSTILE)
def test_syslog_lines_keep_the_rfc5424_grammar_and_give_the_values_back(text: str) -> None:
    event = Correlator().event(record("request.rejected", {"actor": {"token": text, "uid": 1000},
                                                           "path": text, "status": 401, "reason": text}))
    fields = syslog_fields(to_syslog(event, host=text))
    assert fields["version"] == "1" and fields["app"] == "anticloud" and fields["msgid"] == "request.rejected"
    assert fields["timestamp"] == TS and fields["procid"] == "-"
    assert fields["sd"].startswith("[anticloud@32473 ")
    assert fields["params"]["person"] == one_line(text) and fields["params"]["reason"] == one_line(text)
    assert fields["params"]["hash"] == event.record.hash and fields["params"]["seq"] == "1"
    assert len(fields["hostname"]) <= 255 and fields["hostname"].isascii()
    msg = fields["msg"]
    assert msg.isascii() or msg.startswith("\ufeff"), "a UTF-8 MSG begins with the BOM (RFC 5424 §6.4)"


def test_syslog_escapes_exactly_as_rfc5424_says() -> None:
    from anticloud.siem.syslog import header_token, param_value

    assert param_value('a"b\\c]d=e') == 'a\\"b\\\\c\\]d=e'
    assert header_token("", 255) == "-" and header_token("host name\n", 255) == "host_name_"
    assert header_token("k" * 64, 32) == "k" * 32


@pytest.mark.parametrize("text", HOSTILE)
def test_csv_rows_round_trip_through_the_stdlib_reader(text: str) -> None:
    out = io.StringIO()
    rec = begin(text, model=text)
    assert export([rec], "csv", out) == 1
    header, row = csv_rows(out.getvalue())
    assert tuple(header) == COLUMNS and out.getvalue().endswith("\r\n")
    cells = dict(zip(header, (unguard(c) for c in row), strict=True))
    assert cells["person"] == text and cells["model"] == text
    assert json.loads(cells["data"]) == rec.data and cells["hash"] == rec.hash
    assert (cells["seq"], cells["ts"], cells["kind"], cells["outcome"]) == ("1", TS, "inference.begin", "success")
    for cell in row:  # what a spreadsheet would run as a formula is text
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_formula_guard_is_exactly_reversible() -> None:
    for cell in ["=1+1", "+1", "-1", "@x", "\tx", "\rx", "'x", "''=x", "x=1", "", "1-2"]:
        assert unguard(guard(cell)) == cell
    assert guard("=1+1") == "'=1+1" and guard("x=1") == "x=1"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=50), st.integers(0, 2**31))
def test_any_text_keeps_every_grammar(text: str, model: str, uid: int) -> None:
    rec = record("request.rejected", {"actor": {"user": text, "uid": uid}, "model": model, "path": text,
                                      "status": 401, "reason": text})
    event = Correlator().event(rec)
    assert ocsf_errors(to_ocsf(event, host=text or None)) == []
    assert cef_fields(to_cef(event, host=text))["ext"]["suid"] == str(uid)
    person = one_line(text) if text else f"uid:{uid}"  # an empty name is no name
    assert syslog_fields(to_syslog(event, host=text))["params"]["person"] == person
    out = io.BytesIO()
    export([rec], "csv", out)
    assert unguard(csv_rows(out.getvalue().decode())[1][3]) == (text or f"uid:{uid}")


# -- the writer --------------------------------------------------------------------------------


def test_export_streams_to_binary_and_text_alike_and_counts() -> None:
    records = [begin("alice", ident=f"{i:016x}") for i in range(600)]  # more than one batch
    for fmt in FORMATS:
        binary, text = io.BytesIO(), io.StringIO()
        assert export(iter(records), fmt, binary) == 600 == export(records, fmt, text)
        assert binary.getvalue().decode() == text.getvalue()
        lines = text.getvalue().splitlines()
        assert len(lines) == 600 + (fmt == "csv")


def test_an_unknown_format_is_one_clear_error_and_writes_nothing() -> None:
    out = io.BytesIO()
    with pytest.raises(ExportError, match="unknown export format 'json': choose one of ocsf, cef, syslog, csv"):
        export([begin("alice")], "json", out)
    assert out.getvalue() == b"" and issubclass(ExportError, AnticloudError)


def test_a_record_without_an_actor_still_validates() -> None:
    rec = Record(seq=0, ts=TS, kind="ledger.genesis", data={"ledger_id": "00" * 16}, prev=GENESIS_PREV,
                 hash="00" * 32)
    event = Correlator().event(rec)
    ocsf = to_ocsf(event)
    assert ocsf_errors(ocsf) == [] and ocsf["actor"]["user"]["name"] == "unknown"
    assert "suser" not in cef_fields(to_cef(event))["ext"]
    assert "person" not in syslog_fields(to_syslog(event))["params"]


def test_docs_state_the_severity_table_the_code_applies() -> None:
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "siem.md").read_text()
    rows = {cells[0].strip("` "): cells for line in doc.splitlines() if line.startswith("| `")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if len(cells) == 6}
    assert set(rows) == set(SEVERITY)
    for outcome, level in SEVERITY.items():
        _, _, name, ocsf_id, cef, syslog = rows[outcome]
        assert (name, int(ocsf_id.split()[0]), int(cef), int(syslog.split()[0])) == (
            level.name, level.ocsf_id, level.cef, level.syslog)

"""`anticloud audit` questions end to end: a home's ledger written by the real CLI (the fake engine
answering `anticloud run`), a copy of it away from the home, and a tampered copy."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.config import set_value
from anticloud.home import Home
from ledger import LedgerWriter
from tests.fake_engine import FakeModel  # registers the "fake" engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home whose operator imported two models, changed settings, created a token, and asked five
    questions, one of them of a model that then refused to load... through the CLI, on the fake engine."""
    from tests.conftest import operator_imports_real_model
    from tests.gguf_builder import build

    base = tmp_path_factory.mktemp("audit")
    for name in ("tiny", "other"):
        (base / f"{name}.gguf").write_bytes(build())
        home = operator_imports_real_model(base, base / f"{name}.gguf", name)
    with LedgerWriter.open(home.ledger) as writer:
        for key, value in (("engine.name", "fake"), ("inference.default_model", "tiny"), ("airgap.mode", "warn"),
                           ("inference.record_content", "plaintext")):
            set_value(home, writer, key, value)
    FakeModel.gate = None
    for args in (["tokens", "create", "alice"], ["run", "tiny", "one two three"], ["run", "tiny", "four five"],
                 ["run", "other", "six"], ["run", "nosuchmodel", "x"]):
        invoke(home, *args)
    return home


def invoke(home: Home | None, *args: str) -> tuple[int, str, str]:
    prefix = ["--home", str(home.root)] if home else []
    result = CliRunner().invoke(cli, [*prefix, *args])
    return result.exit_code, result.stdout, result.stderr


def answer(home: Home | None, *args: str) -> dict[str, Any]:
    code, out, err = invoke(home, "audit", *args, "--json")
    assert code == 0, err
    return dict(json.loads(out))


def kinds_in(home: Home) -> list[dict[str, Any]]:
    return [json.loads(line) for line in home.ledger.read_bytes().splitlines()]


def test_people_and_models_per_day_match_what_the_ledger_holds(served: Home) -> None:
    records = kinds_in(served)
    ends = [r for r in records if r["kind"] == "inference.end"]
    people = answer(served, "people")
    assert people["verdict"]["verdict"] == "intact" and people["covers"]["records"] == len(records)
    assert people["result"]["totals"]["requests"] == 3 == len(ends)
    assert people["result"]["totals"]["tokens_out"] == sum(e["data"]["completion_tokens"] for e in ends) == 6
    (row,) = people["result"]["rows"]
    assert row["person"].startswith("uid:") or row["person"] == records[-1]["data"].get("actor", {}).get("user")
    models = {r["model"]: r for r in answer(served, "models")["result"]["rows"]}
    assert (models["tiny"]["requests"], models["other"]["requests"]) == (2, 1)
    assert models["tiny"]["tokens_in"] == 5 and models["tiny"]["completed"] == 2


def test_each_summary_answers_as_a_table_json_and_csv(served: Home) -> None:
    for name in ("people", "models", "refusals", "airgap", "config", "lifecycle", "keys", "records"):
        code, out, _ = invoke(served, "audit", name)
        assert code == 0 and out.startswith("INTACT: "), (name, out)
        code, out, err = invoke(served, "audit", name, "--csv")
        assert code == 0 and err.startswith("INTACT: ")
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] and all(len(row) == len(rows[0]) for row in rows)
    config = answer(served, "config")["result"]["rows"]
    assert [(r["key"], r["old"], r["new"]) for r in config if r["kind"] == "config.change"] == [
        ("engine.name", "llama_cpp", "fake"), ("inference.default_model", "gemma3-270m", "tiny"),
        ("airgap.mode", "enforce", "warn"), ("inference.record_content", "sealed", "plaintext")]  # a new home seals
    lifecycle = answer(served, "lifecycle")["result"]["counts"]
    assert lifecycle["tiny"]["import"] == 1 and lifecycle["tiny"]["load"] == 2 and lifecycle["other"]["load"] == 1
    keys = answer(served, "keys")["result"]["events"]
    assert [e["event"] for e in keys] == ["key_trusted", "token_created"]
    airgap = answer(served, "airgap")["result"]
    starts = [r["seq"] for r in kinds_in(served) if r["kind"] == "engine.start"]
    assert [(e["event"], e["seq"]) for e in airgap["events"]] == [("engine_start", seq) for seq in starts]
    assert "network reachable" in airgap["events"][0]["detail"] and airgap["breaches"] == 0


def test_records_are_filtered_and_streamed(served: Home) -> None:
    records = answer(served, "records", "--kind", "inference.*", "--model", "tiny")["records"]
    assert [r["kind"] for r in records] == ["inference.begin", "inference.end"] * 2
    assert {r["outcome"] for r in records} == {None, "completed"}
    texts = answer(served, "records", "--text", "FOUR FIVE")["records"]
    assert [r["kind"] for r in texts] == ["inference.begin", "inference.end"]  # the prompt, then the output
    limited = answer(served, "records", "--limit", "2")
    assert [r["seq"] for r in limited["records"]] == [0, 1] and limited["covers"]["matched"] == 2
    recent = answer(served, "records", "--since", "1h", "--kind", "ledger.genesis")
    assert [r["seq"] for r in recent["records"]] == [0]  # written moments ago by this machine's clock
    nothing = answer(served, "records", "--until", "2000-01-01")
    assert nothing["records"] == [] and nothing["filter"]["until"] == "2000-01-02T00:00:00.000000Z"


def test_a_copy_is_answered_without_a_home(served: Home, tmp_path: Path) -> None:
    copy = tmp_path / "ledger-copy.jsonl"
    shutil.copyfile(served.ledger, copy)
    away = answer(None, "people", "--ledger", str(copy), "--pubkey", str(served.root / "appliance.pub"))
    assert away["result"] == answer(served, "people")["result"] and away["verdict"]["path"] == str(copy)


def test_a_tampered_copy_says_so_and_answers_only_what_verified(served: Home, tmp_path: Path) -> None:
    lines = served.ledger.read_bytes().splitlines(keepends=True)
    second_end = [i for i, line in enumerate(lines) if b'"kind":"inference.end"' in line][1]
    tampered = tmp_path / "tampered.jsonl"
    forged = lines[second_end].replace(b'"stop"', b'"STOP"')
    tampered.write_bytes(b"".join([*lines[:second_end], forged, *lines[second_end + 1:]]))
    code, out, _ = invoke(None, "audit", "people", "--ledger", str(tampered))
    assert code == 1
    assert out.startswith(f"BROKEN: {tampered}") and f"first bad record  seq {second_end}" in out
    assert f"it covers only records 0..{second_end - 1}" in out.splitlines()[-1]  # said again after the table
    code, out, _ = invoke(None, "audit", "people", "--ledger", str(tampered), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verdict"]["verdict"] == "broken" and doc["verdict"]["fault"]["seq"] == second_end
    assert doc["covers"] == {"records": second_end, "last_seq": second_end - 1, "read": doc["covers"]["read"],
                             "matched": doc["covers"]["matched"], "complete": False}
    assert "DOES NOT VERIFY" in doc["warning"]
    assert doc["result"]["totals"]["requests"] == 2 and doc["result"]["totals"]["completed"] == 1
    code, _, err = invoke(None, "audit", "refusals", "--ledger", str(tampered), "--csv")
    assert code == 1 and err.startswith("BROKEN: ")


@pytest.mark.parametrize("name", ["records", "people", "models", "refusals", "airgap", "config", "lifecycle",
                                  "keys"])
def test_every_question_answers_the_same_on_several_cores(served: Home, tmp_path: Path, name: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified and summarised in worker processes, cut wherever the cores fall, on an intact copy and
    on one broken halfway: the answer is the one a single process gives."""
    import ledger.verify

    lines = served.ledger.read_bytes().splitlines(keepends=True)
    bad = len(lines) // 2
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"".join([*lines[:bad], lines[bad].replace(b'"ts":"', b'"ts":"1'), *lines[bad + 1:]]))
    answers = []
    for jobs, threshold in ((1, 1 << 62), (3, 0), (7, 0)):
        monkeypatch.setattr(os, "cpu_count", lambda jobs=jobs: jobs)
        monkeypatch.setattr(ledger.verify, "PARALLEL_MIN_BYTES", threshold)
        answers.append([invoke(served, "audit", name, "--json", *where)[:2]
                        for where in ([], ["--ledger", str(broken)], ["--since", "2020-01-01", "--person", "alice"])])
    assert answers[0] == answers[1] == answers[2]
    (intact, _), (code, out), _ = answers[0]
    assert intact == 0 and code == 1 and json.loads(out)["covers"]["records"] == bad


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "last tuesday"], "is neither a date"),
    (["--kind", "Not A Kind"], "is not a record kind"),
    (["--since", "2025-03-02", "--until", "2025-03-01"], "the range is empty"),
    (["--json", "--csv"], "alternatives"),
    (["--ledger", "/nonexistent/ledger.jsonl"], "cannot read ledger"),
])
def test_bad_questions_get_one_line_and_exit_2(served: Home, args: list[str], message: str) -> None:
    code, out, err = invoke(served, "audit", "people", *args)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_a_home_that_is_not_initialised_is_named(tmp_path: Path) -> None:
    code, _, err = invoke(Home(tmp_path / "nohome"), "audit", "people")
    assert code == 2 and "is not initialised" in err


def test_persons_and_outcomes_select_through_the_cli(served: Home, make_ledger: Callable[..., Any]) -> None:
    begin = next(r for r in kinds_in(served) if r["kind"] == "inference.begin")
    uid = begin["data"].get("actor", {}).get("uid") or int(begin["data"]["client"].removeprefix("uid:"))
    mine = answer(served, "records", "--person", f"uid:{uid}", "--outcome", "completed")["records"]
    assert len(mine) == 3 and all(r["kind"] == "inference.end" for r in mine)
    assert answer(served, "records", "--person", "nobody")["records"] == []


def test_a_seal_fault_stops_the_answer_before_the_bad_record(served: Home, tmp_path: Path) -> None:
    """The chain links past a malformed seal record, but the verdict names it as the first bad record:
    nothing from it on is counted, as the warning says, in the questions, the report and the export."""
    copy = tmp_path / "sealfault.jsonl"
    shutil.copyfile(served.ledger, copy)
    with LedgerWriter.open(copy) as writer:
        bad = writer.append("seal.enroll", {"auditor": "x"}).seq  # an enrollment without its fingerprint
        writer.append("inference.begin", {"id": "after", "model": "tiny", "actor": {"token": "mallory"}})
    code, out, _ = invoke(None, "audit", "records", "--ledger", str(copy), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["verdict"]["fault"]["seq"] == bad
    assert doc["covers"]["records"] == bad and doc["covers"]["last_seq"] == bad - 1
    assert [r["seq"] for r in doc["records"]] == list(range(bad))
    people = answer_broken(copy, "people")
    assert "mallory" not in {row["person"] for row in people["result"]["rows"]}
    code, out, _ = invoke(None, "audit", "export", "--ledger", str(copy), "--format", "csv",
                          "--out", str(tmp_path / "e.csv"))
    assert code == 1 and len((tmp_path / "e.csv").read_text().splitlines()) == 1 + bad


def answer_broken(ledger: Path, *args: str) -> dict[str, Any]:
    code, out, _ = invoke(None, "audit", *args, "--ledger", str(ledger), "--json")
    assert code == 1
    return dict(json.loads(out))

"""`anticloud audit export`: the records a question selects, verified, in a format a SIEM reads."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from tests.siem_grammar import cef_fields, csv_rows, ocsf_errors, syslog_fields
from tests.test_audit_report import appliance_ledger, run  # noqa: F401 -- the realistic ledger fixture


def listed(ledger: Path, *filters: str) -> list[dict[str, object]]:
    code, output = run("audit", "records", "--ledger", str(ledger), "--json", *filters)
    assert code == 0, output
    return list(json.loads(output)["records"])


@pytest.mark.parametrize("fmt", ["ocsf", "cef", "syslog", "csv"])
def test_every_format_exports_what_the_question_lists_and_each_line_checks(appliance_ledger: Path,  # noqa: F811
                                                                          tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"export.{fmt}"
    code, output = run("audit", "export", "--ledger", str(appliance_ledger), "--format", fmt, "--out", str(out),
                       "--person", "alice")
    want = listed(appliance_ledger, "--person", "alice")
    assert code == 0 and "INTACT" in output and f"{len(want)} record(s) as {fmt}" in output, output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    lines = text.splitlines()
    if fmt == "csv":
        rows = csv_rows(text)
        assert [int(row[0]) for row in rows[1:]] == [r["seq"] for r in want]
        return
    assert len(lines) == len(want) > 0
    for line, record in zip(lines, want, strict=True):
        if fmt == "ocsf":
            event = json.loads(line)
            assert ocsf_errors(event) == [] and event["metadata"]["sequence"] == record["seq"]
        elif fmt == "cef":
            assert cef_fields(line)["ext"]
        else:
            assert syslog_fields(line)["msgid"] == record["kind"]


def test_a_broken_copy_exports_only_what_verified_and_exits_1(appliance_ledger: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    lines = appliance_ledger.read_bytes().splitlines(keepends=True)
    lines[20] = lines[20].replace(b'"seq":20', b'"seq":21')
    appliance_ledger.write_bytes(b"".join(lines))
    out = tmp_path / "export.jsonl"
    code, output = run("audit", "export", "--ledger", str(appliance_ledger), "--format", "ocsf", "--out", str(out))
    assert code == 1 and "DOES NOT VERIFY" in output
    assert [json.loads(line)["metadata"]["sequence"] for line in out.read_text().splitlines()] == list(range(20))


def test_bad_input_is_one_line_and_leaves_no_file(appliance_ledger: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "x.cef"
    code, output = run("audit", "export", "--ledger", str(appliance_ledger), "--format", "leef", "--out", str(out))
    assert code == 2 and "leef" in output and not out.exists()
    code, output = run("audit", "export", "--ledger", str(appliance_ledger), "--format", "cef", "--out",
                       str(tmp_path / "missing" / "x.cef"))
    last = output.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in output and last.startswith("anticloud: error:")
    assert str(tmp_path / "missing" / "x.cef") in last and ".tmp" not in last, "the file asked for is named"
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "no partial file is left behind"


OUTPUTS = [["export", "--format", "csv"], ["report"]]


@pytest.mark.parametrize("command", OUTPUTS)
def test_an_export_or_a_report_never_replaces_the_ledger_or_a_file_of_the_home(tmp_path: Path,
                                                                               command: list[str]) -> None:
    """`--out` named after the ledger, by mistake, would put a CSV where the audit trail was: refused, in one
    line, whatever the path is called (a link to it too), and so is any file in the appliance's home."""
    home = tmp_path / "home"
    assert CliRunner().invoke(cli, ["--home", str(home), "init"]).exit_code == 0
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes((home / "ledger.jsonl").read_bytes())
    (tmp_path / "link.jsonl").symlink_to(copy)
    kept = {path: path.read_bytes() for path in (home / "ledger.jsonl", home / "keys" / "appliance.key", copy)}
    attempts = [([], home / "ledger.jsonl"), ([], home / "keys" / "appliance.key"), ([], home / "new.csv"),
                (["--ledger", str(copy)], copy), (["--ledger", str(tmp_path / "link.jsonl")], copy),
                (["--ledger", str(copy)], tmp_path / "link.jsonl")]
    for ledger, out in attempts:
        result = CliRunner().invoke(cli, ["--home", str(home), "audit", *command, *ledger, "--out", str(out)])
        assert result.exit_code == 2 and "Traceback" not in result.output, (out, result.output)
        assert result.output.strip().splitlines()[-1].startswith("anticloud: error:"), result.output
    assert {path: path.read_bytes() for path in kept} == kept and not (home / "new.csv").exists()
    assert (tmp_path / "link.jsonl").is_symlink()

"""A ledger copy an auditor is handed may hold anything its chain allows: every answer still comes
out, as a table, an export or a report, and never as a traceback.

The chain vouches for bytes, not for the shape of a record's data: an older appliance, a defect or
whoever built the copy may have written a field as a list where the docs say text. The records
here carry each documented field of each documented kind in every JSON shape.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anticloud.audit import SUMMARIES, Annotator, Filter, mark
from anticloud.audit.anomalies import Anomalies
from anticloud.audit.report import render
from anticloud.cli import cli
from anticloud.siem import FORMATS, export
from ledger import LedgerWriter, Record, verify_file
from ledger.canonical import MAX_SAFE_INTEGER

DOC = (Path(__file__).parent.parent / "docs" / "records.md").read_text()
FIXED = {"ledger.genesis", "ledger.checkpoint", "ledger.recovered", "ledger.seal", "seal.enroll"}  # the chain checks
SECTIONS = {kind: text for kind, text in re.findall(r"^### `([a-z_.]+)`\n(.*?)(?=^##|\Z)", DOC, re.M | re.S)
            if kind not in FIXED}
KINDS = sorted(SECTIONS)
COMMON = {"actor", "client", "identity", "id", "name", "model", "reason", "status", "count"}  # what readers share
FIELDS = sorted(set(re.findall(r"`([a-z0-9_]+)`", DOC)) | COMMON)


def fields_of(kind: str) -> list[str]:
    """The members docs/records.md names for ``kind`` (a table row may name several), and those readers share."""
    rows = re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \|", SECTIONS[kind], re.M)
    return sorted({name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row)} | COMMON)


SHAPES: list[Any] = [None, True, 5, -3, "x", "", [1, "a"], [{"a": [1]}], {"a": 1}, {"version": ["x"]}]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4),
                                                               inner, max_size=3),
    max_leaves=6,
)
records = st.lists(st.sampled_from(KINDS).flatmap(
    lambda kind: st.tuples(st.just(kind), st.dictionaries(st.sampled_from(fields_of(kind)), values, max_size=6))),
    min_size=1, max_size=20)


def answers(script: list[tuple[str, dict[str, Any]]]) -> list[Record]:
    """Every summary, the anomalies, every export format and the report over ``script``."""
    recs = [Record(seq, f"2025-03-0{1 + seq % 3}T23:59:59.999999Z", kind, data, "0" * 64, "0" * 64)
            for seq, (kind, data) in enumerate(script)]
    summaries = {name: make() for name, make in SUMMARIES.items()}
    anomalies = Anomalies()
    annotator, query = Annotator(), Filter()
    for record in recs:
        facts = annotator.facts(record)
        if mark(query, record, facts):
            for summary in (*summaries.values(), anomalies):
                summary.feed(record, facts)
    results = {name: s.result() for name, s in summaries.items()}
    for result in results.values():
        result.table()
    doc = {name: r.to_json() for name, r in results.items()}
    doc["anomalies"] = anomalies.result().to_json()
    verdict = {"verdict": "intact", "records": len(recs), "checkpoints_in_ledger": 0, "path": "copy.jsonl"}
    covers = {"records": len(recs), "last_seq": len(recs) - 1, "read": len(recs), "matched": len(recs),
              "complete": True}
    render({"verdict": verdict, "filter": query.to_json(), "covers": covers, "results": doc})
    for fmt in FORMATS:
        assert export(recs, fmt, io.StringIO()) == len(recs)
    return recs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_any_record_data_is_answered_exported_and_reported(script: list[tuple[str, dict[str, Any]]]) -> None:
    answers(script)


@pytest.mark.parametrize("kind", KINDS)
def test_every_documented_field_in_every_shape(kind: str) -> None:
    begun = ("inference.begin", {"id": "i", "model": "m", "actor": {"uid": 1}})  # what an end is joined to
    answers([step for field in fields_of(kind) for shape in SHAPES
             for step in (begun, (kind, {field: shape, "id": "i"}))])


def test_every_command_answers_a_hostile_copy_in_one_piece(tmp_path: Path) -> None:
    """The real CLI on a real file: each question, each export and the report exit with the verdict's code."""
    home = tmp_path / "home"
    assert CliRunner().invoke(cli, ["--home", str(home), "init"]).exit_code == 0
    with LedgerWriter.open(home / "ledger.jsonl") as writer:
        for kind in KINDS:
            for field in fields_of(kind):
                for shape in SHAPES:
                    writer.append(kind, {field: shape, "id": "i"})
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes((home / "ledger.jsonl").read_bytes())
    commands = [[name, *fmt] for name in ("records", *SUMMARIES) for fmt in ([], ["--json"], ["--csv"])]
    commands += [["report", "--out", str(tmp_path / "r.html")]]
    commands += [["export", "--format", fmt, "--out", str(tmp_path / f"e.{fmt}")] for fmt in FORMATS]
    # Hostile shapes in `sealed` are malformed content references: the chain is intact, its content
    # is not (exit 7), and every command says so with the verdict's own code.
    expected = verify_file(copy).exit_code
    assert expected == 7
    for args in commands:
        result = CliRunner().invoke(cli, ["audit", *args, "--ledger", str(copy)])
        assert result.exit_code == expected and not isinstance(result.exception, Exception), (args, result.output)

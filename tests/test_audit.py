"""The audit's rules on synthetic records: persons, outcomes, the filter, and each summary's numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from anticloud.audit import (
    AirGapTimeline,
    Annotator,
    ConfigChanges,
    Filter,
    KeyLifecycle,
    ModelLifecycle,
    Refusals,
    Summary,
    Usage,
    mark,
    outcome_of,
    parse_time,
    person_of,
)
from anticloud.errors import AuditQueryError
from ledger import Record

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


class Script:
    """Records as a ledger would hold them, with seq and ts counting up."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, kind: str, ts: str, **data: Any) -> Script:
        self.records.append(Record(len(self.records), ts, kind, data, "0" * 64, "0" * 64))
        return self

    def inference(self, ident: str, ts: str, end_ts: str, model: str, actor: dict[str, Any], reason: str = "stop",
                  tokens: tuple[int, int] = (10, 20), **end: Any) -> Script:
        self.add("inference.begin", ts, id=ident, model=model, actor=actor, client="ignored-when-actor")
        return self.add("inference.end", end_ts, id=ident, done_reason=reason, prompt_tokens=tokens[0],
                        completion_tokens=tokens[1], **end)


def run(records: list[Record], summary: Summary, query: Filter | None = None) -> dict[str, Any]:
    query = query or Filter()
    annotator = Annotator()
    for record in records:
        facts = annotator.facts(record)
        if mark(query, record, facts):
            summary.feed(record, facts)
    return summary.result().to_json()


ALICE = {"token": "alice", "uid": 1000, "user": "svc"}
BOB = {"uid": 1001, "user": "bob"}


def day1() -> Script:
    return (Script()
            .inference("a1", "2025-03-01T09:00:00.000000Z", "2025-03-01T09:00:01.000000Z", "gemma", ALICE)
            .inference("a2", "2025-03-01T23:59:59.000000Z", "2025-03-02T00:00:02.000000Z", "gemma", ALICE,
                       reason="length", tokens=(5, 7))
            .inference("b1", "2025-03-01T10:00:00.000000Z", "2025-03-01T10:00:01.000000Z", "qwen", BOB,
                       reason="client_disconnected", tokens=(3, 1))
            .inference("b2", "2025-03-02T10:00:00.000000Z", "2025-03-02T10:00:01.000000Z", "qwen", BOB,
                       reason="error", error="boom")
            .add("inference.begin", "2025-03-02T11:00:00.000000Z", id="old", model="qwen", client="token:carol")
            .add("inference.interrupted", "2025-03-02T11:05:00.000000Z", id="old", begin_seq=8,
                 reason="the engine stopped before it ended")
            .add("request.rejected", "2025-03-02T12:00:00.000000Z", identity="uid:1001", path="/api/chat",
                 status=401, reason="no valid token", count=4)
            .add("model.load.refused", "2025-03-02T13:00:00.000000Z", model="gemma", reason="hash mismatch",
                 actor={"uid": 0, "user": "root"}))


@pytest.mark.parametrize(("data", "expected"), [
    ({"actor": {"token": "alice", "uid": 1000, "user": "svc"}}, ("alice", 1000)),
    ({"actor": {"uid": 1000, "user": "bob"}}, ("bob", 1000)),
    ({"actor": {"uid": 1234}}, ("uid:1234", 1234)),
    ({"actor": {}}, ("anonymous", None)),
    ({"client": "token:carol"}, ("carol", None)),
    ({"client": "uid:1000"}, ("uid:1000", 1000)),
    ({"identity": "anonymous"}, ("anonymous", None)),
    ({"actor": {"user": "dave"}, "client": "token:eve"}, ("dave", None)),  # the actor outranks the old member
    ({"key": "x"}, (None, None)),
])
def test_the_person_of_a_record_follows_the_identity_contract(data: dict[str, Any],
                                                               expected: tuple[str | None, int | None]) -> None:
    assert person_of(data) == expected


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("inference.end", {"done_reason": "stop"}, "completed"),
    ("inference.end", {"done_reason": "length"}, "completed"),
    ("inference.end", {"done_reason": "error"}, "error"),
    ("inference.end", {"done_reason": "stop", "error": "prompt too long"}, "error"),
    ("inference.end", {"done_reason": "client_disconnected"}, "interrupted"),
    ("inference.end", {"done_reason": "engine_stopped"}, "interrupted"),
    ("inference.interrupted", {}, "interrupted"),
    ("request.rejected", {}, "refused"),
    ("model.load.refused", {}, "refused"),
    ("model.import.rejected", {}, "refused"),
    ("engine.refused", {}, "refused"),
    ("inference.begin", {}, None),
    ("config.change", {}, None),
])
def test_outcomes_are_derived_from_the_kinds(kind: str, data: dict[str, Any], expected: str | None) -> None:
    assert outcome_of(kind, data) == expected


def test_people_per_day_joins_each_end_to_its_begin() -> None:
    rows = {(r["day"], r["person"]): r for r in run(day1().records, Usage("person"))["rows"]}
    assert rows[("2025-03-01", "alice")] == {"day": "2025-03-01", "person": "alice", "requests": 2, "completed": 2,
                                             "interrupted": 0, "errors": 0, "refused": 0, "tokens_in": 15,
                                             "tokens_out": 27}  # a2 ended the next day: counted on its begin's
    assert rows[("2025-03-01", "bob")]["interrupted"] == 1
    assert (rows[("2025-03-02", "bob")]["errors"], rows[("2025-03-02", "bob")]["requests"]) == (1, 1)
    assert rows[("2025-03-02", "uid:1001")]["refused"] == 4  # an old record's uid, its folded count
    assert rows[("2025-03-02", "carol")]["interrupted"] == 1  # an old begin's client; closed at a restart
    assert rows[("2025-03-02", "root")]["refused"] == 1


def test_models_per_day_counts_refusals_that_name_the_model() -> None:
    report = run(day1().records, Usage("model"))
    rows = {(r["day"], r["model"]): r for r in report["rows"]}
    assert rows[("2025-03-02", "gemma")]["refused"] == 1
    assert rows[("2025-03-01", "qwen")]["tokens_out"] == 1
    assert report["totals"]["requests"] == 5 and report["totals"]["refused"] == 1  # the 401 names no model


def test_an_end_whose_begin_was_filtered_out_is_unattributed_not_counted() -> None:
    query = Filter.build(since=parse_time("2025-03-02", NOW))
    report = run(day1().records, Usage("person"), query)
    assert report["unattributed_ends"] == 1  # a2: begun on the 1st, ended on the 2nd
    assert all(r["day"] == "2025-03-02" for r in report["rows"])
    assert all(r["completed"] + r["interrupted"] + r["errors"] <= r["requests"] for r in report["rows"])


def test_an_outcome_selects_the_inferences_that_ended_so_counted_on_their_begins_row() -> None:
    """A begin has no outcome of its own: its end decides whether the request is one the question is about."""
    completed = run(day1().records, Usage("person"), Filter.build(outcomes=["completed"]))
    assert [(r["day"], r["person"], r["requests"], r["completed"], r["tokens_in"]) for r in completed["rows"]] == [
        ("2025-03-01", "alice", 2, 2, 15)]
    assert completed["unattributed_ends"] == 0
    interrupted = run(day1().records, Usage("person"), Filter.build(outcomes=["interrupted"], persons=["bob"]))
    assert [(r["day"], r["person"], r["requests"], r["interrupted"]) for r in interrupted["rows"]] == [
        ("2025-03-01", "bob", 1, 1)]
    refused = run(day1().records, Usage("model"), Filter.build(outcomes=["refused"]))
    assert refused["totals"]["requests"] == 0 and refused["totals"]["refused"] == 1


def test_filters_compose() -> None:
    records = day1().records

    def seqs(query: Filter) -> list[int]:
        annotator = Annotator()
        return [r.seq for r in records if query.matches(r, annotator.facts(r))]

    assert seqs(Filter.build(persons=["alice"])) == [0, 1, 2, 3]
    assert seqs(Filter.build(persons=["uid:1001"])) == [4, 5, 6, 7, 10]  # bob's actor uid, and an old record's
    assert seqs(Filter.build(persons=["bob"], outcomes=["error"])) == [7]
    assert seqs(Filter.build(models=["qwen"], kinds=["inference.end"])) == [5, 7]
    assert seqs(Filter.build(kinds=["model.*"])) == [11]
    assert seqs(Filter.build(outcomes=["refused", "interrupted"])) == [5, 9, 10, 11]
    assert seqs(Filter.build(text="HASH MISMATCH")) == [11]
    assert seqs(Filter.build(since=parse_time("2025-03-01T10:00:00Z", NOW),
                             until=parse_time("2025-03-01", NOW, until=True))) == [2, 4, 5]


def test_times_are_dates_rfc3339_or_durations_back_from_now() -> None:
    assert parse_time("2025-03-01", NOW) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_time("2025-03-01", NOW, until=True) == datetime(2025, 3, 2, tzinfo=UTC)
    assert parse_time("2025-03-01T10:00:00+02:00", NOW) == datetime(2025, 3, 1, 8, tzinfo=UTC)
    assert parse_time("7d", NOW) == datetime(2025, 3, 3, 12, tzinfo=UTC)
    assert parse_time("1h30m", NOW) == datetime(2025, 3, 10, 10, 30, tzinfo=UTC)
    for bad in ("yesterday", "2025-02-30", "-5d", "2025-13-01T00:00:00Z", "99999999d", "1e400", "nan", "inf"):
        with pytest.raises(AuditQueryError):
            parse_time(bad, NOW)
    with pytest.raises(AuditQueryError, match="out of range"):
        parse_time("9999-12-31", NOW, until=True)


def test_bad_criteria_are_refused_with_a_reason() -> None:
    with pytest.raises(AuditQueryError, match="not an outcome"):
        Filter.build(outcomes=["fine"])
    with pytest.raises(AuditQueryError, match="not a record kind"):
        Filter.build(kinds=["Model.Load"])
    with pytest.raises(AuditQueryError, match="empty"):
        Filter.build(since=NOW, until=NOW)


def test_refusals_group_by_reason_and_count_folded_repeats() -> None:
    script = day1().add("request.rejected", "2025-03-03T00:00:00.000000Z", identity="token:alice",
                        path="/api/chat", status=401, reason="no valid token")
    report = run(script.records, Refusals())
    top = report["rows"][0]
    assert (top["kind"], top["status"], top["reason"], top["count"]) == ("request.rejected", 401, "no valid token", 5)
    assert top["persons"] == ["alice", "uid:1001"] and not top["more_persons"]
    assert (top["first_ts"], top["last_ts"]) == ("2025-03-02T12:00:00.000000Z", "2025-03-03T00:00:00.000000Z")
    assert report["total"] == 6 and report["by_kind"] == {"model.load.refused": 1, "request.rejected": 5}


def test_refusal_reasons_past_the_bound_fold_into_one_row() -> None:
    script = Script()
    for i in range(30):
        script.add("request.rejected", f"2025-03-01T00:00:{i:02d}.000000Z", identity="anonymous", status=400,
                   reason=f"bad JSON at offset {i}")
    report = run(script.records, Refusals(max_groups=10))
    assert len(report["rows"]) == 11 and report["total"] == 30
    assert report["rows"][0]["reason"] == "*" and report["rows"][0]["count"] == 20


def test_the_air_gap_timeline_measures_breaches_and_names_refused_starts() -> None:
    gap = {"isolated": False, "interfaces": [{"name": "eth0", "addresses": ["10.0.0.2/24"]}], "routes": ["default"]}
    script = (Script()
              .add("engine.refused", "2025-03-01T08:00:00.000000Z", reason="network reachable", airgap=gap)
              .add("engine.refused", "2025-03-01T08:00:01.000000Z", reason="configuration changed outside")
              .add("engine.start", "2025-03-01T08:01:00.000000Z", airgap="enforced", namespace=True)
              .add("airgap.breach", "2025-03-01T09:00:00.000000Z", airgap=gap, mode="enforce")
              .add("airgap.restored", "2025-03-01T09:00:30.500000Z", mode="enforce")
              .add("airgap.unobserved", "2025-03-01T10:00:00.000000Z", reason="netlink failed", mode="enforce")
              .add("airgap.observed", "2025-03-01T10:00:10.000000Z", mode="enforce", failed_checks=3)
              .add("airgap.breach", "2025-03-01T11:00:00.000000Z", airgap=gap, mode="warn"))
    report = run(script.records, AirGapTimeline())
    assert [e["event"] for e in report["events"]] == ["refused_start", "engine_start", "breach", "restored",
                                                       "unobserved", "observed", "breach"]
    assert report["events"][0]["detail"] == "interface eth0; route default"
    assert report["events"][3]["lasted_s"] == 30.5 and report["events"][5]["lasted_s"] == 10.0
    assert (report["breaches"], report["restorations"], report["unobserved"], report["refused_starts"],
            report["breached_s"], report["open_breach"]) == (2, 1, 1, 1, 30.5, True)


def test_configuration_history_says_who_changed_what_from_what_to_what() -> None:
    operator = {"uid": 1000, "user": "operator"}
    script = (Script()
              .add("config.init", "2025-03-01T00:00:00.000000Z", digest="sha3-256:aa", config={})
              .add("config.change", "2025-03-01T01:00:00.000000Z", key="airgap.mode", old="enforce", new="warn",
                   why="testing", actor=operator)
              .add("config.drift", "2025-03-01T02:00:00.000000Z", accepted="sha3-256:bb", found="sha3-256:cc")
              .add("config.accept", "2025-03-01T03:00:00.000000Z", digest="sha3-256:cc", actor=operator,
                   changes=[{"key": "api.stall_timeout", "old": 30, "new": 60}])
              .add("config.upgrade", "2025-03-01T04:00:00.000000Z", added=["api.listen"], digest="sha3-256:dd")
              .add("appliance.upgrade", "2025-03-01T05:00:00.000000Z", direction="upgrade", forced=False,
                   **{"from": {"version": "0.4.0"}, "to": {"version": "0.5.0"}}))
    report = run(script.records, ConfigChanges())
    rows = [(r["kind"], r["person"], r["key"], r["old"], r["new"]) for r in report["rows"]]
    assert rows == [("config.init", None, "(configuration)", None, "sha3-256:aa"),
                    ("config.change", "operator", "airgap.mode", "enforce", "warn"),
                    ("config.drift", None, "(config.toml)", "sha3-256:bb", "sha3-256:cc"),
                    ("config.accept", "operator", "api.stall_timeout", 30, 60),
                    ("config.upgrade", None, "api.listen", None, "(default)"),
                    ("appliance.upgrade", None, "(appliance version)", "0.4.0", "0.5.0")]
    assert report["rows"][1]["note"] == "testing" and report["drifts"] == 1


def test_model_and_key_lifecycles_count_each_subjects_events() -> None:
    admin = {"uid": 0, "user": "root"}
    script = (Script()
              .add("trust.add", "2025-03-01T00:00:00.000000Z", key_id="sha3-256:k", name="pub", actor=admin)
              .add("model.import", "2025-03-01T00:01:00.000000Z", name="gemma", manifest="m", bytes=5, signers=["k"])
              .add("model.import.rejected", "2025-03-01T00:02:00.000000Z", bundle="/media/b", reason="unsigned")
              .add("model.load", "2025-03-01T00:03:00.000000Z", name="gemma", engine="llama_cpp")
              .add("model.unload", "2025-03-01T00:04:00.000000Z", name="gemma", reason="keep_alive")
              .add("model.load.refused", "2025-03-01T00:05:00.000000Z", model="gemma", reason="hash mismatch")
              .add("model.remove", "2025-03-01T00:06:00.000000Z", name="gemma", manifest="m")
              .add("token.create", "2025-03-01T00:07:00.000000Z", name="alice", token_id="t1", actor=admin)
              .add("token.revoke", "2025-03-01T00:08:00.000000Z", name="alice", token_id="t1", actor=admin)
              .add("trust.revoke", "2025-03-01T00:09:00.000000Z", key_id="sha3-256:k", name="pub", actor=admin)
              .add("seal.enroll", "2025-03-01T00:10:00.000000Z", auditor="ines", fingerprint="f"))
    models = run(script.records, ModelLifecycle())
    assert models["counts"] == {"bundle /media/b": {"import_rejected": 1},
                                "gemma": {"import": 1, "load": 1, "load_refused": 1, "remove": 1, "unload": 1}}
    keys = run(script.records, KeyLifecycle())
    assert [(e["event"], e["subject"], e["person"]) for e in keys["events"]] == [
        ("key_trusted", "key pub", "root"), ("token_created", "token alice", "root"),
        ("token_revoked", "token alice", "root"), ("key_revoked", "key pub", "root"),
        ("auditor_enrolled", "auditor ines", None)]


def test_open_inferences_are_bounded() -> None:
    annotator = Annotator(max_open=3)
    for i in range(10):
        annotator.facts(Record(i, "2025-03-01T00:00:00.000000Z", "inference.begin", {"id": str(i)}, "0" * 64,
                               "0" * 64))
    assert len(annotator.open) == 3 and annotator.forgotten == 7
    end = annotator.facts(Record(10, "2025-03-01T00:00:01.000000Z", "inference.end", {"id": "9"}, "0" * 64, "0" * 64))
    assert end.begun is not None and end.begun.seq == 9

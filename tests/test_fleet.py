"""`anticloud fleet verify`: real ledgers from the project's writers, collected into a fleet directory."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from anticloud.cli import cli
from anticloud.cli.fleet import Job, verify_all
from ledger import LedgerWriter, Sealer, SignedCheckpoint, append_checkpoint, sign_note
from ledger.record import seal
from tests.conftest import Made, genesis_for

SEALED_KINDS = {"config.change", "engine.start", "engine.stop"}


def fleet(tmp_path: Path, args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "fleet", "verify", *args])


def collect(fleet_dir: Path, name: str, made: Made, checkpoints: dict[str, SignedCheckpoint | str] | None = None,
            secret: bytes | None = None) -> Path:
    """What an auditor brings back from one appliance: its ledger, key, checkpoints and seal secret."""
    root = fleet_dir / name
    root.mkdir(parents=True)
    shutil.copyfile(made.path, root / "ledger.jsonl")
    (root / "appliance.pub").write_bytes(made.key.public_key().public_bytes(Encoding.PEM,
                                                                             PublicFormat.SubjectPublicKeyInfo))
    for file_name, held in (checkpoints or {}).items():
        (root / file_name).write_bytes(held.encode() if isinstance(held, str) else held.to_bytes())
    if secret is not None:
        (root / "seal.key").write_text(json.dumps({"type": "anticloud.seal.secret", "secret": secret.hex()}))
    return root


def sealed(tmp_path: Path, name: str, engine_running: bool) -> tuple[Made, bytes]:
    """An enrolled appliance whose engine started and, unless ``engine_running``, stopped cleanly."""
    key, secret = Ed25519PrivateKey.generate(), secrets.token_bytes(32)
    path = tmp_path / f"{name}.jsonl"
    LedgerWriter.create(path, genesis_for(key)).close()
    with LedgerWriter.open(path, Sealer(tmp_path / f"{name}.state", 60, SEALED_KINDS)) as w:
        w.enroll(secret, {"auditor": "ann"})
        w.append("engine.start", {"engine": "llama_cpp", "clock": {"source": "tsc", "timezone": "UTC"}})
        w.append("inference.end", {"tokens": 3})
        if not engine_running:
            w.append("engine.stop", {"reason": "shutdown"})
    return Made(path, key, b""), secret


def raw_ledger(path: Path, times: list[datetime]) -> Made:
    """A ledger built line by line with the records' own times (the writer dates them itself)."""
    key = Ed25519PrivateKey.generate()
    stamps = [t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in times]
    record, line = seal(0, "ledger.genesis", genesis_for(key), "0" * 64, stamps[0])
    lines = [line]
    for seq, ts in enumerate(stamps[1:], start=1):
        record, line = seal(seq, "test.event", {"i": seq}, record.hash, ts)
        lines.append(line)
    path.write_bytes(b"".join(lines))
    return Made(path, key, b"")


def lines_of(result: Result) -> dict[str, str]:
    return {line.split()[0]: line for line in result.output.splitlines() if line and not line.startswith("F")}


def test_an_intact_fleet_prints_one_line_each_and_exits_0(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    for name in ("alpha", "beta", "gamma"):
        collect(tmp_path / "fleet", name, make_ledger(4))
    result = fleet(tmp_path, [str(tmp_path / "fleet")])
    assert result.exit_code == 0, result.output
    assert set(lines_of(result)) == {"alpha", "beta", "gamma"}
    assert all("INTACT" in line and "head 4" in line and "records 5" in line for line in lines_of(result).values())
    assert result.output.splitlines()[-1].startswith("FLEET INTACT: 3 of 3 appliance(s) intact; no fleet finding")


def test_a_tampered_ledger_breaks_the_fleet_and_is_named(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    collect(tmp_path / "fleet", "alpha", make_ledger(4))
    beta = collect(tmp_path / "fleet", "beta", make_ledger(4))
    ledger = beta / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().replace(b"record 2", b"record 9"))
    result = fleet(tmp_path, [str(tmp_path / "fleet")])
    assert result.exit_code == 1, result.output
    assert "BROKEN" in lines_of(result)["beta"] and "at seq 3" in lines_of(result)["beta"]
    assert "INTACT" in lines_of(result)["alpha"]
    assert "not intact: beta" in result.output.splitlines()[-1]


def test_a_ledger_rolled_back_below_a_collected_checkpoint(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    made = make_ledger(4)
    old = made.path.read_bytes()
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.event", {"i": 5})
        first = append_checkpoint(writer, made.key)  # seq 6, collected at the first visit
        writer.append("test.event", {"i": 7})
        second = append_checkpoint(writer, made.key)  # seq 8, collected at the second visit
    made.path.write_bytes(old)  # the appliance is rolled back before the third visit
    root = collect(tmp_path / "fleet", "alpha", made, {"checkpoint-1.json": first})
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "visit-2.note").write_text(second.tlog or "")
    collect(tmp_path / "fleet", "beta", make_ledger(2))
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    alpha = doc["appliances"][0]
    assert alpha["name"] == "alpha" and alpha["status"] == "broken"
    assert {h["source"]: h["status"] for h in alpha["checkpoints"]} == {"checkpoint-1.json": "behind",
                                                                       "checkpoints/visit-2.note": "behind"}
    rollbacks = [f for f in doc["findings"] if f["kind"] == "rollback"]
    assert {f["evidence"]["checkpoint"]["source"] for f in rollbacks} == {"checkpoint-1.json",
                                                                         "checkpoints/visit-2.note"}
    assert all(f["appliances"] == ["alpha"] and f["evidence"]["records"] == 5 for f in rollbacks)


def test_an_older_collected_checkpoint_that_the_rewritten_ledger_no_longer_matches(
        tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    made = make_ledger(4)
    keep = made.path.read_bytes()
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.event", {"i": 5, "original": True})
        first = append_checkpoint(writer, made.key)
    made.path.write_bytes(keep)  # rolled back and rewritten: another record 5, a new checkpoint after it
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.event", {"i": 5, "original": False})
        writer.append("test.event", {"i": 6})
        second = append_checkpoint(writer, made.key)
    collect(tmp_path / "fleet", "alpha", made, {"a-first.json": first, "b-second.json": second,
                                                 "a-first.note": first.tlog or "",
                                                 "b-second.note": second.tlog or ""})
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--json"])
    doc = json.loads(result.output)
    statuses = {h["source"]: h["status"] for h in doc["appliances"][0]["checkpoints"]}
    assert statuses == {"a-first.json": "differs", "a-first.note": "differs", "b-second.json": "matched",
                        "b-second.note": "matched"}
    assert doc["appliances"][0]["verdict"]["verdict"] == "intact", "the ledger itself verifies"
    assert result.exit_code == 1 and len([f for f in doc["findings"] if f["kind"] == "rollback"]) == 2


def test_two_directories_claiming_one_identity(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    made = make_ledger(3)
    collect(tmp_path / "fleet", "alpha", made)
    collect(tmp_path / "fleet", "alpha-copy", made)
    other_ledger_same_key = make_ledger(3, key=made.key)
    collect(tmp_path / "fleet", "beta", other_ledger_same_key)
    result = fleet(tmp_path, [str(tmp_path / "fleet")])
    assert result.exit_code == 8, result.output
    findings = [line for line in result.output.splitlines() if line.startswith("FINDING shared_identity")]
    assert any("alpha, alpha-copy claim one ledger id" in line for line in findings)
    assert any("alpha, alpha-copy, beta claim one appliance key" in line for line in findings)
    assert result.output.splitlines()[-1].startswith("FLEET FLEET FINDINGS: 3 of 3 appliance(s) intact")


def test_an_appliance_that_stopped_sealing(tmp_path: Path) -> None:
    running, running_secret = sealed(tmp_path, "running", engine_running=True)
    stopped, stopped_secret = sealed(tmp_path, "stopped", engine_running=False)
    collect(tmp_path / "fleet", "running", running, secret=running_secret)
    collect(tmp_path / "fleet", "stopped", stopped, secret=stopped_secret)
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert fleet(tmp_path, [str(tmp_path / "fleet"), "--now", soon]).exit_code == 0
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--now", later, "--json"])
    assert result.exit_code == 8, result.output
    doc = json.loads(result.output)
    stale = [f for f in doc["findings"] if f["kind"] == "stopped_sealing"]
    assert [f["appliances"] for f in stale] == [["running"]], "a stopped engine owes no seal for a day"
    assert stale[0]["evidence"]["limit_s"] == 120 and stale[0]["evidence"]["engine_running"] is True
    assert doc["appliances"][0]["verdict"]["seals"]["tags_checked"] is True, "the collected seal.key was used"
    two_days = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    text = fleet(tmp_path, [str(tmp_path / "fleet"), "--now", two_days])
    assert text.exit_code == 8 and "STALE" in lines_of(text)["stopped"]
    assert {line.split(": ")[1] for line in text.output.splitlines()
            if line.startswith("FINDING stopped_sealing")} == {"running", "stopped"}
    strict = fleet(tmp_path, [str(tmp_path / "fleet"), "--now", soon, "--stale-after", "1s"])
    assert strict.exit_code == 8 and all("STALE" in line for line in lines_of(strict).values()), strict.output


def test_clock_skew_ahead_of_the_auditor_and_running_backwards(tmp_path: Path,
                                                               make_ledger: Callable[..., Made]) -> None:
    now = datetime.now(UTC)
    ahead = raw_ledger(tmp_path / "ahead.jsonl", [now, now + timedelta(hours=1)])
    backwards = raw_ledger(tmp_path / "back.jsonl", [now - timedelta(hours=2), now - timedelta(hours=1),
                                                     now - timedelta(hours=1, minutes=30), now - timedelta(minutes=5)])
    small_steps = raw_ledger(tmp_path / "fine.jsonl", [now - timedelta(minutes=3), now - timedelta(minutes=4)])
    for name, made in (("ahead", ahead), ("backwards", backwards), ("fine", small_steps)):
        collect(tmp_path / "fleet", name, made)
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--now", now.isoformat(), "--json"])
    assert result.exit_code == 8, result.output
    skew = {f["appliances"][0]: f["evidence"] for f in json.loads(result.output)["findings"]}
    assert set(skew) == {"ahead", "backwards"}, "a step back within the tolerance is no finding"
    assert skew["ahead"]["rule"] == "ahead_of_auditor" and skew["ahead"]["ahead_s"] == pytest.approx(3600, abs=1)
    assert (skew["backwards"]["rule"], skew["backwards"]["worst_seq"], skew["backwards"]["worst_s"]) == (
        "ran_backwards", 2, 1800)


def test_json_holds_every_verdict_and_the_fleet(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    collect(tmp_path / "fleet", "alpha", make_ledger(2))
    (tmp_path / "fleet" / "empty").mkdir()
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--json"])
    assert result.exit_code == 2, result.output
    doc = json.loads(result.output)
    assert doc["fleet"]["exit_code"] == 2 and doc["fleet"]["statuses"] == {"intact": 1, "unreadable": 1}
    alpha, empty = doc["appliances"]
    assert alpha["verdict"]["verdict"] == "intact" and alpha["verdict"]["records"] == 3
    assert alpha["facts"]["engine_running"] is False and empty["verdict"] is None
    assert empty["error"].endswith("empty/ledger.jsonl: missing (every appliance directory holds its ledger.jsonl)")


@pytest.mark.parametrize(("content", "named"), [(b"{not json", "checkpoint.json"),
                                                (b"nonsense\n", "visit.note")])
def test_a_malformed_collected_file_is_named_in_one_line(tmp_path: Path, make_ledger: Callable[..., Made],
                                                         content: bytes, named: str) -> None:
    root = collect(tmp_path / "fleet", "alpha", make_ledger(2))
    (root / named).write_bytes(content)
    result = fleet(tmp_path, [str(tmp_path / "fleet")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "UNREADABLE" in lines_of(result)["alpha"] and str(root / named) in lines_of(result)["alpha"]


def test_an_unreadable_fleet_directory_is_one_line(tmp_path: Path) -> None:
    result = fleet(tmp_path, [str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "cannot read fleet directory" in result.output and "nowhere" in result.output
    (tmp_path / "bare").mkdir()
    assert "no appliance directories" in fleet(tmp_path, [str(tmp_path / "bare")]).output


def test_parallel_equals_serial(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    made = make_ledger(6)
    with LedgerWriter.open(made.path) as writer:
        held = append_checkpoint(writer, made.key)
    collect(tmp_path / "fleet", "alpha", made, {"checkpoint.json": held})
    for name in ("beta", "gamma", "delta"):
        collect(tmp_path / "fleet", name, make_ledger(5))
    bad = tmp_path / "fleet" / "gamma" / "ledger.jsonl"
    bad.write_bytes(bad.read_bytes()[:-5])  # a torn tail
    now = datetime.now(UTC)
    jobs = [Job(d.name, d, now, 1) for d in sorted((tmp_path / "fleet").iterdir())]

    def summary(outcomes: list[Any]) -> list[Any]:
        return [(o.name, o.exit_code, o.verdict.to_json(), o.facts.to_json(), o.held) for o in outcomes]

    assert summary(verify_all(jobs, 2)) == summary(verify_all(jobs, 1))
    serial = fleet(tmp_path, [str(tmp_path / "fleet"), "--jobs", "1", "--now", now.isoformat()])
    parallel = fleet(tmp_path, [str(tmp_path / "fleet"), "--jobs", "2", "--now", now.isoformat()])
    assert serial.output == parallel.output and serial.exit_code == parallel.exit_code == 3


def test_a_collected_note_signed_by_another_key_is_refused(tmp_path: Path, make_ledger: Callable[..., Made]) -> None:
    made = make_ledger(3)
    with LedgerWriter.open(made.path) as writer:
        held = append_checkpoint(writer, made.key)
        newer = append_checkpoint(writer, made.key)
    assert held.tlog is not None and newer.tlog is not None
    text = held.tlog.split("\n\n")[0] + "\n"
    forged = sign_note(text, text.split("\n")[0], Ed25519PrivateKey.generate())
    collect(tmp_path / "fleet", "alpha", made, {"old.note": forged, "newer.note": newer.tlog})
    result = fleet(tmp_path, [str(tmp_path / "fleet"), "--json"])
    doc = json.loads(result.output)
    assert {h["source"]: h["status"] for h in doc["appliances"][0]["checkpoints"]} == {
        "old.note": "bad_signature", "newer.note": "matched"}
    assert result.exit_code == 1 and [f["kind"] for f in doc["findings"]] == ["unverified_checkpoint"]

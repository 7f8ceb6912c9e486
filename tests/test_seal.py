"""Forward-secure seals: the key schedule, the writer's epochs and crash points, and the insider's forgeries."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import LedgerCorruptError, LedgerWriter, Sealer, append_checkpoint, verify_file
from ledger.record import parse_line, seal
from ledger.seal import SealCheck, fingerprint, kmac256, next_key, tag
from ledger.sealstate import SealState
from tests.conftest import genesis_for
from tools import verify_ledger

TRIGGERS = {"config.change"}


class Appliance:
    """A ledger, its appliance key and its sealing state, as a home holds them."""

    def __init__(self, root: Path) -> None:
        self.root, self.ledger, self.state = root, root / "ledger.jsonl", root / "seal.state"
        self.key = Ed25519PrivateKey.generate()
        LedgerWriter.create(self.ledger, genesis_for(self.key)).close()
        self.secret = secrets.token_bytes(32)

    def writer(self, interval: int = 60) -> LedgerWriter:
        return LedgerWriter.open(self.ledger, Sealer(self.state, interval, TRIGGERS))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ledger.read_bytes().splitlines()]

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.records()]


@pytest.fixture
def appliance(tmp_path: Path) -> Appliance:
    return Appliance(tmp_path)


@pytest.fixture
def enrolled(appliance: Appliance) -> Appliance:
    with appliance.writer() as w:
        w.append("note", {"before": "enrollment"})
        w.enroll(appliance.secret, {"auditor": "ann"})
        for i in range(3):
            w.append("note", {"i": i})
        w.append("config.change", {"key": "x"})  # a trigger: sealed at once
        w.append("note", {"after": "trigger"})
    return appliance  # closing sealed the last note


def test_the_stdlib_kmac_and_pycryptodome_agree_on_the_key_schedule() -> None:
    key = secrets.token_bytes(32)
    for custom in (b"anticloud.seal.evolve", b"anticloud.seal.tag-key", b"anticloud.seal"):
        data = secrets.token_bytes(50)
        assert verify_ledger.kmac256(key, data, 32, custom) == kmac256(key, data, custom)
    assert next_key(key) != key and next_key(key) != next_key(next_key(key))


def test_an_enrolled_ledger_seals_after_triggers_on_demand_and_at_a_clean_stop(enrolled: Appliance) -> None:
    kinds = enrolled.kinds()
    assert kinds[1:4] == ["note", "seal.enroll", "ledger.seal"], "epoch 0 is sealed with the enrollment"
    assert kinds[kinds.index("config.change") + 1] == "ledger.seal", "a trigger is sealed at once"
    assert kinds[-2:] == ["note", "ledger.seal"], "the clean stop sealed what was left"
    seals = [r["data"] for r in enrolled.records() if r["kind"] == "ledger.seal"]
    assert [s["epoch"] for s in seals] == [0, 1, 2]
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert verdict.status == "intact" and verdict.seals is not None
    report = verdict.seals
    assert report.checked and report.sealed_epoch == 2 and report.sealed_seq == verdict.head_seq
    assert report.unsealed_records == 0


def test_nothing_is_sealed_before_enrollment_and_the_verifier_says_so(appliance: Appliance) -> None:
    with appliance.writer() as w:
        w.append("config.change", {"key": "x"})
    assert "ledger.seal" not in appliance.kinds() and not appliance.state.exists()
    verdict = verify_file(appliance.ledger)
    assert verdict.status == "intact" and verdict.seals is None
    missing = verify_file(appliance.ledger, seal_secret=appliance.secret)
    assert missing.fault is not None and missing.fault.reason == "seal_enrollment_missing"


def test_the_secret_and_every_past_key_are_gone_from_the_home(appliance: Appliance) -> None:
    keys = [appliance.secret]
    with appliance.writer() as w:
        w.enroll(appliance.secret, {"auditor": "ann"})
        for _ in range(3):
            w.seal()
            keys.append(next_key(keys[-1]))
    current = next_key(keys[-1])
    held = b"".join(p.read_bytes() for p in appliance.root.iterdir() if p.is_file())
    for past in keys:
        assert past not in held and past.hex().encode() not in held, "a past epoch's key is still in the home"
    assert current.hex().encode() in appliance.state.read_bytes(), "only the open epoch's key is kept"
    assert os.stat(appliance.state).st_mode & 0o777 == 0o600


def test_without_the_secret_the_tags_are_not_checked_and_the_verdict_says_so(enrolled: Appliance) -> None:
    verdict = verify_file(enrolled.ledger)
    assert verdict.status == "intact" and verdict.seals is not None and not verdict.seals.checked
    assert verdict.to_json()["seals"]["tags_checked"] is False


# -- crash points: each one recovered on the next open -------------------------------------------------


class Crash(Exception):
    pass


def crash_at(monkeypatch: pytest.MonkeyPatch, method: str, after: bool) -> None:
    real = getattr(SealState, method)

    def dying(self: SealState, *args: Any) -> Any:
        if after:
            real(self, *args)
        raise Crash(method)

    monkeypatch.setattr(SealState, method, dying)


@pytest.mark.parametrize(("method", "after"), [
    ("advance", False),   # the seal is durable, the next key not yet written
    ("begin", True),      # the next key is durable beside the state, not yet installed
    ("_install", False),  # as above, the old key not yet zeroed
    ("_zero", True),      # the old key zeroed, the next one not yet renamed into place
])
def test_every_crash_point_between_a_seal_and_its_next_key_is_recovered(
        enrolled: Appliance, monkeypatch: pytest.MonkeyPatch, method: str, after: bool) -> None:
    with monkeypatch.context() as m:
        crash_at(m, method, after)
        writer = enrolled.writer()
        with pytest.raises(Crash):
            writer.seal()
        os.close(writer._fd)  # the process dies: nothing else runs
    with enrolled.writer() as w:  # recovery, then more sealing on the recovered state
        w.append("config.change", {"key": "y"})
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert verdict.status == "intact", verdict.fault
    assert verdict.seals is not None and verdict.seals.unsealed_records == 0
    assert not (enrolled.root / "seal.state.next").exists()


def test_a_torn_next_state_is_discarded_and_redone(enrolled: Appliance) -> None:
    (enrolled.root / "seal.state.next").write_bytes(b'{"enrollment": "kmac')
    with enrolled.writer() as w:
        w.seal()
    assert verify_file(enrolled.ledger, seal_secret=enrolled.secret).status == "intact"


def test_a_state_that_disagrees_with_the_ledger_refuses_in_one_line(enrolled: Appliance) -> None:
    enrolled.state.unlink()
    with pytest.raises(LedgerCorruptError, match="sealing state is missing") as missing:
        enrolled.writer()
    assert "\n" not in str(missing.value)
    SealState(enrolled.state).begin(SealState(enrolled.state).read() or _epoch_zero(enrolled))
    os.replace(enrolled.root / "seal.state.next", enrolled.state)  # epoch 0's key: far behind the ledger
    with pytest.raises(LedgerCorruptError, match="epoch 0 but the ledger's next epoch is"):
        enrolled.writer()


def _epoch_zero(app: Appliance) -> Any:
    from ledger.sealstate import Epoch
    return Epoch(fingerprint(app.secret), 0, app.secret)


def test_processes_appending_together_share_one_chain_of_seals(enrolled: Appliance) -> None:
    first, second = enrolled.writer(), enrolled.writer()
    for i in range(5):
        (first if i % 2 else second).append("config.change", {"i": i})
    first.seal()
    second.seal()
    first.close()
    second.close()
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert verdict.status == "intact", verdict.fault
    assert verdict.seals is not None and verdict.seals.seals == enrolled.kinds().count("ledger.seal")


def test_re_enrollment_closes_the_chain_and_each_secret_verifies_its_own(enrolled: Appliance) -> None:
    later = secrets.token_bytes(32)
    with enrolled.writer() as w:
        w.enroll(later, {"auditor": "bob"})
        w.append("config.change", {"key": "z"})
    old = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    new = verify_file(enrolled.ledger, seal_secret=later)
    assert old.status == new.status == "intact"
    assert old.seals is not None and old.seals.closed and old.seals.unsealed_records == 0
    assert new.seals is not None and not new.seals.closed and new.seals.sealed_seq == new.head_seq


# -- the insider: root, the appliance key and the sealing state at time T ---------------------------------


def rewrite(app: Appliance, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """What root with the appliance key can do: change the records, then re-hash, re-link and
    re-sign everything after, checkpoints included (the seals' tags it cannot recompute)."""
    records = change(app.records())
    lines: list[bytes] = []
    prev, first = "0" * 64, 0
    for seq, r in enumerate(records):
        data = r["data"]
        if r["kind"] == "ledger.checkpoint":
            data = _resigned(app, records[seq - 1], lines, prev)
        if r["kind"] == "seal.enroll":
            first = seq
        if r["kind"] == "ledger.seal":  # every claim made consistent with the new chain: only the tag is not
            data, first = {**data, "first_seq": first, "last_seq": seq - 1, "last_hash": prev}, seq + 1
        record, line = seal(seq, r["kind"], data, prev, r["ts"])
        lines.append(line)
        prev = record.hash
    app.ledger.write_bytes(b"".join(lines))


def _resigned(app: Appliance, before: dict[str, Any], lines: list[bytes], prev: str) -> dict[str, Any]:
    from ledger.checkpoint import Checkpoint, sign_checkpoint
    genesis = parse_line(lines[0][:-1])
    head = parse_line(lines[-1][:-1])
    cp = Checkpoint(genesis.data["ledger_id"], head.seq, head.hash, head.ts, genesis.data["key_id"])
    return sign_checkpoint(cp, app.key).to_json()


def with_checkpoint(app: Appliance) -> None:
    with LedgerWriter.open(app.ledger) as w:
        append_checkpoint(w, app.key)


def _note_index(records: list[dict[str, Any]]) -> int:
    return next(i for i, r in enumerate(records) if r["kind"] == "note" and r["data"].get("i") == 1)


INSIDER_ROWS: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "changed": lambda rs: [{**r, "data": {"i": 99}} if i == _note_index(rs) else r for i, r in enumerate(rs)],
    "removed": lambda rs: [r for i, r in enumerate(rs) if i != _note_index(rs)],
    "inserted": lambda rs: [*rs[:_note_index(rs)], {**rs[_note_index(rs)], "data": {"i": 42}}, *rs[_note_index(rs):]],
    "reordered": lambda rs: [*rs[:_note_index(rs) - 1], rs[_note_index(rs)], rs[_note_index(rs) - 1],
                             *rs[_note_index(rs) + 1:]],
}


@pytest.mark.parametrize("row", sorted(INSIDER_ROWS))
def test_the_insider_rewriting_a_sealed_record_breaks_its_seal_though_the_chain_verifies(
        enrolled: Appliance, row: str) -> None:
    with_checkpoint(enrolled)
    rewrite(enrolled, INSIDER_ROWS[row])
    chain_only = verify_file(enrolled.ledger)
    sealed = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert sealed.status == "broken" and sealed.fault is not None
    assert chain_only.status == "intact", "hashes, links and signatures were all remade"
    assert sealed.fault.reason == "seal_bad_tag", sealed.fault
    assert sealed.fault.expected is None, "the tag that would verify is never shown: the insider could copy it in"
    first_seal = next(r["seq"] for r in enrolled.records() if r["kind"] == "ledger.seal" and r["data"]["epoch"] == 1)
    assert sealed.fault.seq == first_seal, "the epoch that held the record is named"


def test_the_insider_stripping_and_remaking_every_seal_with_the_current_key_fails(enrolled: Appliance) -> None:
    state = SealState(enrolled.state).read()
    assert state is not None  # what root holds at T: the open epoch's key

    def remade(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, epoch, prev_tag = [], 0, "kmac256:" + "0" * 64
        for r in records:
            if r["kind"] == "ledger.seal":
                content = {**{k: v for k, v in r["data"].items() if k != "tag"}, "epoch": epoch, "prev_seal": prev_tag}
                r = {**r, "data": {**content, "tag": tag(state.key, content)}}
                epoch, prev_tag = epoch + 1, r["data"]["tag"]
            out.append(r)
        return out

    rewrite(enrolled, remade)
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert verdict.fault is not None and verdict.fault.reason == "seal_bad_tag" and verdict.fault.seq == 3


def test_seals_stripped_over_more_than_the_interval_are_overdue(enrolled: Appliance) -> None:
    def stripped(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [r for i, r in enumerate(records) if r["kind"] != "ledger.seal" or i < 4]
        late = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return [*kept, {"kind": "note", "data": {"much": "later"}, "ts": late}]

    rewrite(enrolled, stripped)
    verdict = verify_file(enrolled.ledger)  # structure alone: no secret needed
    assert verdict.fault is not None and verdict.fault.reason == "seal_overdue"


def cut_after_epoch_1(app: Appliance) -> None:
    """Truncation at an epoch boundary: everything after the seal of epoch 1 is gone."""
    records = app.records()
    cut = next(i for i, r in enumerate(records) if r["kind"] == "ledger.seal" and r["data"]["epoch"] == 1)
    rewrite(app, lambda rs: rs[:cut + 1])


def forge_after_cut(app: Appliance) -> int:
    """The insider's continuation after `cut_after_epoch_1`: a record, sealed as epoch 2 with the
    key held at T. Returns the forged seal's seq."""
    state = SealState(app.state).read()
    assert state is not None
    cut_after_epoch_1(app)
    head = parse_line(app.ledger.read_bytes().splitlines()[-1])
    record, line = seal(head.seq + 1, "note", {"forged": True}, head.hash)
    data = {"enrollment": state.enrollment, "epoch": 2, "first_seq": record.seq, "last_seq": record.seq,
            "last_hash": record.hash, "prev_seal": head.data["tag"], "interval": 60}
    forged, seal_line = seal(record.seq + 1, "ledger.seal", {**data, "tag": tag(state.key, data)}, record.hash)
    with app.ledger.open("ab") as handle:
        handle.write(line + seal_line)
    return forged.seq


def test_truncation_at_an_epoch_boundary_then_more_records_cannot_be_sealed(enrolled: Appliance) -> None:
    forged = forge_after_cut(enrolled)
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    assert verdict.fault is not None and (verdict.fault.reason, verdict.fault.seq) == ("seal_bad_tag", forged)


def test_truncation_with_nothing_after_shows_only_as_a_stale_last_seal(enrolled: Appliance) -> None:
    cut_after_epoch_1(enrolled)
    later = datetime.now(UTC) + timedelta(hours=1)
    verdict = verify_file(enrolled.ledger, seal_secret=enrolled.secret, now=later)
    assert verdict.status == "intact", "not detectable from the file alone"
    assert verdict.seals is not None and verdict.seals.stale_seconds is not None
    assert verdict.seals.stale_seconds > 2 * 60


def test_a_seal_claiming_another_epoch_is_refused_by_its_position() -> None:
    secret = secrets.token_bytes(32)
    check = SealCheck(secret)
    enroll, _ = seal(1, "seal.enroll", {"auditor": "ann", "fingerprint": fingerprint(secret), "interval": 60},
                     "0" * 64)
    check.feed(enroll)
    key1 = next_key(secret)
    data = {"enrollment": fingerprint(secret), "epoch": 1, "first_seq": 1, "last_seq": 1, "last_hash": enroll.hash,
            "prev_seal": "kmac256:" + "0" * 64, "interval": 60}
    claimed, _ = seal(2, "ledger.seal", {**data, "tag": tag(key1, data)}, enroll.hash)
    with pytest.raises(Exception, match="epoch"):
        check.feed(claimed)


def test_a_lost_state_is_abandoned_on_record_and_the_old_auditor_sees_where_sealing_ended(enrolled: Appliance) -> None:
    enrolled.state.unlink()  # lost with a disk, say
    with pytest.raises(LedgerCorruptError, match="--abandon"):
        enrolled.writer()
    later = secrets.token_bytes(32)
    with LedgerWriter.open(enrolled.ledger, Sealer(enrolled.state, 60, TRIGGERS, abandon=True)) as w:
        w.enroll(later, {"auditor": "bob"})
    enrollment = next(r for r in reversed(enrolled.records()) if r["kind"] == "seal.enroll")
    assert enrollment["data"]["abandons"] == fingerprint(enrolled.secret)
    old = verify_file(enrolled.ledger, seal_secret=enrolled.secret)
    # Abandoning needs no key, so the old auditor is told, not reassured: nothing after it is theirs.
    assert old.fault is not None and (old.fault.reason, old.fault.seq) == ("seal_abandoned", enrollment["seq"])
    unkeyed = verify_file(enrolled.ledger)
    assert unkeyed.status == "intact" and unkeyed.seals is not None
    assert any("abandoned unsealed" in note for note in unkeyed.seals.notes)
    new = verify_file(enrolled.ledger, seal_secret=later)
    assert new.status == "intact" and new.seals is not None and new.seals.unsealed_records == 0


def test_a_new_enrollment_that_neither_closes_nor_abandons_the_open_chain_is_refused(enrolled: Appliance) -> None:
    other = secrets.token_bytes(32)
    head = parse_line(enrolled.ledger.read_bytes().splitlines()[-1])
    _, line = seal(head.seq + 1, "seal.enroll", {"auditor": "eve", "fingerprint": fingerprint(other), "interval": 60},
                   head.hash)
    with enrolled.ledger.open("ab") as handle:
        handle.write(line)
    verdict = verify_file(enrolled.ledger)
    assert verdict.fault is not None and verdict.fault.reason == "seal_unenrolled"


@pytest.mark.parametrize("durable", [False, True])
def test_a_crash_during_enrollment_leaves_the_old_chain_or_the_new_one_never_a_mix(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    """Killed after the next state was written, before (or after) the seal.enroll record was durable."""
    real = LedgerWriter._write_locked

    def dying(self: LedgerWriter, kind: str, data: dict[str, Any]) -> Any:
        if kind == "seal.enroll":
            if durable:
                real(self, kind, data)
            raise Crash(kind)
        return real(self, kind, data)

    with monkeypatch.context() as m:
        m.setattr(LedgerWriter, "_write_locked", dying)
        writer = appliance.writer()
        with pytest.raises(Crash):
            writer.enroll(appliance.secret, {"auditor": "ann"})
        os.close(writer._fd)
    appliance.writer().close()  # recovery: the pending state is installed (and sealed at once), or discarded
    held = b"".join(p.read_bytes() for p in appliance.root.iterdir() if p.is_file())
    assert appliance.secret not in held and appliance.secret.hex().encode() not in held
    with appliance.writer() as w:
        w.append("config.change", {"key": "x"})
    next_state = appliance.root / "seal.state.next"
    assert not next_state.exists()
    verdict = verify_file(appliance.ledger, seal_secret=appliance.secret)
    if durable:
        assert verdict.status == "intact" and verdict.seals is not None and verdict.seals.seals >= 1
        assert verdict.seals.unsealed_records == 0
    else:
        assert "seal.enroll" not in appliance.kinds() and not appliance.state.exists()
        assert verdict.fault is not None and verdict.fault.reason == "seal_enrollment_missing"


def test_an_enrollment_with_missing_or_extra_members_is_malformed(enrolled: Appliance) -> None:
    def forged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "data": {"fingerprint": r["data"]["fingerprint"], "note": "x"}} if r["kind"] == "seal.enroll"
                else r for r in records]

    rewrite(enrolled, forged)
    verdict = verify_file(enrolled.ledger)
    assert verdict.fault is not None and verdict.fault.reason == "seal_malformed"


def test_a_final_seal_the_state_did_not_make_is_refused_not_obeyed(enrolled: Appliance) -> None:
    state = SealState(enrolled.state).read()
    assert state is not None
    head = parse_line(enrolled.ledger.read_bytes().splitlines()[-1])
    data = {"enrollment": state.enrollment, "epoch": state.number, "first_seq": head.seq + 1, "last_seq": head.seq,
            "last_hash": head.hash, "prev_seal": head.data["tag"], "interval": 60, "final": True,
            "tag": "kmac256:" + "ab" * 32}
    _, line = seal(head.seq + 1, "ledger.seal", data, head.hash)
    with enrolled.ledger.open("ab") as handle:
        handle.write(line)
    with pytest.raises(LedgerCorruptError, match="does not verify with the sealing state's key"):
        enrolled.writer()
    assert enrolled.state.exists(), "a forged final seal must not make the appliance stop sealing"


def test_a_writer_keeps_no_sealing_key_between_its_locked_sections(enrolled: Appliance) -> None:
    idle = enrolled.writer()
    try:
        with enrolled.writer() as busy:
            for _ in range(3):
                busy.seal()
        assert idle._sealer is not None and idle._sealer._epoch is not None
        assert idle._sealer._epoch.key == b"", "an idle engine must not hold a key others have evolved past"
        idle.append("config.change", {"key": "after"})  # reads the state others moved on, and seals with it
    finally:
        idle.close()
    assert verify_file(enrolled.ledger, seal_secret=enrolled.secret).status == "intact"

"""The writer on real files with real fsync: recovery, fail-closed errors, group commit, processes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    LedgerCorruptError,
    LedgerError,
    LedgerExistsError,
    LedgerPoisonedError,
    LedgerWriteError,
    LedgerWriter,
    Record,
    append_checkpoint,
    verify_file,
)
from ledger.record import sha3_hex
from tests.waiting import join, poll

ROOT = Path(__file__).resolve().parent.parent


def kinds(path: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in path.read_bytes().splitlines()]


def test_create_refuses_to_overwrite(make_ledger: Any) -> None:
    made = make_ledger(1)
    before = made.path.read_bytes()
    with pytest.raises(LedgerExistsError):
        LedgerWriter.create(made.path, {"ledger_id": "0" * 32})
    assert made.path.read_bytes() == before


def test_torn_tail_at_every_offset_is_reported_then_recovered(make_ledger: Any) -> None:
    made = make_ledger(3)
    whole = made.path.read_bytes()
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start + 1, len(whole)):
        made.path.write_bytes(whole[:cut])
        for leftover in made.path.parent.glob("*.torn-*"):
            leftover.unlink()
        verdict = verify_file(made.path)
        assert verdict.status == "torn" and verdict.exit_code == 3
        assert verdict.torn is not None and (verdict.torn.offset, verdict.torn.length) == (last_start, cut - last_start)

        LedgerWriter.open(made.path).close()
        quarantine = made.path.with_name(f"{made.path.name}.torn-{last_start}")
        assert quarantine.read_bytes() == whole[last_start:cut]
        after = made.path.read_bytes()
        assert after[:last_start] == whole[:last_start], "earlier bytes must never change"
        recovered = json.loads(after.splitlines()[-1])
        assert recovered["kind"] == "ledger.recovered"
        assert recovered["data"] == {"offset": last_start, "length": cut - last_start,
                                     "sha3_256": "sha3-256:" + sha3_hex(whole[last_start:cut]),
                                     "quarantine": quarantine.name}
        assert verify_file(made.path).status == "intact"


def test_recovery_interrupted_after_truncation_is_finished_on_next_open(make_ledger: Any) -> None:
    made = make_ledger(2)
    size = made.path.stat().st_size
    torn = b'{"data":{"half'
    made.path.with_name(f"{made.path.name}.torn-{size}").write_bytes(torn)
    with LedgerWriter.open(made.path) as writer:
        assert writer.head.kind == "ledger.recovered"
        assert writer.head.data["length"] == len(torn)
    with LedgerWriter.open(made.path):
        pass  # a second open must not record the same recovery again
    assert kinds(made.path).count("ledger.recovered") == 1


def test_quarantine_file_is_never_overwritten(make_ledger: Any) -> None:
    made = make_ledger(1)
    size = made.path.stat().st_size
    with open(made.path, "ab") as handle:
        handle.write(b'{"torn')
    made.path.with_name(f"{made.path.name}.torn-{size}").write_bytes(b"other bytes")
    with pytest.raises(LedgerCorruptError):
        LedgerWriter.open(made.path)
    assert made.path.with_name(f"{made.path.name}.torn-{size}").read_bytes() == b"other bytes"


def test_writer_refuses_to_chain_onto_a_bad_tail(make_ledger: Any) -> None:
    made = make_ledger(2)
    data = made.path.read_bytes()
    made.path.write_bytes(data[:-10] + b"X" + data[-9:])
    with pytest.raises(LedgerCorruptError):
        LedgerWriter.open(made.path)


def test_writer_notices_a_ledger_shrinking_under_it(make_ledger: Any) -> None:
    made = make_ledger(2)
    with LedgerWriter.open(made.path) as writer:
        data = made.path.read_bytes()
        os.truncate(made.path, len(data) - len(data.splitlines(keepends=True)[-1]))
        with pytest.raises(LedgerCorruptError, match="shrank"):
            writer.append("test.event", {})


def test_a_failed_sync_raises_and_poisons_until_reopened(make_ledger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_ledger(1)
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with LedgerWriter.open(made.path) as writer:
        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(LedgerWriteError, match="Input/output error"):
            writer.append("test.event", {"n": 1})
        monkeypatch.setattr(os, "fdatasync", real)
        with pytest.raises(LedgerPoisonedError):  # the disk is fine again, but the writer is not
            writer.append("test.event", {"n": 2})
        writer.reopen()
        writer.append("test.event", {"n": 3})
    verdict = verify_file(made.path)
    assert verdict.status == "intact"
    # The unacknowledged record may or may not survive a failed sync; the refused one never exists.
    assert [json.loads(x)["data"].get("n") for x in made.path.read_bytes().splitlines()[2:]] in ([1, 3], [3])


def test_group_commit_shares_one_sync_among_waiting_threads(make_ledger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_ledger(0)
    real = os.fdatasync
    entered, release = threading.Event(), threading.Event()
    syncs: list[int] = []

    def gated(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:
            entered.set()
            if not release.wait(10):
                raise AssertionError("the test never released the leader's sync")
        real(fd)

    with LedgerWriter.open(made.path) as writer:
        monkeypatch.setattr(os, "fdatasync", gated)
        first = threading.Thread(target=writer.append, args=("test.first", {}))
        first.start()
        assert entered.wait(10), "the first append never reached its sync"
        others = [threading.Thread(target=writer.append, args=("test.other", {"i": i})) for i in range(7)]
        for t in others:
            t.start()
        poll(lambda: len(writer._pending) >= 7, 10, "all seven appends to queue behind the leader's sync",
             interval=0.001)
        release.set()
        for t in [first, *others]:
            join(t, 10, "an append to return after the shared sync")
    assert len(syncs) == 2, "seven waiting appends must share the second sync"
    assert kinds(made.path)[1:] == ["test.first"] + ["test.other"] * 7
    assert verify_file(made.path).status == "intact"


def test_eight_threads_append_one_valid_chain(make_ledger: Any) -> None:
    made = make_ledger(0)
    with LedgerWriter.open(made.path) as writer:
        threads = [threading.Thread(target=lambda t=t: [writer.append("test.thread", {"t": t, "i": i})
                                                        for i in range(250)]) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            join(t, 120, "a thread's 250 appends")
    verdict = verify_file(made.path)
    assert verdict.status == "intact" and verdict.records == 2001


WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ledger import LedgerWriter
    path, proc, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with LedgerWriter.open(path) as writer:
        for i in range(count):
            writer.append("test.proc", {"proc": proc, "i": i})
""")


@pytest.mark.slow
def test_four_processes_by_two_thousand_appends(make_ledger: Any) -> None:
    made = make_ledger(0)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(made.path), str(p), "2000"], cwd=ROOT)
             for p in range(4)]
    assert [p.wait(300) for p in procs] == [0, 0, 0, 0]
    verdict = verify_file(made.path)
    assert verdict.status == "intact", verdict.fault
    assert verdict.records == 8001
    seen: dict[int, list[int]] = {p: [] for p in range(4)}
    for line in made.path.read_bytes().splitlines()[1:]:
        data = json.loads(line)["data"]
        seen[data["proc"]].append(data["i"])
    assert all(seen[p] == list(range(2000)) for p in range(4)), "every process's appends, in its own order"


FULL_DISK = textwrap.dedent("""
    import json, os, secrets, sys
    from pathlib import Path
    from ledger import LedgerWriter, LedgerWriteError, LedgerPoisonedError, verify_file
    from tests.disk import fill
    from tests.conftest import genesis_for
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    mnt = Path(sys.argv[1])
    os.system(f"mount -t tmpfs -o size=256k tmpfs {mnt}")
    path = mnt / "ledger.jsonl"
    writer = LedgerWriter.create(path, genesis_for(Ed25519PrivateKey.generate()))
    filler = mnt / "filler"
    fill(filler)
    out = {"acked": 0}
    try:
        while True:
            writer.append("test.fill", {"pad": "y" * 300}); out["acked"] += 1
    except LedgerWriteError as exc:
        out["error"] = str(exc)
    try:
        writer.append("test.fill", {})
    except LedgerPoisonedError:
        out["poisoned"] = True
    out["full_verdict"] = verify_file(path).status
    filler.unlink()
    writer.reopen()
    writer.append("test.after", {})
    out["kinds"] = [json.loads(x)["kind"] for x in path.read_bytes().splitlines()]
    out["final_verdict"] = verify_file(path).status
    print(json.dumps(out))
""")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_full_disk_refuses_loses_nothing_and_resumes_after_reopen(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = subprocess.run(["unshare", "-rm", sys.executable, "-c", FULL_DISK, str(mnt)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert "No space left on device" in out["error"]
    assert out["poisoned"] is True
    assert out["full_verdict"] in ("intact", "torn"), "a full disk may tear the tail, never break the chain"
    assert out["final_verdict"] == "intact"
    assert out["kinds"][-1] == "test.after"
    assert out["kinds"].count("test.fill") >= out["acked"], "every acknowledged record survives"
    if out["full_verdict"] == "torn":
        assert "ledger.recovered" in out["kinds"]


def test_heal_reopens_a_poisoned_writer_and_only_then(make_ledger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_ledger(1)
    real = os.fdatasync
    with LedgerWriter.open(made.path) as writer:
        assert writer.heal() is False
        monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        with pytest.raises(LedgerWriteError):
            writer.append("test.event", {"n": 1})
        monkeypatch.setattr(os, "fdatasync", real)
        assert writer.heal() is True
        writer.append("test.event", {"n": 2})
    assert verify_file(made.path).status == "intact"


def test_a_failed_reopen_leaves_the_writer_poisoned_so_heal_tries_again(make_ledger: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_ledger(1)
    real_sync, real_open = os.fdatasync, os.open
    with LedgerWriter.open(made.path) as writer:
        monkeypatch.setattr(os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        with pytest.raises(LedgerWriteError):
            writer.append("test.event", {"n": 1})

        def refuse(path: Any, *args: Any, **kwargs: Any) -> int:
            if str(path) == str(made.path):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
        with pytest.raises(LedgerError):
            writer.heal()  # still no room: the writer must stay poisoned
        monkeypatch.setattr(os, "open", real_open)
        monkeypatch.setattr(os, "fdatasync", real_sync)
        assert writer.heal() is True
        writer.append("test.event", {"n": 2})
    assert verify_file(made.path).status == "intact"


# -- the path must name the file the writer holds ----------------------------------------------------


def _records(path: Path) -> set[tuple[int, str]]:
    return {(r["seq"], r["hash"]) for r in map(json.loads, path.read_bytes().splitlines())}


@pytest.mark.parametrize("how", ["renamed over", "unlinked", "symlinked to itself"])
def test_a_ledger_replaced_under_the_writer_refuses_every_append(make_ledger: Any, how: str) -> None:
    made, other = make_ledger(2), make_ledger(1)
    held = made.path.with_name("held.jsonl")
    os.link(made.path, held)  # keeps the writer's inode reachable, to check nothing went into it
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.event", {"n": "before"})
        if how == "renamed over":
            os.rename(other.path, made.path)
        elif how == "unlinked":
            made.path.unlink()
        else:
            made.path.unlink()
            made.path.symlink_to(held)  # same inode behind it, but no longer the file the writer opened
        before = held.read_bytes()
        for _ in range(2):
            with pytest.raises(LedgerPoisonedError, match="replaced or removed while open"):
                writer.append("test.event", {"n": "after"})
            with pytest.raises(LedgerPoisonedError, match="replaced or removed while open"):
                append_checkpoint(writer, made.key)
    assert held.read_bytes() == before, "nothing may be written into a file the path no longer names"
    assert kinds(held)[-1] == "test.event"


def test_a_replacement_during_the_sync_is_never_acknowledged(make_ledger: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    made, other = make_ledger(1), make_ledger(1)
    real = os.fdatasync

    def replace_then_sync(fd: int) -> None:
        os.rename(other.path, made.path)
        real(fd)

    with LedgerWriter.open(made.path) as writer:
        acked = writer.append("test.event", {"n": 1})
        monkeypatch.setattr(os, "fdatasync", replace_then_sync)
        with pytest.raises(LedgerPoisonedError, match="replaced or removed"):
            writer.append("test.event", {"n": 2})
        monkeypatch.setattr(os, "fdatasync", real)
        with pytest.raises(LedgerError, match="another ledger"):
            writer.heal()
        with pytest.raises(LedgerPoisonedError):
            writer.append("test.event", {"n": 3})
    assert (acked.seq, acked.hash) not in _records(made.path)


def test_threads_appending_while_the_ledger_is_replaced_get_acks_only_for_records_in_the_file(
        make_ledger: Any) -> None:
    made, other = make_ledger(1), make_ledger(1)
    held = made.path.with_name("held.jsonl")
    os.link(made.path, held)
    acked: list[Any] = []
    refused: list[BaseException] = []
    with LedgerWriter.open(made.path) as writer:
        def worker() -> None:
            while len(refused) < 20:
                try:
                    acked.append(writer.append("test.event", {"t": threading.get_ident()}))
                except LedgerError as exc:
                    refused.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        poll(lambda: len(acked) >= 200, 60, "200 acknowledged appends", interval=0.001)
        os.rename(other.path, made.path)
        for t in threads:
            join(t, 30, "an appending thread to stop after 20 refusals")
    assert all(isinstance(e, LedgerPoisonedError) for e in refused)
    in_held, in_path = _records(held), _records(made.path)
    assert all((r.seq, r.hash) in in_held for r in acked), "every acknowledged record is durable in its file"
    assert not any((r.seq, r.hash) in in_path for r in acked[1:]), "the replacement received nothing"
    assert verify_file(held).status == "intact"


def test_heal_continues_only_the_same_chain(make_ledger: Any, tmp_path: Path) -> None:
    made = make_ledger(2)
    older = tmp_path / "older.jsonl"
    shutil.copyfile(made.path, older)
    original = made.path.with_name("original.jsonl")
    with LedgerWriter.open(made.path) as writer:
        last = writer.append("test.event", {"n": "acked"})
        os.link(made.path, original)
        os.rename(older, made.path)  # an older copy of the same chain: it lacks the acknowledged head
        with pytest.raises(LedgerPoisonedError):
            writer.append("test.event", {"n": "refused"})
        with pytest.raises(LedgerError, match=f"lacks record {last.seq}"):
            writer.heal()
        # A copy of the same chain that another process extended (a CLI command writing into the new file).
        fork = tmp_path / "fork.jsonl"
        shutil.copyfile(original, fork)
        with LedgerWriter.open(fork) as other_process:
            other_process.append("test.cli", {"n": "meanwhile"})
        os.rename(fork, made.path)
        assert writer.heal() is True
        resumed = writer.append("test.event", {"n": "resumed"})
    assert resumed.seq == last.seq + 2
    assert kinds(made.path)[-3:] == ["test.event", "test.cli", "test.event"]
    assert verify_file(made.path).status == "intact"


def test_observers_hear_each_durable_record_and_a_failing_one_never_fails_the_append(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.conftest import genesis_for

    heard: list[str] = []

    def broken(record: Record) -> None:
        raise RuntimeError("an observer's own bug")

    with LedgerWriter.create(tmp_path / "l.jsonl", genesis_for(Ed25519PrivateKey.generate())) as writer:
        writer.observers += [broken, lambda record: heard.append(record.kind)]
        writer.append("test.one", {})
        writer.append_derived("test.two", lambda head: {"after": head.seq})
    assert heard == ["test.one", "test.two"] and broken not in writer.observers
    assert verify_file(tmp_path / "l.jsonl").status == "intact"


def test_the_stamp_is_taken_in_the_appending_thread_and_never_touches_the_formats_own_kinds(make_ledger: Any) -> None:
    from ledger import FORMAT_KINDS

    made = make_ledger(0)
    who = threading.local()
    with LedgerWriter.open(made.path) as writer:
        writer.stamp = lambda: {"by": getattr(who, "name", "main")}

        def append_as(name: str) -> None:
            who.name = name
            writer.append("test.plain", {"i": 1})
            writer.append_derived("test.derived", lambda head: {"after": head.seq})

        threads = [threading.Thread(target=append_as, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            join(t, 30, "an appending thread")
        writer.append("test.given", {"by": "the caller"})  # what the caller gives wins
        append_checkpoint(writer, made.key)
    records = [json.loads(line) for line in made.path.read_bytes().splitlines()]
    stamped = [r for r in records if r["kind"].startswith("test.")]
    assert sorted(r["data"]["by"] for r in stamped if r["kind"] != "test.given") == sorted(
        f"t{i}" for i in range(4) for _ in range(2))
    assert next(r for r in stamped if r["kind"] == "test.given")["data"]["by"] == "the caller"
    assert all("by" not in r["data"] for r in records if r["kind"] in FORMAT_KINDS)
    assert records[-1]["kind"] == "ledger.checkpoint"
    assert verify_file(made.path).status == "intact"

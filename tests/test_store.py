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
    verify_file,
)
from ledger.record import sha3_hex

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
            release.wait(10)
        real(fd)

    with LedgerWriter.open(made.path) as writer:
        monkeypatch.setattr(os, "fdatasync", gated)
        first = threading.Thread(target=writer.append, args=("test.first", {}))
        first.start()
        assert entered.wait(10)
        others = [threading.Thread(target=writer.append, args=("test.other", {"i": i})) for i in range(7)]
        for t in others:
            t.start()
        while len(writer._pending) < 7:  # all seven are queued behind the leader's sync
            threading.Event().wait(0.001)
        release.set()
        for t in [first, *others]:
            t.join(10)
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
            t.join()
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

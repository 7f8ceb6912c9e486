"""One engine per home, with real processes: the lock, the refusal, and a `stop` that signals only the engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anticloud import enginelock
from anticloud.actor import local
from anticloud.errors import EngineRunning
from anticloud.home import Home
from ledger import LedgerWriter, verify_file
from tests.waiting import read_line

ROOT = Path(__file__).resolve().parent.parent

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from anticloud import enginelock
    from anticloud.home import Home
    lock = enginelock.acquire(Home(Path(sys.argv[1])))
    print("held", flush=True)
    time.sleep(600)  # not a wait: it holds the lock until the test kills it
""")


def anticloud(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def records(home: Home) -> list[dict[str, object]]:
    return [json.loads(x) for x in home.ledger.read_bytes().splitlines()]


@pytest.fixture
def holder(imported_home: Callable[..., Home]) -> Iterator[tuple[Home, subprocess.Popen[str]]]:
    """A home whose engine lock another real process holds, as a running engine would."""
    home = imported_home("tiny")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(home.root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and read_line(proc.stdout, 30, "the holder to take the lock") == "held\n"
        yield home, proc
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_kernel_names_the_process_holding_the_lock(holder: tuple[Home, subprocess.Popen[str]]) -> None:
    home, proc = holder
    assert enginelock.holder(home) == proc.pid
    with pytest.raises(EngineRunning) as refused:
        enginelock.acquire(home)
    assert refused.value.pid == proc.pid and f"pid {proc.pid}" in str(refused.value)
    proc.kill()
    proc.wait(30)
    assert enginelock.holder(home) is None  # the kernel dropped it with the process
    enginelock.acquire(home).release()


def test_a_second_engine_is_refused_before_it_closes_the_running_ones_inferences(
        holder: tuple[Home, subprocess.Popen[str]]) -> None:
    home, proc = holder
    with LedgerWriter.open(home.ledger) as writer:  # what a running server has in flight
        writer.append("inference.begin", {"id": "inflight", "model": "tiny", "client": "uid:1000"})
    before = len(records(home))
    run = anticloud(home, "run", "Hello")
    assert run.returncode == 4 and run.stdout == ""
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 1 and f"another engine (pid {proc.pid}) is running on {home.root}" in errors[0]
    after = records(home)
    assert [r["kind"] for r in after[before:]] == ["engine.refused"]
    assert after[-1]["data"] == {"reason": "another engine is running on this home", "pid": proc.pid,
                                 "namespace": False, "actor": local()}
    assert verify_file(home.ledger).status == "intact"


def test_stop_never_signals_a_process_the_pid_file_names_unless_it_is_the_engine(
        imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        (home.root / "anticloud.pid").write_text(f"{bystander.pid}\n")
        stop = anticloud(home, "stop")
        assert stop.returncode == 1, stop.stderr
        assert stop.stderr.strip() == (f"anticloud: error: no server is running for {home.root}: "
                                       f"{home.root / 'anticloud.pid'} names pid {bystander.pid}, which is not "
                                       "this home's engine; nothing was signalled")
        # SIGTERM ends sleep at once, and `stop` returns only after it waited for its target to go.
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(30)


def test_stop_leaves_an_engine_that_is_not_the_named_server_alone(holder: tuple[Home, subprocess.Popen[str]]) -> None:
    home, proc = holder
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        (home.root / "anticloud.pid").write_text(f"{bystander.pid}\n")
        stop = anticloud(home, "stop")
        assert stop.returncode == 1 and f"(pid {proc.pid}) is not a server" in stop.stderr
        assert proc.poll() is None and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(30)


def test_stop_with_nothing_running_is_its_own_error_not_an_engine_refusal(
        imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    stop = anticloud(home, "stop")
    assert stop.returncode == 1
    assert stop.stderr.strip() == f"anticloud: error: no server is running for {home.root}"


def test_flock_pids_reads_holders_and_skips_waiters_and_other_locks() -> None:
    table = ("1: FLOCK  ADVISORY  WRITE 4143 fe:00:2149812 0 EOF\n"
             "1: -> FLOCK  ADVISORY  WRITE 5000 fe:00:2149812 0 EOF\n"
             "2: POSIX  ADVISORY  WRITE 4144 fe:00:2149812 0 EOF\n"
             "3: FLOCK  ADVISORY  READ 4145 fe:00:2149812 0 EOF\n"
             "4: FLOCK  ADVISORY  WRITE 4146 00:2d:21498120 0 EOF\n")
    assert enginelock.flock_pids(table, 2149812) == [4143]

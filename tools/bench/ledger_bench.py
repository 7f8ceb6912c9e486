#!/usr/bin/env python3
"""Ledger benchmark: durable appends against SQLite, and verification speed.

    python tools/bench/ledger_bench.py [--dir DIR] [--appends N] [--verify-records N]

Every figure is a ratio against a baseline measured in the same run on the same disk. The
append configurations run in interleaved rounds and each reports its median, because a
virtual disk's sync latency drifts by tens of percent within seconds:

* appends/s, 1 writer and 8 threads, against SQLite in WAL mode with synchronous=FULL and
  one commit per row, inserting the same lines (targets: 1 writer >= SQLite, 8 threads >= 3x);
* verify records/s for `ledger.verify_file` and for the standard-library tools/verify_ledger.py
  (target: >= 150,000 records/s).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ledger import LedgerWriter, key_id_of, verify_file  # noqa: E402
from ledger.checkpoint import raw_public_key  # noqa: E402
from ledger.record import seal  # noqa: E402


def sample_data(i: int) -> dict[str, object]:
    """About the size of an inference.begin record."""
    return {"model": "gemma-3-270m", "manifest": "sha3-256:" + "ab" * 32, "prompt_sha3_256": "sha3-256:" + "cd" * 32,
            "client": "uid:1000", "params": {"temperature": 0, "num_predict": 128, "seed": i}, "airgap": "enforced"}


def genesis() -> dict[str, str]:
    raw = raw_public_key(Ed25519PrivateKey.generate().public_key())
    return {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}


def threaded(threads: int, per_thread: int, work: Callable[[int, int], object]) -> float:
    workers = [threading.Thread(target=lambda t=t: [work(t, i) for i in range(per_thread)]) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * per_thread / (time.perf_counter() - start)


def bench_ledger(directory: Path, threads: int, total: int) -> float:
    path = directory / f"ledger-{threads}-{secrets.token_hex(4)}.jsonl"
    with LedgerWriter.create(path, genesis()) as writer:
        return threaded(threads, total // threads, lambda t, i: writer.append("bench.append", sample_data(i)))


def bench_floor(directory: Path, total: int) -> float:
    """The physical floor of any append-only file: one bare write() and fdatasync() per line."""
    line = seal(1, "bench.append", sample_data(0), "0" * 64)[1]
    fd = os.open(directory / f"floor-{secrets.token_hex(4)}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(total):
            os.write(fd, line)
            os.fdatasync(fd)
        return total / (time.perf_counter() - start)
    finally:
        os.close(fd)


def bench_sqlite(directory: Path, threads: int, total: int) -> float:
    path = directory / f"sqlite-{threads}-{secrets.token_hex(4)}.db"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, line TEXT NOT NULL)")
    setup.commit()
    setup.close()
    line = seal(1, "bench.append", sample_data(0), "0" * 64)[1].decode()
    local = threading.local()

    def insert(t: int, i: int) -> object:
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(path, timeout=60, check_same_thread=False)
            local.db.execute("PRAGMA synchronous=FULL")
        local.db.execute("INSERT INTO records (line) VALUES (?)", (line,))
        return local.db.commit()

    return threaded(threads, total // threads, insert)


def bench_verify(directory: Path, records: int) -> tuple[float, float]:
    path = directory / "verify.jsonl"
    gen = genesis()
    prev_record, line = seal(0, "ledger.genesis", gen, "0" * 64)
    with path.open("wb") as handle:  # built directly: this measures reading, not appending
        handle.write(line)
        for seq in range(1, records):
            prev_record, line = seal(seq, "bench.append", sample_data(seq), prev_record.hash)
            handle.write(line)
    spec = importlib.util.spec_from_file_location("verify_ledger", ROOT / "tools" / "verify_ledger.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    start = time.perf_counter()
    verdict = verify_file(path)
    ours = records / (time.perf_counter() - start)
    assert verdict.status == "intact" and verdict.records == records
    start = time.perf_counter()
    assert tool.verify(str(path), None, None)["verdict"] == "intact"
    theirs = records / (time.perf_counter() - start)
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT, help="a directory on the disk to measure")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--verify-records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix=".bench-", dir=args.dir))
    configs: dict[str, Callable[[], float]] = {
        "floor: write+fdatasync": lambda: bench_floor(directory, args.appends),
        "ledger, 1 writer": lambda: bench_ledger(directory, 1, args.appends),
        "sqlite, 1 writer": lambda: bench_sqlite(directory, 1, args.appends),
        "ledger, 8 threads": lambda: bench_ledger(directory, 8, args.appends * 2),
        "sqlite, 8 threads": lambda: bench_sqlite(directory, 8, args.appends * 2),
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for _ in range(args.rounds):
            for name, run in configs.items():
                samples[name].append(run())
        ours, tool = bench_verify(directory, args.verify_records)
    finally:
        shutil.rmtree(directory)
    rows = {name: statistics.median(values) for name, values in samples.items()}
    sqlite_best = max(rows["sqlite, 1 writer"], rows["sqlite, 8 threads"])
    print(f"durable appends/s on {args.dir}, median of {args.rounds} interleaved rounds"
          " (SQLite: WAL, synchronous=FULL, one commit per row)")
    for name, rate in rows.items():
        print(f"  {name:<24} {rate:>10,.0f}/s")
    single = rows["ledger, 1 writer"] / rows["sqlite, 1 writer"]
    floor = rows["ledger, 1 writer"] / rows["floor: write+fdatasync"]
    group = rows["ledger, 8 threads"] / sqlite_best
    print(f"  ratio 1 writer vs sqlite 1 writer        {single:.2f}x   (target >= 1.0)")
    print(f"  ratio 1 writer vs the write+sync floor   {floor:.2f}x")
    print(f"  ratio 8 threads vs best sqlite           {group:.2f}x   (target >= 3.0)")
    print(f"verify, {args.verify_records:,} records")
    print(f"  ledger.verify_file        {ours:>10,.0f} records/s   (target >= 150,000)")
    print(f"  tools/verify_ledger.py    {tool:>10,.0f} records/s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sealing benchmark: what checking forward-secure seals adds to verification, and to appends.

    python tools/bench/seal_bench.py [--dir DIR] [--records N] [--per-epoch K] [--rounds R]

One ledger of N records of about the size of an ``inference.begin`` record is written with a
seal every K records (the appliance seals at least once a minute and after every security
event; K=1,000 is a busy minute). Every figure is a ratio against a baseline run in the same
session, on the same file, in interleaved rounds, reporting medians:

* ``ledger.verify_file`` checking every seal's tag with the auditor's secret, against the same
  call without the secret (every other rule, seals' structure included; target: <= 1.05x);
* the same against the chain alone, on a copy of the ledger with the seals removed;
* appends with a sealer whose every record is a trigger (a seal per append, the worst case),
  against appends without a sealer.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ledger import LedgerWriter, Sealer, Verdict, verify_file  # noqa: E402
from ledger.record import parse_line, seal  # noqa: E402
from tools.bench.ledger_bench import genesis, sample_data  # noqa: E402


def build(directory: Path, records: int, per_epoch: int) -> tuple[Path, bytes]:
    path, secret = directory / "sealed.jsonl", secrets.token_bytes(32)
    LedgerWriter.create(path, genesis()).close()
    with LedgerWriter.open(path, Sealer(directory / "seal.state", 60)) as writer:
        writer.enroll(secret, {"auditor": "bench"})
    # Records are sealed into lines directly (as fast as the disk allows), then sealed in epochs
    # through a writer, so the file is what an appliance writes, without hours of appends.
    with path.open("ab") as handle, LedgerWriter.open(path, Sealer(directory / "seal.state", 60)) as writer:
        head = writer.head
        for start in range(0, records, per_epoch):
            lines = []
            for i in range(start, min(records, start + per_epoch)):
                head, line = seal(head.seq + 1, "inference.begin", sample_data(i), head.hash)
                lines.append(line)
            handle.write(b"".join(lines))
            handle.flush()
            head = writer.seal() or head  # the writer catches up on the lines, then seals them
    return path, secret


def stripped(path: Path) -> Path:
    """The same records without seals or enrollment: the chain alone (re-linked)."""
    out = path.with_name("chain.jsonl")
    head = None
    with path.open("rb") as src, out.open("wb") as dst:
        for raw in src:
            record = parse_line(raw[:-1])
            if record.kind in ("ledger.seal", "seal.enroll"):
                continue
            seq, prev = (0, "0" * 64) if head is None else (head.seq + 1, head.hash)
            head, line = seal(seq, record.kind, record.data, prev, record.ts)
            dst.write(line)
    return out


def timed(call: Callable[[], Verdict]) -> float:
    start = time.perf_counter()
    verdict = call()
    assert verdict.status == "intact", verdict.fault
    return time.perf_counter() - start


def appends(directory: Path, count: int, sealed: bool) -> float:
    path = directory / f"appends-{sealed}.jsonl"
    LedgerWriter.create(path, genesis()).close()
    state = directory / f"appends-{sealed}.state"
    sealer = Sealer(state, 60, {"inference.begin"}) if sealed else None
    with LedgerWriter.open(path, sealer) as writer:
        if sealed:
            writer.enroll(secrets.token_bytes(32), {"auditor": "bench"})
        start = time.perf_counter()
        for i in range(count):
            writer.append("inference.begin", sample_data(i))
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-epoch", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--appends", type=int, default=500)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        path, secret = build(directory, args.records, args.per_epoch)
        chain = stripped(path)
        runs: list[tuple[list[float], Callable[[], Verdict]]] = [
            ([], lambda: verify_file(path, seal_secret=secret)),
            ([], lambda: verify_file(path)),
            ([], lambda: verify_file(chain)),
        ]
        for r in range(args.rounds):  # each round in another order: no position is favoured
            for times, call in runs[r % 3:] + runs[:r % 3]:
                times.append(timed(call))
        keyed, unkeyed, alone = (times for times, _ in runs)
        seals = verify_file(path, seal_secret=secret).seals
        assert seals is not None and seals.checked
        size = path.stat().st_size / (1 << 20)
        print(f"{args.records} records, {seals.seals} seals ({size:.0f} MiB), median of {args.rounds} rounds:")
        k, u, a = statistics.median(keyed), statistics.median(unkeyed), statistics.median(alone)
        print(f"  verify, tags checked       {args.records / k:10,.0f} records/s")
        print(f"  verify, tags not checked   {args.records / u:10,.0f} records/s   checked/unchecked {k / u:.3f}x "
              "(target <= 1.05x)")
        print(f"  verify, chain alone        {args.records / a:10,.0f} records/s   checked/chain     {k / a:.3f}x")
        plain, sealed = appends(directory, args.appends, False), appends(directory, args.appends, True)
        print(f"  appends, no sealer         {plain:10,.0f} /s")
        print(f"  appends, a seal per append {sealed:10,.0f} /s   {sealed / plain:.2f}x (the worst case)")
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()

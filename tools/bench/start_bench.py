#!/usr/bin/env python3
"""Start benchmark: does starting the server grow with the ledger?

    python tools/bench/start_bench.py [--dir DIR] [--records 1000000] [--rounds 5]

Two homes in a scratch directory (a new one under /tmp unless --dir is given; deleted
afterwards): a fresh one, and a copy of it whose ledger holds ``--records`` more records of
a realistic history (engine sessions of model loads and inference begin/end pairs, written
directly with the ledger's own sealing functions). Each round starts a real
``anticloud serve --isolate`` on each home, measures the time until it answers
``GET /api/version`` and its peak resident memory (VmHWM), then stops it with SIGTERM, as
an operator would. Reported: the medians, and big over fresh as a ratio (target <= 1.2x
for both, i.e. bounded memory).

Before the rounds, each home is started and stopped once. A home whose history was written
around the appliance (or by an older version) has no engine record stating the accepted
configuration yet, so that first start scans back to the newest acceptance; it is reported apart.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ledger import last_record  # noqa: E402
from ledger.record import seal  # noqa: E402

SESSION = 10_000  # records per engine session in the generated history


def anticloud(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home), *args], cwd=ROOT, check=True,
                   capture_output=True)


def grow(ledger: Path, records: int) -> None:
    """Append ``records`` chained records shaped like an engine's, in sessions that stop cleanly."""
    head = last_record(ledger)
    assert head is not None
    seq, prev = head.record.seq, head.record.hash
    digest = "sha3-256:" + "ab" * 32
    written = 0
    with ledger.open("ab") as out:
        def add(kind: str, data: dict[str, object]) -> None:
            nonlocal seq, prev, written
            seq += 1
            record, line = seal(seq, kind, data, prev)
            prev = record.hash
            out.write(line)
            written += 1

        while written < records:
            add("engine.start", {"engine": "llama_cpp", "airgap": "isolated", "evidence": {}, "namespace": True,
                                 "config": digest, "pid": 1})
            add("model.load", {"name": "gemma3-270m", "manifest": digest, "sha3_256": digest, "hash_verified": True})
            while written < records - 3 and written % SESSION < SESSION - 3:
                ident = secrets.token_hex(8)
                add("inference.begin", {"id": ident, "model": "gemma3-270m", "manifest": digest,
                                        "params": {"temperature": "0.8", "num_predict": 128}, "prompt_sha3_256": digest,
                                        "kind": "chat", "client": "uid:1000", "airgap": "isolated"})
                add("inference.end", {"id": ident, "done_reason": "stop", "prompt_tokens": 12,
                                      "completion_tokens": 40, "prompt_eval_ns": 10_000_000, "eval_ns": 400_000_000,
                                      "output_sha3_256": digest, "output_chars": 180, "airgap": "isolated"})
            add("model.unload", {"name": "gemma3-270m", "reason": "shutdown", "loaded_ms": 1000, "rss_bytes": 1})
            add("engine.stop", {"reason": "server stopped", "pid": 1})


def start_once(home: Path) -> tuple[float, int]:
    """Seconds from launch until the server answers, and its peak resident memory in bytes."""
    import httpx

    sock = home / "anticloud.sock"
    began = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home), "serve", "--isolate"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = began + 300
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as client:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the server on {home} exited with {server.returncode}")
                if time.perf_counter() > deadline:
                    raise SystemExit(f"the server on {home} did not answer within 300 s")
                try:
                    if client.get("http://appliance/api/version").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.005)
        elapsed = time.perf_counter() - began
        peak = _vmhwm(server.pid)
        server.send_signal(signal.SIGTERM)
        if server.wait(60) != 0:
            raise SystemExit(f"the server on {home} did not stop cleanly")
        return elapsed, peak
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _open_seconds(ledger: Path) -> float:
    from ledger import LedgerWriter

    times = []
    for _ in range(5):
        began = time.perf_counter()
        LedgerWriter.open(ledger).close()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new one under /tmp)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="start-bench-", dir=args.dir or "/tmp"))
    try:
        fresh, big = scratch / "fresh", scratch / "big"
        anticloud(fresh, "init")
        shutil.copytree(fresh, big)
        began = time.perf_counter()
        grow(big / "ledger.jsonl", args.records)
        size = (big / "ledger.jsonl").stat().st_size
        print(f"wrote {args.records:,} records ({size / 1e6:,.0f} MB) in {time.perf_counter() - began:.1f} s")
        opened = {name: _open_seconds(home / "ledger.jsonl") for name, home in (("fresh", fresh), ("big", big))}
        print(f"LedgerWriter.open (median of 5): fresh {opened['fresh'] * 1000:.1f} ms, "
              f"big {opened['big'] * 1000:.1f} ms")
        first = {name: start_once(home) for name, home in (("fresh", fresh), ("big", big))}
        print(f"first start, no engine record yet: fresh {first['fresh'][0]:.2f} s, big {first['big'][0]:.2f} s "
              f"(peak {first['fresh'][1] / 2**20:.0f} / {first['big'][1] / 2**20:.0f} MiB)")
        times: dict[str, list[float]] = {"fresh": [], "big": []}
        peaks: dict[str, list[int]] = {"fresh": [], "big": []}
        for _ in range(args.rounds):
            for name, home in (("fresh", fresh), ("big", big)):
                elapsed, peak = start_once(home)
                times[name].append(elapsed)
                peaks[name].append(peak)
        t = {name: statistics.median(v) for name, v in times.items()}
        m = {name: statistics.median(v) for name, v in peaks.items()}
        print(f"| home | start to first answer (median of {args.rounds}) | peak RSS |")
        print("| --- | ---: | ---: |")
        print(f"| fresh | {t['fresh']:.2f} s | {m['fresh'] / 2**20:.0f} MiB |")
        print(f"| {args.records:,} more records | {t['big']:.2f} s | {m['big'] / 2**20:.0f} MiB |")
        print(f"| ratio | **{t['big'] / t['fresh']:.2f}×** | **{m['big'] / m['fresh']:.2f}×** |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o077)
    main()

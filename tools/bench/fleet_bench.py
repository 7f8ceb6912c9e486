#!/usr/bin/env python3
"""Fleet benchmark: `anticloud fleet verify` on many appliances against verifying them one by one.

    python tools/bench/fleet_bench.py [--dir /tmp/scratch/fleet] [--appliances 50] [--records 100000]

The fleet is generated once under DIR (reused while its marker matches the sizes asked for):
one directory per appliance with its ledger (genesis and records of about an inference.begin's
size, built line by line as ledger_bench.py does: this measures verifying, not appending), its
appliance.pub, and a checkpoint signed at nine tenths of the ledger, as an auditor collected it.

It then times, in the same run:

* the command an auditor runs, ``anticloud fleet verify DIR`` (a fresh process, exit 0 expected);
* the baseline: `ledger.verify_file` on each ledger one after another in this process, with the
  same key and checkpoint, one process (``jobs=1``).

and prints both and their ratio (target: the command under a minute for 50 x 100,000 records).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ledger import key_id_of, load_checkpoint, load_public_key, verify_file  # noqa: E402
from ledger.checkpoint import Checkpoint, raw_public_key, sign_checkpoint  # noqa: E402
from ledger.record import seal  # noqa: E402

BASE = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


def sample_data(i: int) -> dict[str, object]:
    """About the size of an inference.begin record (as ledger_bench.py's)."""
    return {"model": "gemma-3-270m", "manifest": "sha3-256:" + "ab" * 32, "prompt_sha3_256": "sha3-256:" + "cd" * 32,
            "client": "uid:1000", "params": {"temperature": 0, "num_predict": 128, "seed": i}, "airgap": "enforced"}


def make_appliance(root: Path, records: int) -> None:
    """One appliance's collection: ledger.jsonl, appliance.pub and checkpoint.json."""
    root.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    raw = raw_public_key(key.public_key())
    genesis = {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}
    stamp = [(BASE + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i in range(records)]
    record, line = seal(0, "ledger.genesis", genesis, "0" * 64, stamp[0])
    pin = records * 9 // 10
    held = None
    with (root / "ledger.jsonl.part").open("wb") as handle:
        handle.write(line)
        for seq in range(1, records):
            record, line = seal(seq, "inference.begin", sample_data(seq), record.hash, stamp[seq])
            handle.write(line)
            if seq == pin:
                held = sign_checkpoint(Checkpoint(genesis["ledger_id"], seq, record.hash, stamp[seq],
                                                  genesis["key_id"]), key)
    assert held is not None
    (root / "checkpoint.json").write_bytes(held.to_bytes())
    (root / "appliance.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                                       PublicFormat.SubjectPublicKeyInfo))
    (root / "ledger.jsonl.part").rename(root / "ledger.jsonl")


def generate(directory: Path, appliances: int, records: int) -> None:
    marker = directory / ".generated"
    want = f"{appliances} {records}\n"
    if marker.exists() and marker.read_text() == want:
        return
    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(make_appliance, [directory / f"appliance-{i:03d}" for i in range(appliances)],
                      [records] * appliances))
    marker.write_text(want)
    print(f"generated {appliances} x {records} records in {time.perf_counter() - start:.0f} s", flush=True)


def time_command(directory: Path) -> tuple[float, dict[str, object]]:
    now = (BASE + timedelta(days=2)).isoformat()  # after the last record (one a second from BASE)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "anticloud", "fleet", "verify", str(directory), "--json",
                           "--now", now], capture_output=True, check=False, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fleet verify exited {done.returncode} after {elapsed:.1f} s: "
                         f"{(done.stderr or done.stdout).decode()[-500:]}")
    return elapsed, json.loads(done.stdout)


def time_serial(directory: Path) -> float:
    start = time.perf_counter()
    for root in sorted(p for p in directory.iterdir() if p.is_dir()):
        verdict = verify_file(root / "ledger.jsonl", checkpoint=load_checkpoint(root / "checkpoint.json"),
                              public_key=load_public_key(root / "appliance.pub"), jobs=1)
        assert verdict.status == "intact", verdict.fault
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scratch/fleet"))
    parser.add_argument("--appliances", type=int, default=50)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    generate(args.dir, args.appliances, args.records)
    total = args.appliances * args.records
    size = sum(p.stat().st_size for p in args.dir.glob("*/ledger.jsonl"))
    print(f"fleet: {args.appliances} appliances x {args.records:,} records = {total:,} records, "
          f"{size / 2**20:.0f} MiB, {os.cpu_count()} cores", flush=True)
    fleet_s, doc = time_command(args.dir)
    fleet_doc = doc["fleet"]
    assert isinstance(fleet_doc, dict) and fleet_doc["exit_code"] == 0 and fleet_doc["findings"] == 0
    print(f"anticloud fleet verify:      {fleet_s:6.1f} s  {total / fleet_s:9,.0f} records/s  (target < 60 s: "
          f"{'met' if fleet_s < 60 else 'MISSED'})", flush=True)
    serial_s = time_serial(args.dir)
    print(f"verify_file one by one:      {serial_s:6.1f} s  {total / serial_s:9,.0f} records/s", flush=True)
    print(f"ratio: {serial_s / fleet_s:.2f}x faster as a fleet")


if __name__ == "__main__":
    main()

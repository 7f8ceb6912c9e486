#!/usr/bin/env python3
"""Audit benchmark: each summary of `anticloud.audit` over a large ledger, against SQLite.

    python tools/bench/audit_bench.py [--dir DIR] [--records 1000000] [--small 250000]

It writes a realistic ledger of --records records (and one of --small records) into DIR,
outside the repository: about half a million inferences by 60 people on 4 models over 180
days, each an ``inference.begin`` and its ``inference.end`` with actor, tokens and outcome,
among them rejected requests, load refusals, model loads and unloads, configuration changes,
token and key changes and air-gap events, in the proportions a busy appliance records them.

For each summary it runs a fresh interpreter (so that peak RSS is the summary's own, from
``resource.getrusage``, the largest of this process and its verifier workers) and times the
question as the command asks it (`anticloud.audit.answer`: the verification and the summary in
one pass, on every core), then all seven summaries at once, the verification alone (the floor),
and the whole command (`anticloud audit people --ledger FILE --json`). The baseline, measured
in the same run: the same records loaded into an SQLite table (stdlib sqlite3; the load is
timed) and the per-person-per-day answer as one GROUP BY query. Both must give the same rows: the script checks it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ledger import key_id_of  # noqa: E402
from ledger.checkpoint import raw_public_key  # noqa: E402
from ledger.record import prepare, seal_prepared  # noqa: E402

SUMMARIES = ("people", "models", "refusals", "airgap", "config", "lifecycle", "keys")
PEOPLE = [f"person{i:02d}" for i in range(60)]
MODELS = ["gemma3-270m", "smollm2-360m", "qwen2.5-1.5b", "llama3.2-3b"]
START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 180


def write_ledger(path: Path, records: int, seed: int = 1) -> None:
    """A ledger of ``records`` records, sealed as the writer seals them (chain and hashes real)."""
    rng = random.Random(seed)
    raw = raw_public_key(Ed25519PrivateKey.generate().public_key())
    genesis = {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}
    step = timedelta(seconds=DAYS * 86400 / records)
    prev, seq = "0" * 64, 0
    with path.open("wb") as out:
        def put(kind: str, data: dict[str, Any]) -> None:
            nonlocal prev, seq
            ts = (START + step * seq).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            record, line = seal_prepared(seq, kind, prepare(kind, data), data, prev, ts)
            out.write(line)
            prev, seq = record.hash, seq + 1

        put("ledger.genesis", genesis)
        admin = {"uid": 1000, "user": "operator"}
        while seq < records:
            roll = rng.random()
            person = rng.choice(PEOPLE)
            actor = {"token": person, "uid": 1001, "user": "svc"} if rng.random() < 0.5 else {"token": person}
            if roll < 0.955:
                ident = secrets.token_hex(8)
                model = rng.choice(MODELS)
                put("inference.begin", {"id": ident, "model": model, "manifest": "sha3-256:" + "ab" * 32,
                                        "client": f"token:{person}", "actor": actor, "airgap": "enforced",
                                        "kind": "chat", "prompt_sha3_256": "sha3-256:" + "cd" * 32,
                                        "params": {"temperature": "0.8", "num_predict": 256, "seed": None}})
                reason = rng.choices(["stop", "length", "client_disconnected", "error"], [90, 6, 3, 1])[0]
                end: dict[str, Any] = {"id": ident, "done_reason": reason, "prompt_tokens": rng.randint(5, 900),
                                       "completion_tokens": rng.randint(1, 256), "prompt_eval_ns": 1000,
                                       "eval_ns": 2000, "output_sha3_256": "sha3-256:" + "ef" * 32,
                                       "output_chars": 900, "airgap": "enforced", "actor": actor}
                if reason == "error":
                    end["error"] = "the engine failed"
                put("inference.end", end)
            elif roll < 0.985:
                status, why = rng.choice([(401, "no valid token"), (404, "unknown model"), (429, "busy"),
                                          (400, "invalid JSON")])
                put("request.rejected", {"identity": f"token:{person}", "actor": actor, "path": "/api/chat",
                                         "status": status, "reason": why})
            elif roll < 0.995:
                model = rng.choice(MODELS)
                put("model.load", {"name": model, "engine": "llama_cpp", "n_ctx": 4096, "duration_ms": 800,
                                   "actor": admin})
                put("model.unload", {"name": model, "reason": "keep_alive", "actor": admin})
            elif roll < 0.997:
                put("model.load.refused", {"model": rng.choice(MODELS), "reason": "hash mismatch", "actor": admin})
            elif roll < 0.998:
                put("config.change", {"key": "api.stall_timeout", "old": 30, "new": 60, "actor": admin,
                                      "digest": "sha3-256:" + "12" * 32})
            elif roll < 0.999:
                put("token.create", {"name": person, "token_id": secrets.token_hex(6), "actor": admin})
            elif roll < 0.9995:
                put("airgap.breach", {"airgap": {"isolated": False, "interfaces": [{"name": "eth0", "addresses": []}],
                                                 "routes": []}, "mode": "enforce", "actor": admin})
                put("airgap.restored", {"mode": "enforce", "actor": admin})
            else:
                put("engine.refused", {"reason": "network reachable", "airgap": {"isolated": False}, "actor": admin})
        out.truncate()


def measure(name: str, path: Path) -> dict[str, float]:
    """In this (fresh) interpreter: summary ``name`` (or "all", or "verify" for the verification
    alone), verification included; seconds and the peak RSS of this process and its workers."""
    from anticloud.audit import SUMMARIES as MAKERS
    from anticloud.audit import Filter, answer
    from ledger import verify_file

    start = time.perf_counter()
    if name == "verify":
        verify_file(path)
        read = 0
    else:
        makers = MAKERS.values() if name == "all" else [MAKERS[name]]
        _, summaries, coverage = answer(path, Filter(), [make() for make in makers])
        results = [s.result().to_json() for s in summaries]
        read = coverage.read
    seconds = time.perf_counter() - start
    if name == "people":
        Path(str(path) + ".people.json").write_text(json.dumps(results[0]["rows"]))
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"seconds": seconds, "rss_kib": rss, "read": read}


def child(name: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--ledger", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


def cli_seconds(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "anticloud", "audit", "people", "--ledger", str(path), "--json"],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, usage


def sqlite_baseline(path: Path, directory: Path) -> tuple[float, float, list[tuple[Any, ...]]]:
    """Load the records into a table (parsing each line, as any loader must), then GROUP BY."""
    db = sqlite3.connect(directory / f"baseline-{secrets.token_hex(4)}.db")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, id TEXT, person TEXT,"
               " model TEXT, done_reason TEXT, error INTEGER, tokens_in INTEGER, tokens_out INTEGER, n INTEGER)")
    start = time.perf_counter()

    def rows() -> Any:
        with path.open("rb") as handle:
            for line in handle:
                r = json.loads(line)
                d = r["data"]
                actor = d.get("actor") or {}
                person = actor.get("token") or actor.get("user")
                yield (r["seq"], r["ts"], r["kind"], d.get("id"), person, d.get("model"), d.get("done_reason"),
                       "error" in d, d.get("prompt_tokens"), d.get("completion_tokens"), d.get("count", 1))

    db.executemany("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows())
    db.commit()
    load = time.perf_counter() - start
    start = time.perf_counter()
    answer = db.execute("""
        WITH b AS (SELECT id, substr(ts, 1, 10) AS day, person FROM records WHERE kind = 'inference.begin'),
             e AS (SELECT id, done_reason, error, tokens_in, tokens_out FROM records WHERE kind = 'inference.end'),
             used AS (SELECT b.day, b.person, 1 AS requests,
                             e.done_reason IN ('stop', 'length') AND NOT e.error AS completed,
                             e.done_reason NOT IN ('stop', 'length', 'error') AND NOT e.error AS interrupted,
                             e.done_reason = 'error' OR e.error AS errors,
                             0 AS refused, e.tokens_in, e.tokens_out
                      FROM b LEFT JOIN e ON e.id = b.id),
             refused AS (SELECT substr(ts, 1, 10) AS day, person, 0, 0, 0, 0, n, 0, 0 FROM records
                         WHERE kind IN ('request.rejected', 'model.load.refused', 'model.import.rejected',
                                        'engine.refused'))
        SELECT day, coalesce(person, '-'), sum(requests), sum(completed), sum(interrupted), sum(errors),
               sum(refused), sum(tokens_in), sum(tokens_out)
        FROM (SELECT * FROM used UNION ALL SELECT * FROM refused) GROUP BY 1, 2 ORDER BY 1, 2
    """).fetchall()
    query = time.perf_counter() - start
    db.close()
    return load, query, answer


def run(size: int, directory: Path) -> dict[str, Any]:
    path = directory / f"ledger-{size}.jsonl"
    start = time.perf_counter()
    write_ledger(path, size)
    print(f"wrote {size:,} records ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - start:.1f} s",
          flush=True)
    found = {name: child(name, path) for name in (*SUMMARIES, "all", "verify")}
    return {"path": path, "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the generated ledgers go (outside the repository)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=250_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.ledger)))
        return
    directory = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    try:
        small = run(args.small, directory)
        large = run(args.records, directory)
        cli, _ = cli_seconds(large["path"])
        load, query, answer = sqlite_baseline(large["path"], directory)
        ours = [tuple(row.values()) for row in json.loads(Path(str(large["path"]) + ".people.json").read_text())]
        assert ours == [tuple(row) for row in answer], "the audit and SQLite disagree on people per day"
    finally:
        shutil.rmtree(directory)
    print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version},"
          f" load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'summary':<10} {'records read':>12} {'s @' + format(args.records, ','):>14} {'peak RSS MiB':>13}"
          f" {'RSS MiB @' + format(args.small, ','):>18}")
    for name in (*SUMMARIES, "all", "verify"):
        big, little = large["found"][name], small["found"][name]
        print(f"{name:<10} {big['read']:>12,.0f} {big['seconds']:>14.2f} {big['rss_kib'] / 1024:>13.1f}"
              f" {little['rss_kib'] / 1024:>18.1f}")
    people = large["found"]["people"]["seconds"]
    print(f"\nbaseline, SQLite: load {load:.2f} s, GROUP BY people per day {query:.2f} s (same rows: checked)")
    print(f"  people, verified, vs SQLite load + query   {people / (load + query):.2f}x the time")
    print(f"  people, verified, vs SQLite query alone    {people / query:.2f}x the time")
    print(f"  all 7 summaries, verified, vs SQLite load + query   "
          f"{large['found']['all']['seconds'] / (load + query):.2f}x the time")
    print(f"  people vs the verification alone   {people / large['found']['verify']['seconds']:.2f}x the time")
    print(f"anticloud audit people --ledger FILE --json (verification included): {cli:.2f} s,"
          f" {cli / (load + query):.2f}x SQLite load + query")


if __name__ == "__main__":
    main()

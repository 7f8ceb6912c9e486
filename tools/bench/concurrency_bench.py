#!/usr/bin/env python3
"""Concurrency benchmark: several streaming clients at once, anticloud against llama-server's slots.

    PYTHONPATH=. .venv/bin/python tools/bench/concurrency_bench.py [--rounds 3] [--tokens 128]
        [--clients 1,2,4,8] [--slots 4] [--anticloud-set KEY=VALUE ...] [--json FILE]
    PYTHONPATH=. .venv/bin/python tools/bench/concurrency_bench.py --from-json FILE

Two servers run side by side on the embedded Gemma model, 2 threads each:

* llama-server, built by ``build_llama_bench.sh llama-server`` from the llama.cpp sources vendored
  in the llama-cpp-python sdist the appliance runs, with the same flags; on 127.0.0.1 only, flash
  attention on, ``--slots`` slots with continuous batching and a context of ``--slots`` times the
  appliance's ``compute.n_ctx`` (each slot gets what one anticloud request gets);
* ``anticloud serve --isolate`` on a temporary home, over its unix socket, with
  ``engine.queue_size`` raised to the most clients (so nobody is refused) and then every
  ``--anticloud-set`` applied through ``anticloud config set`` (recorded, as on an appliance):
  ``--anticloud-set compute.parallel=4`` once the engine batches.

Both get the same OpenAI-style streaming /v1/completions requests from the same client code:
for each number of clients, that many threads each send one greedy request for ``--tokens``
tokens at the same moment, each with its own prompt (they differ from the first token, so no
prompt cache helps; llama-server is also asked for ``cache_prompt: false`` and ``ignore_eos``).
Tokens are counted from each reply's ``usage``. Per stage it measures:

* total tokens/s: every token received / wall time from the first request sent to the last byte;
* time to first token (first non-empty text), median and max over the clients;
* per-client tokens/s: a client's tokens / its own time from sending to the last byte, median;
* the fewest tokens a request got (anticloud has no ``ignore_eos``: a shortfall would show here)
  and the requests that failed.

Stages run in interleaved rounds (``--rounds``), the order of the two servers alternating. The
table gives medians over the rounds; each ratio anticloud / llama-server is the median of the
rounds' own ratios, so that a change in the shared machine's load between rounds cancels out. Then
issue 16's targets: at 4 clients, throughput >= 1.0x and median time to first token <= 1.2x
llama-server's; at 1 client, throughput >= 1.0x llama-server's. Read the ratios rather than the
absolute numbers, which follow the machine's load. ``--json`` writes every request's times, and
``--from-json FILE`` prints the tables of such a file again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tools.bench.api_bench import THREADS, anticloud, llama_binary, prepare, serving, unix_client

MODEL = "gemma3-270m"
# Greedily, the model continues this list for 128 tokens and more for readers 1 to 8 (without ignore_eos,
# anticloud would stop short at an end of sequence: the report's "fewest tokens" shows it).
PROMPT = "Reader {n}. Three reasons a hospital keeps its language model on an isolated computer:\n1."
LLAMA, ANTICLOUD = "llama-server", "anticloud"


@dataclass(frozen=True, slots=True)
class Sample:
    """One streamed request, in seconds on the benchmark's clock."""

    sent: float
    first: float | None  # the first non-empty text; None if none came
    end: float  # the last byte
    tokens: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Measures:
    total_tps: float
    ttft_median: float
    ttft_max: float
    client_tps_median: float
    tokens_min: int  # the fewest tokens an answered request got
    failed: int


def measure(samples: Sequence[Sample]) -> Measures:
    """One stage's measures; a failed request counts in ``failed`` and adds no time or tokens."""
    ok = [s for s in samples if s.error is None and s.first is not None]
    nan = float("nan")
    if not ok:
        return Measures(0.0, nan, nan, 0.0, 0, len(samples))
    wall = max(s.end for s in samples) - min(s.sent for s in samples)
    ttft = [s.first - s.sent for s in ok if s.first is not None]
    return Measures(sum(s.tokens for s in ok) / wall, statistics.median(ttft), max(ttft),
                    statistics.median(s.tokens / (s.end - s.sent) for s in ok),
                    min(s.tokens for s in ok), len(samples) - len(ok))


def over_rounds(rounds: Sequence[Measures]) -> Measures:
    """Each measure's median over the rounds (the fewest tokens of all, failures summed)."""
    def med(name: str) -> float:
        return statistics.median(float(getattr(m, name)) for m in rounds)

    return Measures(med("total_tps"), med("ttft_median"), med("ttft_max"), med("client_tps_median"),
                    min(m.tokens_min for m in rounds), sum(m.failed for m in rounds))


@dataclass(frozen=True, slots=True)
class Target:
    """An issue 16 target: anticloud's measure over llama-server's, at a number of clients."""

    clients: int
    label: str
    field: str
    bound: float
    at_least: bool  # True: the ratio must be >= bound; False: <= bound


TARGETS = (Target(4, "total tokens/s", "total_tps", 1.0, True),
           Target(4, "median time to first token", "ttft_median", 1.2, False),
           Target(1, "total tokens/s (no regression)", "total_tps", 1.0, True))


def paired(ours: Sequence[Measures], theirs: Sequence[Measures], field: str) -> float:
    """The median over the rounds of anticloud's ``field`` over llama-server's in the same round (nan if
    no round measured both). The two servers run back to back in a round, so a change in the shared
    machine's load from one round to the next cancels out of each round's ratio."""
    ratios = []
    for a, b in zip(ours, theirs, strict=True):
        ratio = float(getattr(a, field)) / float(getattr(b, field)) if getattr(b, field) else math.nan
        if not math.isnan(ratio):
            ratios.append(ratio)
    return statistics.median(ratios) if ratios else math.nan


def report(results: dict[str, dict[int, list[Measures]]], rounds: int) -> str:
    """The markdown tables: medians over the rounds per server and number of clients, the ratios
    anticloud / llama-server (each the median of the rounds' ratios), and the targets met or not."""
    table = ["| clients | server | total tokens/s | TTFT median | TTFT max | per-client tokens/s | fewest tokens "
             "| failed |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for clients in sorted(results[LLAMA]):
        for server in (LLAMA, ANTICLOUD):
            m = over_rounds(results[server][clients])
            table.append(f"| {clients} | {server} | {m.total_tps:.1f} | {m.ttft_median:.2f} s | {m.ttft_max:.2f} s "
                         f"| {m.client_tps_median:.1f} | {m.tokens_min} | {m.failed} |")
        ratios = {field: _times(paired(results[ANTICLOUD][clients], results[LLAMA][clients], field))
                 for field in ("total_tps", "ttft_median", "ttft_max", "client_tps_median")}
        table.append(f"| {clients} | **anticloud / llama-server** | **{ratios['total_tps']}** "
                     f"| **{ratios['ttft_median']}** | {ratios['ttft_max']} | {ratios['client_tps_median']} | | |")
    lines = [f"Medians of {rounds} interleaved round(s); TTFT = time to first token; each ratio is the median "
             "of the rounds' ratios.", "", *table, "",
             "| issue 16 target | measured | verdict |", "| --- | ---: | --- |"]
    for t in TARGETS:
        if t.clients not in results[ANTICLOUD]:
            continue
        ratio = paired(results[ANTICLOUD][t.clients], results[LLAMA][t.clients], t.field)
        met = ratio >= t.bound if t.at_least else ratio <= t.bound  # False when nothing was measured (nan)
        lines.append(f"| {t.clients} client(s): {t.label} {'≥' if t.at_least else '≤'} {t.bound:.1f}× llama-server's "
                     f"| {_times(ratio)} | {'met' if met else 'not met'} |")
    return "\n".join(lines)


def _times(ratio: float) -> str:
    return "–" if math.isnan(ratio) else f"{ratio:.2f}×"


def stream(client: httpx.Client, body: dict[str, Any]) -> Sample:
    """One streamed /v1/completions request, timed; its tokens from ``usage``, else counted."""
    sent = time.perf_counter()
    first, counted, usage = None, 0, None
    try:
        with client.stream("POST", "/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                return Sample(sent, None, time.perf_counter(), 0, f"HTTP {reply.status_code}: {reply.read()[:200]!r}")
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                if any(choice.get("text") for choice in chunk.get("choices") or ()):
                    first = first or time.perf_counter()
                    counted += 1
    except httpx.HTTPError as exc:
        return Sample(sent, first, time.perf_counter(), 0, f"{type(exc).__name__}: {exc}")
    return Sample(sent, first, time.perf_counter(), usage["completion_tokens"] if usage else counted)


@dataclass(frozen=True)
class Server:
    name: str
    client: Callable[[], httpx.Client]
    extra: dict[str, Any]  # request fields only this server takes


def stage(server: Server, clients: int, tokens: int) -> list[Sample]:
    """``clients`` threads, each with its own connection, sending at once."""
    connections = [server.client() for _ in range(clients)]
    ready = threading.Barrier(clients)
    samples: list[Sample | None] = [None] * clients

    def run(i: int) -> None:
        body = {"model": MODEL, "prompt": PROMPT.format(n=i + 1), "max_tokens": tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}, **server.extra}
        ready.wait()
        samples[i] = stream(connections[i], body)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in connections:
        c.close()
    return [s for s in samples if s is not None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(binary: str, weights: Path, slots: int, n_ctx: int, log: Path,
                 deadline: float = 300) -> Iterator[Server]:
    """llama-server on a free port of 127.0.0.1, once its model is loaded; stopped on leaving."""
    port = free_port()
    args = [binary, "-m", str(weights), "--host", "127.0.0.1", "--port", str(port), "-t", str(THREADS),
            "-fa", "on", "-np", str(slots), "-cb", "-c", str(slots * n_ctx), "--no-webui"]
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        until = time.monotonic() + deadline
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"llama-server did not start (exit status {proc.poll()}):\n"
                                   + log.read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield Server(LLAMA, lambda: httpx.Client(base_url=base, timeout=600, trust_env=False),
                     {"cache_prompt": False, "ignore_eos": True})
    finally:
        proc.terminate()
        proc.wait(60)


def configure(home: Path, settings: Sequence[tuple[str, str]]) -> int:
    """Apply each setting with `anticloud config set` (recorded); the per-request context in force."""
    for key, value in settings:
        try:
            anticloud(home, "config", "set", key, value)
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or "").strip().splitlines()
            sys.exit(f"anticloud config set {key} {value}: {said[-1] if said else f'exit status {exc.returncode}'}")
    shown = anticloud(home, "config", "show")
    return int(json.loads(shown[:shown.rindex("\ndigest ")])["compute"]["n_ctx"])


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def counts(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 1,2,4,8") from None
    if values[0] < 1:
        raise argparse.ArgumentTypeError("every number of clients must be at least 1")
    return values


def tabulate(stages: Sequence[dict[str, Any]]) -> dict[str, dict[int, list[Measures]]]:
    """Each server's measures per number of clients, in the order of the rounds, from raw stages."""
    results: dict[str, dict[int, list[Measures]]] = {LLAMA: {}, ANTICLOUD: {}}
    for raw in stages:
        results[raw["server"]].setdefault(raw["clients"], []).append(measure([Sample(**s) for s in raw["samples"]]))
    return results


def summary(run: dict[str, Any]) -> str:
    """The heading and the tables of a run, as ``--json`` writes it."""
    load, settings = run["load_average"], run["anticloud_set"]
    return (f"Gemma 3 270M Q4_K_M, greedy, {run['tokens']} tokens a request, {run['threads']} threads; llama-server "
            f"-np {run['slots']} -c {run['slots'] * run['n_ctx']} -fa on; anticloud with "
            f"{', '.join(f'{k}={v}' for k, v in settings.items())}, compute.n_ctx {run['n_ctx']}; "
            f"load average {min(load):.2f}-{max(load):.2f}\n"
            + report(tabulate(run["stages"]), len({raw["round"] for raw in run["stages"]})))


def measure_all(args: argparse.Namespace, binary: str) -> dict[str, Any]:
    """Both servers through every stage of every round; the run, as ``--json`` writes it."""
    load = [os.getloadavg()[0]]
    settings = [("engine.queue_size", str(max(args.clients))), *args.anticloud_set]
    stages: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home, weights = prepare(Path(tmp))
        n_ctx = configure(home, settings)
        with llama_server(binary, weights, args.slots, n_ctx, Path(tmp) / "llama-server.log") as llama, \
                serving(home):
            servers = [llama, Server(ANTICLOUD, lambda: unix_client(home), {})]
            for server in servers:  # load the model, warm both
                stage(server, 1, 8)
            for r in range(args.rounds):
                for clients in args.clients:
                    for server in servers if r % 2 == 0 else servers[::-1]:
                        samples = stage(server, clients, args.tokens)
                        stages.append({"round": r, "server": server.name, "clients": clients,
                                       "samples": [asdict(s) for s in samples]})
                        if errors := {s.error for s in samples if s.error}:
                            print(f"{server.name}, {clients} clients: {sorted(errors)}", file=sys.stderr)
                load.append(os.getloadavg()[0])
    return {"tokens": args.tokens, "threads": THREADS, "slots": args.slots, "n_ctx": n_ctx,
            "anticloud_set": dict(settings), "llama_server": binary, "load_average": load, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=counts, default=[1, 2, 4, 8], help="numbers of clients, e.g. 1,2,4,8")
    parser.add_argument("--slots", type=int, default=4, help="llama-server's slots (-np)")
    parser.add_argument("--anticloud-set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="apply with `anticloud config set` before serving; repeatable")
    parser.add_argument("--json", type=Path, help="write every request's times here")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="only print the report of a run --json wrote")
    args = parser.parse_args()
    if args.from_json:
        try:
            print(summary(json.loads(args.from_json.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"{args.from_json}: not a run written by --json ({type(exc).__name__}: {exc})")
        return
    if (binary := llama_binary("llama-server")) is None:
        sys.exit("llama-server could not be built")
    run = measure_all(args, binary)
    print(summary(run))
    if args.json:
        args.json.write_text(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()

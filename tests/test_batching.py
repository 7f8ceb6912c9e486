"""Continuous batching in the llama.cpp engine, on the real model: generations decoded together keep
their own samplers and readers; a deterministic one answers exactly as it would alone; a slow or
departed reader holds nobody else up; a long prompt is decoded in chunks beside running generations;
a failed batch fails only its own generations; embeddings wait for the context to themselves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anticloud.engines import Done, LoadedModel, LoadSpec, Params
from anticloud.engines.llama import LlamaEngine
from anticloud.errors import EngineError
from tests.waiting import all_at_once, join, poll

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "Three reasons a hospital keeps its language model offline:\n1.",
           "Once upon a time, in a small village,", "The best way to learn a new language is"]
GREEDY = Params(temperature=0, num_predict=24, repeat_penalty=1.0)


def load(path: Path, parallel: int) -> LoadedModel:
    return LlamaEngine().load(LoadSpec("gemma3-270m", str(path), 1024, 2, 0, {"general.architecture": "gemma3"},
                                       parallel=parallel))


@pytest.fixture(scope="module")
def model(gemma_path: Path) -> Iterator[LoadedModel]:
    loaded = load(gemma_path, 4)
    yield loaded
    loaded.unload()


def answer(model: LoadedModel, prompt: str, params: Params) -> tuple[str, Done]:
    pieces = list(model.generate(prompt, params, lambda: False))
    done = pieces[-1]
    assert isinstance(done, Done), pieces
    return "".join(p for p in pieces if isinstance(p, str)), done


def together(model: LoadedModel, prompts: list[str], params: Params) -> list[tuple[str, Done]]:
    """Each prompt in a thread of its own, all released at once."""
    return all_at_once([lambda p=p: answer(model, p, params) for p in prompts])  # type: ignore[misc]


def test_deterministic_generations_together_answer_as_each_would_alone(model: LoadedModel,
                                                                        gemma_path: Path) -> None:
    single = load(gemma_path, 1)
    try:
        alone = [answer(single, p, GREEDY)[0] for p in PROMPTS]
    finally:
        single.unload()
    deterministic = Params(temperature=0, num_predict=24, repeat_penalty=1.0, deterministic=True)
    results = together(model, PROMPTS, deterministic)
    assert [text for text, _ in results] == alone
    assert len(set(alone)) == len(alone) and all(alone)
    for _, done in results:
        assert done.batch is not None and done.batch.deterministic and done.batch.shared == 0
    # alone on a model that batches, it is decoded as a single stream too
    assert [answer(model, p, GREEDY)[0] for p in PROMPTS] == alone


def test_batched_generations_share_their_steps_and_each_keeps_its_own_sampler(model: LoadedModel) -> None:
    seeded = [Params(temperature=0.9, seed=seed, num_predict=24, repeat_penalty=1.0) for seed in (1, 2)]
    results = together(model, PROMPTS, GREEDY)
    assert all(done.completion_tokens == 24 or done.done_reason == "stop" for _, done in results)
    assert all(text.strip() for text, _ in results)
    assert len({text for text, _ in results}) == len(PROMPTS), "each answers its own prompt"
    batches = [done.batch for _, done in results]
    assert all(b is not None and not b.deterministic and b.parallel == 4 for b in batches)
    assert sum(1 for b in batches if b and b.shared) >= 2 and max(b.most_others for b in batches if b) >= 1
    # Two requests with the same prompt and different seeds, together, draw differently; each is
    # reproducible given its seed.
    texts: list[str] = []
    for params in seeded:
        texts.append(answer(model, PROMPTS[2], params)[0])
    assert texts[0] != texts[1]


def test_a_slow_reader_holds_up_nobody_else(model: LoadedModel) -> None:
    held = model.generate(PROMPTS[0], Params(temperature=0, num_predict=40, repeat_penalty=1.0), lambda: False)
    assert isinstance(next(iter(held)), str)  # begun, then not read
    _, done = answer(model, PROMPTS[1], Params(temperature=0, num_predict=40, repeat_penalty=1.0))
    assert done.completion_tokens == 40 or done.done_reason == "stop"
    rest = list(held)  # it waited, paused, and goes on where it stopped
    assert isinstance(rest[-1], Done) and rest[-1].completion_tokens in range(1, 41)


def test_a_reader_that_goes_away_frees_its_sequence_for_the_next_in_line(model: LoadedModel) -> None:
    long = Params(temperature=0, num_predict=300, repeat_penalty=1.0)
    running = [iter(model.generate(p, long, lambda: False)) for p in PROMPTS]
    for stream in running:
        assert isinstance(next(stream), str)
    waiting = iter(model.generate("A fifth prompt, waiting for a place:", GREEDY, lambda: False))
    got: list[str | Done] = []
    reader = threading.Thread(target=lambda: got.extend(waiting))
    reader.start()
    poll(lambda: model.scheduler.running() == 5, 10, "the fifth to wait")  # type: ignore[attr-defined]
    running[1].close()  # type: ignore[attr-defined]  # its client went away
    join(reader, 120, "the fifth generation, in the freed place")
    assert isinstance(got[-1], Done) and got[-1].completion_tokens > 0
    unfinished = [next(stream) for stream in (running[0], running[2], running[3])]
    assert all(isinstance(piece, str) for piece in unfinished), "the others were still generating"
    for stream in (running[0], running[2], running[3]):
        stream.close()  # type: ignore[attr-defined]
    poll(lambda: model.scheduler.running() == 0, 10, "every sequence to be freed")  # type: ignore[attr-defined]


def test_a_long_prompt_is_decoded_in_chunks_beside_a_running_generation(model: LoadedModel,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    sizes: list[tuple[int, int]] = []  # (tokens, sequences) of each batch
    real = llama_cpp.llama_decode

    def spy(ctx: Any, batch: Any) -> int:
        sizes.append((batch.n_tokens, len({batch.seq_id[i][0] for i in range(batch.n_tokens)})))
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)
    runner = iter(model.generate(PROMPTS[0], Params(temperature=0, num_predict=60, repeat_penalty=1.0),
                                 lambda: False))
    assert isinstance(next(runner), str)
    long_prompt = "Patient records stay on this workstation. " * 140  # about 1,000 tokens
    _, done = answer(model, long_prompt, Params(temperature=0, num_predict=4, repeat_penalty=1.0))
    rest = list(runner)
    assert isinstance(rest[-1], Done)
    assert done.prompt_tokens > 512
    assert max(n for n, _ in sizes) <= 512, "no batch is larger than n_batch"
    mixed = [n for n, seqs in sizes if seqs == 2 and n > 2]
    assert len(mixed) >= 2, f"the prompt's chunks went in beside the running token: {sizes}"
    assert done.batch is not None and done.batch.shared >= 2


def test_a_failed_batch_fails_its_own_generations_and_the_model_goes_on(model: LoadedModel,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    real, failed = llama_cpp.llama_decode, [False]

    def fails_once_shared(ctx: Any, batch: Any) -> int:
        if not failed[0] and len({batch.seq_id[i][0] for i in range(batch.n_tokens)}) > 1:
            failed[0] = True
            return -1
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", fails_once_shared)
    errors: list[str] = []

    def one(prompt: str) -> None:
        try:
            list(model.generate(prompt, Params(temperature=0, num_predict=30), lambda: False))
        except EngineError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS[:2]]
    for t in threads:
        t.start()
    for t in threads:
        join(t, 120, "a generation")
    assert failed[0] and errors, "a shared batch was decoded, and failed"
    assert all("llama_decode returned -1" in e for e in errors)
    monkeypatch.undo()
    assert answer(model, PROMPTS[0], GREEDY)[1].completion_tokens > 0, "the model still works afterwards"


def test_an_embedding_waits_for_the_context_and_changes_no_generation(model: LoadedModel) -> None:
    alone_vector = next(iter(model.embed(["a quiet ward"], False, lambda: False))).vector
    deterministic = Params(temperature=0, num_predict=40, repeat_penalty=1.0, deterministic=True)
    alone_text = answer(model, PROMPTS[3], deterministic)[0]
    stream = iter(model.generate(PROMPTS[3], deterministic, lambda: False))
    first = next(stream)
    vectors: list[list[float]] = []
    embedder = threading.Thread(target=lambda: vectors.extend(e.vector for e in model.embed(
        ["a quiet ward"], False, lambda: False)))
    embedder.start()
    rest = list(stream)
    join(embedder, 60, "the embedding")
    assert isinstance(first, str) and first + "".join(p for p in rest if isinstance(p, str)) == alone_text
    assert vectors == [alone_vector]


def test_a_fault_in_the_scheduler_fails_every_generation_in_one_line_and_refuses_new_ones(gemma_path: Path) -> None:
    model = load(gemma_path, 2)
    try:
        scheduler = model.scheduler  # type: ignore[attr-defined]

        def broken(generations: list[Any]) -> None:
            raise RuntimeError("a defect")

        scheduler._step = broken  # the next step fails
        with pytest.raises(EngineError, match=r"the llama\.cpp scheduler failed: RuntimeError: a defect"):
            answer(model, PROMPTS[0], GREEDY)
        with pytest.raises(EngineError, match="scheduler failed"):
            answer(model, PROMPTS[1], GREEDY)
    finally:
        model.unload()

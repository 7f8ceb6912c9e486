"""The llama.cpp engine on the real model: the lean loop matches llama-cpp-python's own, token for token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anticloud.engines import Done, LoadedModel, LoadSpec, Params
from anticloud.engines.llama import LlamaEngine

pytestmark = pytest.mark.slow
PROMPT = "Three reasons a hospital keeps its language model on an isolated computer:\n1."


@pytest.fixture(scope="module")
def model(gemma_path: Path) -> Iterator[LoadedModel]:
    loaded = LlamaEngine().load(LoadSpec("gemma3-270m", str(gemma_path), 1024, 2, 0,
                                         {"general.architecture": "gemma3"}))
    yield loaded
    loaded.unload()


def run(model: LoadedModel, params: Params, cancelled: object = lambda: False) -> tuple[str, Done | None]:
    pieces = list(model.generate(PROMPT, params, cancelled))  # type: ignore[arg-type]
    done = pieces[-1] if pieces and isinstance(pieces[-1], Done) else None
    return "".join(p for p in pieces if isinstance(p, str)), done


def test_greedy_output_equals_llama_cpp_pythons_own_loop(model: LoadedModel) -> None:
    reference = model.llm.create_completion(PROMPT, max_tokens=48, temperature=0)  # type: ignore[attr-defined]
    text, done = run(model, Params(temperature=0, num_predict=48, repeat_penalty=1.0))
    assert text == reference["choices"][0]["text"]
    assert done is not None and done.completion_tokens == 48 and done.done_reason == "length"
    assert done.prompt_tokens == model.count_tokens(PROMPT)


def test_a_stop_string_ends_the_text_before_it(model: LoadedModel) -> None:
    text, done = run(model, Params(temperature=0, num_predict=64, stop=("2.",)))
    assert done is not None and done.done_reason == "stop"
    assert "2." not in text and text.strip()


def test_seeded_sampling_is_reproducible(model: LoadedModel) -> None:
    params = Params(temperature=0.9, top_k=40, top_p=0.9, min_p=0.05, seed=1234, num_predict=24)
    assert run(model, params)[0] == run(model, params)[0]


def test_cancelling_stops_within_one_token(model: LoadedModel) -> None:
    produced: list[str] = []
    stream = model.generate(PROMPT, Params(temperature=0, num_predict=64), lambda: len(produced) >= 3)
    for piece in stream:
        assert isinstance(piece, str), "a cancelled generation ends without its Done"
        produced.append(piece)
    assert len(produced) == 3


def test_chats_go_through_the_sandboxed_formatter(model: LoadedModel) -> None:
    pieces = list(model.generate([{"role": "user", "content": "Hello"}], Params(num_predict=4), lambda: False))
    assert isinstance(pieces[-1], Done) and pieces[-1].completion_tokens <= 4

"""A fake engine for fast tests, registered through the same registry as a real plugin."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import ClassVar

from anticloud.engines import Done, Embedding, Engine, LoadedModel, LoadSpec, Message, Params, register
from anticloud.engines.base import Cancelled
from anticloud.errors import LoadRefused, PromptTooLong, Unsupported

GATE_SECONDS = 10
DIMENSIONS = 8  # of the fake's vectors


class FakeModel(LoadedModel):
    """Echoes the prompt's words, one per token; a test may hold it mid-generation with ``gate``.

    It applies no output grammar (`Params.grammar`): it keeps the parameters it was given in
    ``params``, and a test chooses an output that does or does not fit a format by its prompt.
    Its embedding of a text counts the words in each of `DIMENSIONS` buckets (by a hash of the word),
    plus one: texts with the same words get the same raw vector, never normalised."""

    loads: ClassVar[list[LoadSpec]] = []
    unloads: ClassVar[list[str]] = []
    generations: ClassVar[int] = 0
    params: ClassVar[list[Params]] = []
    embeddings: ClassVar[int] = 0  # texts embedded
    gate: ClassVar[threading.Event | None] = None
    at_gate = threading.Event()  # set once a generation waits at the gate (its first word already yielded)
    embeds: ClassVar[bool] = True  # a test may have models loaded from now on make no embeddings

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.embedding_method = "fake-word-buckets" if FakeModel.embeds else None
        FakeModel.loads.append(spec)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompt: str | list[Message], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
        FakeModel.generations += 1
        FakeModel.params.append(params)
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        room = params.num_predict if not params.num_ctx else min(params.num_predict,
                                                                  params.num_ctx - len(text.split()))
        if room <= 0:
            raise PromptTooLong(f"the prompt is {len(text.split())} tokens; the window holds {params.num_ctx}")
        words = text.split()[:room]
        for i, word in enumerate(words):
            if FakeModel.gate is not None and i == 1:
                FakeModel.at_gate.set()
            if FakeModel.gate is not None and i == 1 and not FakeModel.gate.wait(GATE_SECONDS):
                raise AssertionError(f"the test held the fake generation at its gate for over {GATE_SECONDS} s")
            if cancelled():
                return
            yield word + " "
        reason = "length" if len(text.split()) > room else "stop"
        yield Done(reason, self.count_tokens(text), len(words), 1000, 2000)

    def embed(self, texts: Sequence[str], truncate: bool, cancelled: Cancelled,
              window: int = 0) -> Iterator[Embedding]:
        if self.embedding_method is None:
            raise Unsupported("this fake model makes no embeddings")
        limit = min(window, self.spec.n_ctx) if window > 0 else self.spec.n_ctx
        for text in texts:
            if not truncate and self.count_tokens(text) > limit:
                raise PromptTooLong(f"an input is {self.count_tokens(text)} words; the window holds {limit}")
        return self._embeddings(texts, cancelled, limit)

    def _embeddings(self, texts: Sequence[str], cancelled: Cancelled, limit: int) -> Iterator[Embedding]:
        for i, text in enumerate(texts):
            if FakeModel.gate is not None and i == 1 and not FakeModel.gate.wait(GATE_SECONDS):
                raise AssertionError(f"the test held the fake embedding at its gate for over {GATE_SECONDS} s")
            if cancelled():
                return
            words = text.split()[:limit]
            vector = [1.0] * DIMENSIONS
            for word in words:
                vector[hashlib.sha3_256(word.encode()).digest()[0] % DIMENSIONS] += 1.0
            FakeModel.embeddings += 1
            yield Embedding(vector, len(words), len(words) < len(text.split()))

    def unload(self) -> None:
        FakeModel.unloads.append(self.spec.name)


class FakeEngine(Engine):
    name = "fake"
    refusal: ClassVar[str | None] = None  # a test may have the engine refuse every load, as llama.cpp can

    def can_embed(self, metadata: object) -> bool:
        return FakeModel.embeds

    def load(self, spec: LoadSpec) -> LoadedModel:
        if FakeEngine.refusal is not None:
            raise LoadRefused(FakeEngine.refusal, {"engine": self.name})
        return FakeModel(spec)


register("fake", FakeEngine)

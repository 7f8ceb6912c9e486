"""A fake engine for fast tests, registered through the same registry as a real plugin."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import ClassVar

from anticloud.engines import Done, Engine, LoadedModel, LoadSpec, Message, Params, register
from anticloud.engines.base import Cancelled
from anticloud.errors import LoadRefused, PromptTooLong

GATE_SECONDS = 10


class FakeModel(LoadedModel):
    """Echoes the prompt's words, one per token; a test may hold it mid-generation with ``gate``.

    It applies no output grammar (`Params.grammar`): it keeps the parameters it was given in
    ``params``, and a test chooses an output that does or does not fit a format by its prompt."""

    loads: ClassVar[list[LoadSpec]] = []
    unloads: ClassVar[list[str]] = []
    generations: ClassVar[int] = 0
    params: ClassVar[list[Params]] = []
    gate: ClassVar[threading.Event | None] = None

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
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
            if FakeModel.gate is not None and i == 1 and not FakeModel.gate.wait(GATE_SECONDS):
                raise AssertionError(f"the test held the fake generation at its gate for over {GATE_SECONDS} s")
            if cancelled():
                return
            yield word + " "
        reason = "length" if len(text.split()) > room else "stop"
        yield Done(reason, self.count_tokens(text), len(words), 1000, 2000)

    def unload(self) -> None:
        FakeModel.unloads.append(self.spec.name)


class FakeEngine(Engine):
    name = "fake"
    refusal: ClassVar[str | None] = None  # a test may have the engine refuse every load, as llama.cpp can

    def load(self, spec: LoadSpec) -> LoadedModel:
        if FakeEngine.refusal is not None:
            raise LoadRefused(FakeEngine.refusal, {"engine": self.name})
        return FakeModel(spec)


register("fake", FakeEngine)

"""What the Ollama and OpenAI routes share: starting a recorded generation and reading it out.

Invariants:

* The model is resolved before anything is loaded: an unknown one is a 404 (ModelError).
* A generation is started and its first piece awaited before any response is begun, so a
  refusal (air gap breached, model busy, prompt too long, engine failure) is an HTTP error,
  not a broken stream. ``x-anticloud-inference`` names the inference in the ledger.
* Generation streams through `TokenStream`: a slow reader pauses it, and a reader that goes
  away stops it within one token (``inference.end`` says ``client_disconnected``). Every way
  out of reading, finished or not, cancels the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import replace
from typing import Any

from anticloud.api.body import ApiError
from anticloud.api.streaming import TokenStream
from anticloud.content import engine_messages
from anticloud.engines import Done, Message, Params
from anticloud.runtime import Appliance
from anticloud.structured import OutputFormat

INFERENCE_HEADER = "x-anticloud-inference"


def resolve_model(appliance: Appliance, name: str | None) -> str:
    """The stored model asked for (the default one if none), without Ollama's ``:latest``."""
    model = (name or appliance.setting("inference", "default_model")).removesuffix(":latest")
    appliance.model(model)  # ModelError (404) for an unknown model, before anything is loaded
    return model


def conversation(messages: list[dict[str, Any]]) -> tuple[list[Message], list[str]]:
    """The messages as the engine takes them, and what was accepted but not applied (`anticloud.content`,
    whose rule an auditor re-applies to hash a candidate chat prompt)."""
    return engine_messages(messages)


def as_int(value: Any) -> Any:
    """JSON Schema's "integer" admits 1.0; the engine and the ledger need a real int."""
    return None if value is None else int(value)


async def start(appliance: Appliance, identity: str, model: str, prompt: str | list[Message], params: Params,
                keep_alive: float | None, request: dict[str, Any] | None = None,
                output: OutputFormat | None = None) -> tuple[TokenStream, str | Done, dict[str, str]]:
    """Start a generation and wait for its first piece, so refusals become HTTP errors.

    ``request`` is what the client said that is recorded beside the parameters (its own label
    for the user, fields accepted but not applied). ``output`` is the format the output was
    asked for in: the generation is constrained to its grammar, ``inference.begin`` records its
    kind and schema hash (``request.format``), and ``inference.end`` the output's check against it.
    Also returns the headers to send: ``x-anticloud-inference`` names the inference in the ledger.
    """
    ids: list[str] = []
    check = None
    if output is not None:
        params = replace(params, grammar=output.grammar)
        request, check = {**(request or {}), "format": output.record()}, output.check

    def produce(cancelled: Callable[[], bool]) -> Generator[str | Done, None, None]:
        return appliance.infer(model, prompt, params, identity, cancelled, keep_alive, ids.append, request,
                               check_output=check)

    stream = TokenStream(produce, appliance.setting("api", "stall_timeout"))
    kind, value = await stream.get()
    if kind == "error":
        raise value
    if kind == "end":
        raise ApiError(500, "the engine produced nothing")
    return stream, value, {INFERENCE_HEADER: ids[0]} if ids else {}


async def lines(stream: TokenStream, first: str | Done, encode: Callable[[str | Done], str]) -> AsyncIterator[bytes]:
    """The response body; if the client goes away this is cancelled, and so is the generation."""
    try:
        yield encode(first).encode()
        if isinstance(first, Done):
            return
        while True:
            kind, value = await stream.get()
            if kind != "piece":
                return
            yield encode(value).encode()
            if isinstance(value, Done):
                return
    finally:
        stream.cancel()


async def collect(stream: TokenStream, first: str | Done) -> list[str | Done]:
    """Every piece, for a reply that is not streamed; the last is the Done if the engine sent one."""
    pieces = [first]
    try:
        while not isinstance(pieces[-1], Done):
            kind, value = await stream.get()
            if kind == "error":
                raise value
            if kind == "end":
                break
            pieces.append(value)
    finally:
        stream.cancel()
    return pieces

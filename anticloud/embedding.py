"""One embedding request, recorded like an inference: fail closed, before the first vector.

Invariants:

* It goes through `Inferences.begin` and `Inferences.end` as an inference of kind "embedding":
  the air-gap checks, the state in force, the stop that waits for it (or records it as
  interrupted) and the next start's recovery are those of every inference.
* ``inference.begin`` is durable before the first vector is computed. It names the model, its
  manifest, the client, how the vectors are made (the engine's method), the number of inputs
  and the SHA3-256 of each, and what shapes the vectors (``truncate``, ``normalise``,
  ``dimensions``, ``num_ctx``); under ``record_content = "plaintext"`` the inputs themselves.
* ``inference.end`` is durable before any vector reaches the client. It holds the tokens
  decoded for each input, which inputs were truncated, the vectors' dimensions and the SHA3-256
  of each vector as returned (`pack`: little-endian float32, the bytes of OpenAI's base64
  encoding); under ``record_content = "plaintext"`` the vectors themselves, base64-encoded.
* A vector is returned only whole and finite; every input gets one, or the request fails.
"""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from anticloud.content import text_hash
from anticloud.engines.base import Cancelled
from anticloud.errors import Busy, EngineError, PromptTooLong, Unsupported, first_line
from anticloud.inference import Content, Inferences, new_id
from anticloud.pool import Slot
from ledger import sha3_tag


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """What a client asks: the texts, and how their vectors are to be shaped."""

    texts: list[str]
    truncate: bool = True  # cut a text to the context; false: one too long refuses the request
    normalise: bool = True  # L2-normalised, as /api/embed and OpenAI return them; the legacy route does not
    dimensions: int | None = None  # keep only the first ones (then normalised)
    num_ctx: int = 0  # the most tokens one text may fill (Ollama's num_ctx); 0: the model's context
    request: dict[str, Any] | None = None  # what the client said beside, recorded (ignored fields, its user label)


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors (`pack`ed), the tokens decoded for each input, and the engine's time (ns)."""

    vectors: list[bytes]
    tokens: list[int]
    compute_ns: int

    def floats(self, index: int) -> list[float]:
        vector = self.vectors[index]
        return list(struct.unpack(f"<{len(vector) // 4}f", vector))


def pack(vector: Sequence[float], normalise: bool, dimensions: int | None) -> bytes:
    """The vector as it is returned: its first ``dimensions`` (all if None), L2-normalised if asked,
    as little-endian float32. Raises Unsupported if the model's vectors have fewer dimensions,
    EngineError if a value is not finite."""
    if dimensions is not None and dimensions > len(vector):
        raise Unsupported(f"the model's vectors have {len(vector)} dimensions; {dimensions} cannot be returned")
    kept = vector[:dimensions] if dimensions is not None else vector
    if not all(math.isfinite(x) for x in kept):
        raise EngineError("the model produced a vector with values that are not finite")
    scale = 1.0 / max(math.sqrt(math.fsum(x * x for x in kept)), 1e-12) if normalise else 1.0
    return struct.pack(f"<{len(kept)}f", *(x * scale for x in kept))


def embed(inferences: Inferences, slot: Slot, asked: EmbedRequest, client: str, cancelled: Cancelled) -> Embedded:
    """Embed ``asked.texts`` on ``slot``, recorded. Raises before anything is recorded if the model
    makes no embeddings or a text is plainly too long (and ``truncate`` is false)."""
    inferences.check_open()
    method = slot.model.embedding_method
    if method is None:
        raise Unsupported(f"{slot.name} makes no embeddings")
    loaded = int(str(slot.info["n_ctx"]))
    window = min(asked.num_ctx, loaded) if asked.num_ctx > 0 else loaded
    if not asked.truncate:  # an early refusal before anything is recorded; the engine counts exactly
        longest = max((slot.model.count_tokens(text) for text in asked.texts), default=0)
        if longest >= window:
            holder = "the window asked for (num_ctx)" if window < loaded else f"{slot.name}'s context"
            raise PromptTooLong(f"an input is {longest} tokens; {holder} holds {window}")

    ident = new_id()

    def build_begin(begin: dict[str, Any], content: Content) -> None:
        begin.update({"kind": "embedding", "method": method, "inputs": len(asked.texts),
                      "truncate": asked.truncate, "normalise": asked.normalise, "dimensions": asked.dimensions,
                      "num_ctx": asked.num_ctx})
        if asked.request:
            begin["request"] = asked.request
        begin.update(content.members({"input_sha3_256": [text_hash(text) for text in asked.texts]}))

    inferences.open(slot, client, ident, {"input": asked.texts}, build_begin)  # durable before the first vector
    return _run(inferences, slot, ident, asked, lambda: inferences.stopping or cancelled(), window)


def _run(inferences: Inferences, slot: Slot, ident: str, asked: EmbedRequest, cancelled: Cancelled,
         window: int) -> Embedded:
    vectors: list[bytes] = []
    tokens: list[int] = []
    truncated: list[int] = []
    end: dict[str, Any] = {"id": ident, "done_reason": "error"}

    def build_end(content: Content) -> dict[str, Any]:
        data = {**end, "prompt_tokens": sum(tokens), "input_tokens": tokens, "truncated": truncated,
                "dimensions": len(vectors[0]) // 4 if vectors else None, "airgap": inferences.gap.state.label}
        data.update(content.members({"output_sha3_256": [sha3_tag(v) for v in vectors]}))
        return data

    started = time.perf_counter_ns()
    try:
        for embedding in slot.model.embed(asked.texts, asked.truncate, cancelled, window):
            vectors.append(pack(embedding.vector, asked.normalise, asked.dimensions))
            tokens.append(embedding.tokens)
            if embedding.truncated:
                truncated.append(len(vectors) - 1)
        complete = len(vectors) == len(asked.texts)
        if complete:
            end.update(done_reason="stop", prompt_eval_ns=time.perf_counter_ns() - started)
        else:  # cancelled between two inputs
            end["done_reason"] = "engine_stopped" if inferences.stopping else "client_disconnected"
    except Exception as exc:
        end["error"] = first_line(exc)
        raise
    finally:  # durable before any vector reaches the client
        inferences.close(ident, {"output": [base64.b64encode(v).decode() for v in vectors]}, end, build_end)
    if not complete:
        raise Busy("the engine is stopping") if inferences.stopping else EngineError("the embedding was cancelled")
    return Embedded(vectors, tokens, int(end["prompt_eval_ns"]))

"""llama.cpp's samplers for one generation, and the text it releases: what each sequence of a batch
keeps for itself (`anticloud.engines.batching`).

A chain is built in C from the request's parameters (`chain`); an output grammar wraps it
(`Constrained`), sampling as llama.cpp's own server does; stop strings cut the text (`StopStrings`).
Every sampler reads the logits of one position of the last decoded batch: ``idx``, as
``llama_sampler_sample`` takes it.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from typing import Any

from anticloud.engines.base import Params
from anticloud.errors import EngineError


def grammar_sampler(llm: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for ``grammar`` (GBNF, start symbol ``root``); EngineError if it
    cannot parse it. It masks every token the grammar does not allow next, end-of-generation included
    until the grammar is complete, and advances as each token is accepted."""
    import llama_cpp as c

    sampler = c.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")  # noqa: SLF001 -- no public handle on the vocabulary
    if not sampler:
        raise EngineError("llama.cpp could not parse the output grammar")
    return sampler


def chain(llm: Any, params: Params) -> Any:
    """llama.cpp's own sampler chain, in C: repetition penalty, then greedy or top-k/top-p/min-p/temperature."""
    import llama_cpp as c

    chain = c.llama_sampler_chain_init(c.llama_sampler_chain_default_params())
    penalised = params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
    if penalised and params.repeat_last_n != 0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_penalties(
            llm.n_vocab(), params.repeat_last_n, params.repeat_penalty, params.frequency_penalty,
            params.presence_penalty))
    if params.temperature <= 0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_top_p(params.top_p, 1))
    if params.typical_p < 1.0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_typical(params.typical_p, 1))
    if params.min_p > 0.0:
        c.llama_sampler_chain_add(chain, c.llama_sampler_init_min_p(params.min_p, 1))
    c.llama_sampler_chain_add(chain, c.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
    c.llama_sampler_chain_add(chain, c.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


class Constrained:
    """Sampling under an output grammar as llama.cpp's own server does it: the chain samples from all
    the logits and, only if the grammar refuses that token, samples again from the logits the grammar
    has masked. Checking one token is cheap; masking a 262k-token vocabulary costs up to hundreds of
    milliseconds a token (each token's text is matched against the grammar). The result follows the
    constrained distribution: greedy decoding picks the same token, and plain sampling draws the
    same law (a refused draw is redrawn from the masked one); only where top-k/top-p truncate does
    the first, unmasked draw weigh in, as in llama.cpp. The grammar and the chain accept each chosen
    token once."""

    def __init__(self, llm: Any, chain: Any, grammar: str) -> None:
        import llama_cpp as c
        import numpy as np

        self.chain, self.grammar = chain, grammar_sampler(llm, grammar)
        self.n = llm.n_vocab()
        self.ids = np.arange(self.n, dtype=np.int32)
        self.data = np.zeros(self.n, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)],
                                                    align=True))
        self.one = c.llama_token_data()
        self.pointer = self.data.ctypes.data_as(c.llama_token_data_p)

    def sample(self, ctx: Any, idx: int) -> int:
        import llama_cpp as c

        token = self._draw(ctx, idx, masked=False)
        self.one.id, self.one.logit, self.one.p = token, 0.0, 0.0  # type: ignore[assignment]
        c.llama_sampler_apply(self.grammar, ctypes.byref(c.llama_token_data_array(ctypes.pointer(self.one), 1, -1,
                                                                                   False)))
        if self.one.logit == -math.inf:
            token = self._draw(ctx, idx, masked=True)
        c.llama_sampler_accept(self.grammar, token)
        c.llama_sampler_accept(self.chain, token)
        return token

    def _draw(self, ctx: Any, idx: int, masked: bool) -> int:
        import llama_cpp as c
        import numpy as np

        self.data["id"] = self.ids
        self.data["logit"] = np.ctypeslib.as_array(c.llama_get_logits_ith(ctx, idx), shape=(self.n,))
        self.data["p"] = 0.0
        candidates = c.llama_token_data_array(self.pointer, self.n, -1, False)
        if masked:
            c.llama_sampler_apply(self.grammar, ctypes.byref(candidates))
        c.llama_sampler_apply(self.chain, ctypes.byref(candidates))
        chosen = candidates.data[candidates.selected]
        if masked and chosen.logit == -math.inf:  # accepting a token the grammar refuses would abort the process
            raise EngineError("the output grammar allows no next token")
        return int(chosen.id)

    def free(self) -> None:
        import llama_cpp as c

        c.llama_sampler_free(self.grammar)


class Sampler:
    """One generation's sampling: its own chain, under its own grammar if it has one, whatever
    else is decoded in the same batch."""

    def __init__(self, llm: Any, params: Params) -> None:
        import llama_cpp as c

        self.chain = chain(llm, params)
        try:
            self.constrained = Constrained(llm, self.chain, params.grammar) if params.grammar is not None else None
        except EngineError:
            c.llama_sampler_free(self.chain)
            raise

    def sample(self, ctx: Any, idx: int) -> int:
        """The next token, from the logits at position ``idx`` of the last batch decoded."""
        import llama_cpp as c

        if self.constrained is not None:
            return self.constrained.sample(ctx, idx)
        return int(c.llama_sampler_sample(self.chain, ctx, idx))

    def free(self) -> None:
        import llama_cpp as c

        c.llama_sampler_free(self.chain)
        if self.constrained is not None:
            self.constrained.free()


class StopStrings:
    """The generated text, released as it is decoded except what might be the start of a stop string,
    and cut before the first stop string it comes to."""

    def __init__(self, stop: Sequence[str]) -> None:
        import codecs

        self.stop, self.longest = tuple(stop), max((len(x) for x in stop), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.held = ""  # text that might be the start of a stop string
        self.stopped = False

    def add(self, piece: bytes) -> str:
        """The text that may be released once ``piece`` is added; after a stop string, `stopped` is set."""
        self.held += self.decoder.decode(piece)
        hit = min((i for i in (self.held.find(x) for x in self.stop) if i >= 0), default=-1)
        if hit >= 0:
            self.stopped = True
            return self.held[:hit]
        keep = max(0, len(self.held) - (self.longest - 1)) if self.longest else len(self.held)
        ready, self.held = self.held[:keep], self.held[keep:]
        return ready

    def rest(self) -> str:
        """What is held back at the end of the generation: nothing if it ended at a stop string."""
        self.held += self.decoder.decode(b"", final=True)
        return "" if self.stopped else self.held

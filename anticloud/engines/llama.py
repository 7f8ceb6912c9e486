"""The llama.cpp engine, through llama-cpp-python: the appliance's built-in engine.

Chat prompts use llama-cpp-python's own formatter, which renders a GGUF chat template in
Jinja's sandbox; a model without a template (such as the embedded Gemma) is given the
format its architecture calls for. The template that renders is the one the appliance's
pre-parse found and the signed manifest pins (`LoadSpec.chat_templates`): a default template
is used as it is (``chat_template.default``), never swapped for a built-in format that
llama-cpp-python guesses from it, and a model whose templates llama.cpp reads otherwise than
the pre-parse did, or which Jinja cannot compile, is refused (`LoadRefused`).

Generation fails only with the package's errors, before its first piece: `PromptTooLong` when
the tokens to decode (a chat's, once formatted) do not fit the context, `EngineError` when
llama.cpp fails to decode or cannot parse the output grammar (`Params.grammar`).

Embeddings come from the same context as generation, so the weights are loaded once: llama.cpp
is switched to output embeddings for the embedding's decodes only (``llama_set_embeddings``),
and the KV cache is emptied before and after, so neither use sees the other's state. A language
model is not trained to embed; what measured best among simple methods on the packaged models
(``tools/bench/embed_bench.py``) is the last token's hidden state of the PromptEOL prompt
(Jiang et al., 2023): ``This sentence : "TEXT" means in one word:"``.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from anticloud.cpu import load_cpu_backend
from anticloud.engines.base import (
    Cancelled,
    Done,
    Embedding,
    Engine,
    LoadedModel,
    LoadSpec,
    Message,
    Params,
    made_for_embeddings,
)
from anticloud.errors import EngineError, LoadRefused, PromptTooLong, Unsupported
from anticloud.gguf import CHAT_TEMPLATE_KEY
from ledger import sha3_tag

_FORMATS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}
_DEFAULT_TEMPLATE = "chat_template.default"  # llama-cpp-python's name for tokenizer.chat_template's handler
# ggml.h numbers its levels NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5. llama-cpp-python's
# own logger still uses an older table in which 3 was ERROR, so warnings leak past verbose=False.
_GGML_LOG_ERROR = 4
_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it
# PromptEOL: the text is quoted between these, and the hidden state after the last token is its vector.
EMBED_PROMPT = ('This sentence : "', '" means in one word:"')
EMBEDDING_METHOD = "prompteol-last-token"  # recorded with every embedding
# With embeddings on, llama.cpp makes every token of a batch an output and computes its logits too
# (n_vocab floats each: 1 MiB a token for Gemma 3's 262,144), in a buffer it keeps. Batches are
# sized to keep that buffer at most this big: for Gemma, whole 512-token batches embed faster
# (1.6x a prompt's decoding instead of 2.6x) but hold 1 GiB more instead of 0.25 (docs/benchmarks.md).
EMBED_OUTPUT_BYTES = 128 << 20


def _quiet_llama_logs() -> None:
    """Pass on llama.cpp's errors only; its notices (KV cache sizes and the like) are noise here."""
    global _log_callback
    import llama_cpp

    if _log_callback is None:
        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def forward_errors(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level == _GGML_LOG_ERROR:
                sys.stderr.write(text.decode("utf-8", "replace"))

        _log_callback = forward_errors
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


class LlamaEngine(Engine):
    name = "llama_cpp"

    def load(self, spec: LoadSpec) -> LoadedModel:
        import jinja2
        from llama_cpp import Llama

        _quiet_llama_logs()
        load_cpu_backend()  # a portable build's best CPU backend, from its own directory only
        # flash_attn and a sliding-window-sized SWA cache are what llama-bench runs with: measured
        # here, 3% faster and smaller, with identical greedy output (docs/benchmarks.md).
        try:
            llm = Llama(model_path=spec.path, n_ctx=spec.n_ctx, n_threads=spec.threads or os.cpu_count(),
                        n_gpu_layers=spec.gpu_layers, verbose=False, flash_attn=True, swa_full=False,
                        chat_format=_chat_format(spec))
        except jinja2.TemplateError as exc:  # llama-cpp-python compiles every template as it loads
            keys = ", ".join(sorted(spec.chat_templates)) or CHAT_TEMPLATE_KEY
            raise LoadRefused(f"the chat template {keys} of {spec.name} is not valid Jinja: {_first_line(exc)}",
                              {"model": spec.name, "reason": _first_line(exc)}) from None
        try:
            _check_templates(spec, llm.metadata)
        except LoadRefused:
            llm.close()
            raise
        return _LlamaModel(llm)

    def can_embed(self, metadata: Mapping[str, object]) -> bool:
        # A language model, through its hidden states. A model trained to embed needs a context of its own
        # (its declared pooling, every token in one batch), which this engine does not make.
        return not made_for_embeddings(metadata)


def _chat_format(spec: LoadSpec) -> str | None:
    if CHAT_TEMPLATE_KEY in spec.chat_templates:
        return _DEFAULT_TEMPLATE
    if spec.chat_templates:  # only named ones: llama-cpp-python falls back to its default format
        return None
    return _FORMATS.get(str(spec.metadata.get("general.architecture", "")))


def _check_templates(spec: LoadSpec, metadata: dict[str, str]) -> None:
    """Refuse the model unless llama.cpp read exactly the chat templates the pre-parse found."""
    expected = {key: t.sha3_256 for key, t in spec.chat_templates.items()}
    read = {key: sha3_tag(value.encode()) for key, value in metadata.items()
            if key == CHAT_TEMPLATE_KEY or key.startswith(CHAT_TEMPLATE_KEY + ".")}
    if read != expected:
        differ = sorted(k for k in expected.keys() | read.keys() if expected.get(k) != read.get(k))
        shown = ", ".join(repr(k[:64]) for k in differ)
        raise LoadRefused(f"the chat templates llama.cpp read from {spec.name} differ from the pre-parse's "
                          f"({shown}); refusing to load it",
                          {"model": spec.name, "expected": expected, "llama_cpp": read})


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (str(text).splitlines() or [type(exc).__name__])[0][:200]


class _LlamaModel(LoadedModel):
    def __init__(self, llm: Any) -> None:
        import llama_cpp as c

        self.llm = llm
        # llama.cpp's own reading: a model that declares a pooling type, or has an encoder, is no plain
        # language model, and its last hidden state is not what the method above measured.
        language_model = (c.llama_pooling_type(llm._ctx.ctx) == c.LLAMA_POOLING_TYPE_NONE  # noqa: SLF001
                          and not c.llama_model_has_encoder(llm._model.model))  # noqa: SLF001
        self.embedding_method = EMBEDDING_METHOD if language_model else None
        # The last text counted and its tokens: a completion is counted before it is recorded
        # (`anticloud.inference`) and generated right after, so its tokens are reused, not
        # computed twice. Replaced whole, so a reader sees one pair or the other, never a mix.
        self._counted: tuple[str, list[int]] = ("", [])

    def tokens(self, text: str) -> list[int]:
        """``text``'s tokens as a completion decodes them, reusing the last count's if it was this text."""
        counted, tokens = self._counted
        if counted == text and tokens:
            return tokens
        tokens = list(self.llm.tokenize(text.encode(), add_bos=True, special=True))
        self._counted = (text, tokens)
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokens(text))

    def generate(self, prompt: str | list[Message], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
        if isinstance(prompt, str):
            return _lean_completion(self.llm, self.tokens(prompt), params, cancelled)
        return self._chat(prompt, params, cancelled)

    def _chat(self, messages: list[Message], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
        """Chats go through llama-cpp-python's own formatter (Jinja's sandbox for GGUF templates)."""
        from llama_cpp import llama_sampler_free
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = None
        if params.grammar is not None:
            # llama-cpp-python adds its grammar sampler without checking that llama.cpp parsed it: parse it here first.
            llama_sampler_free(_grammar_sampler(self.llm, params.grammar))
            grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
        _forget(self.llm)
        start = time.perf_counter_ns()
        def stream() -> Iterator[Any]:
            self.llm.last_n_tokens_size = params.repeat_last_n  # read by its sampler; one generation at a time
            return self.llm.create_chat_completion(  # type: ignore[no-any-return]
                messages=messages, stream=True, max_tokens=params.num_predict, temperature=params.temperature,
                top_p=params.top_p, top_k=params.top_k, min_p=params.min_p, typical_p=params.typical_p,
                repeat_penalty=params.repeat_penalty, frequency_penalty=params.frequency_penalty,
                presence_penalty=params.presence_penalty, stop=list(params.stop) or None, seed=params.seed,
                grammar=grammar)

        first: int | None = None
        count, reason = 0, "stop"
        window = params.window(self.llm.n_ctx())
        for chunk in _checked_chunks(stream, self.llm.n_ctx()):
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content")
            if count == 0 and self.llm.n_tokens > window:  # the formatted chat alone fills the request's window
                raise PromptTooLong(f"the formatted chat is {self.llm.n_tokens - 1} tokens; the window asked for "
                                    f"(num_ctx) holds {window}")
            if text:
                first = first or time.perf_counter_ns()
                count += 1
                yield text
            if cancelled():
                return
            reason = choice.get("finish_reason") or reason
            if self.llm.n_tokens >= window:
                reason = "length"
                break
        end = time.perf_counter_ns()
        yield Done("length" if reason == "length" else "stop", max(0, self.llm.n_tokens - count), count,
                   (first or end) - start, end - (first or end))

    def embed(self, texts: Sequence[str], truncate: bool, cancelled: Cancelled,
              window: int = 0) -> Iterator[Embedding]:
        if self.embedding_method is None:
            raise Unsupported("this model declares a pooling type or has an encoder: the llama.cpp engine makes "
                              "embeddings from language models only")
        n_ctx = min(window, self.llm.n_ctx()) if window > 0 else self.llm.n_ctx()
        prefix = self.llm.tokenize(EMBED_PROMPT[0].encode(), add_bos=True, special=False)
        suffix = self.llm.tokenize(EMBED_PROMPT[1].encode(), add_bos=False, special=False)
        room = n_ctx - len(prefix) - len(suffix)
        if room < 1:
            raise PromptTooLong(f"a window of {n_ctx} tokens cannot hold the embedding prompt")
        sequences: list[tuple[list[int], bool]] = []
        for text in texts:  # every text counted before any is decoded: a refusal comes before the work
            body = self.llm.tokenize(text.encode(), add_bos=False, special=False)
            if len(body) > room and not truncate:
                holder = "the window asked for (num_ctx)" if n_ctx < self.llm.n_ctx() else "the context"
                raise PromptTooLong(f"an input is {len(body)} tokens; with the {len(prefix) + len(suffix)} of the "
                                    f"embedding prompt, {holder} holds {n_ctx}")
            sequences.append((prefix + body[:room] + suffix, len(body) > room))
        return self._embeddings(sequences, cancelled)

    def _embeddings(self, sequences: list[tuple[list[int], bool]], cancelled: Cancelled) -> Iterator[Embedding]:
        for tokens, truncated in sequences:
            if cancelled():
                return
            yield Embedding(last_hidden_state(self.llm, tokens), len(tokens), truncated)

    def unload(self) -> None:
        self.llm.close()


def last_hidden_state(llm: Any, tokens: list[int]) -> list[float]:
    """The model's output embedding at the last of ``tokens``, decoded from an empty KV cache on the
    generation context, which is left as it was found: empty, and not outputting embeddings."""
    import llama_cpp as c

    ctx = llm._ctx.ctx  # noqa: SLF001 -- as in _forget
    if not 0 < len(tokens) <= llm.n_ctx():
        raise PromptTooLong(f"{len(tokens)} tokens to embed; the context holds {llm.n_ctx()}")
    step = max(32, min(llm.n_batch, EMBED_OUTPUT_BYTES // (4 * llm.n_vocab())))
    _forget(llm)
    c.llama_set_embeddings(ctx, True)
    try:
        for at in range(0, len(tokens), step):
            part = tokens[at:at + step]
            array = (c.llama_token * len(part))(*part)  # referenced until llama_decode returns
            _decode(ctx, array, len(part), "the text to embed")
        pointer = c.llama_get_embeddings_ith(ctx, -1)
        if not pointer:
            raise EngineError("llama.cpp gave no embedding for the last token")
        vector: list[float] = pointer[:llm.n_embd()]
        return vector
    finally:
        c.llama_set_embeddings(ctx, False)
        _forget(llm)


# llama-cpp-python's own check of the formatted, tokenized chat against the context.
_TOO_LONG = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def _checked_chunks(stream: Callable[[], Iterator[Any]], n_ctx: int) -> Iterator[Any]:
    """llama-cpp-python's chat stream, its failures turned into the package's errors."""
    try:
        yield from stream()
    except ValueError as exc:
        too_long = _TOO_LONG.search(str(exc))
        if too_long is None:
            raise EngineError(f"the chat could not be generated: {exc}") from None
        raise PromptTooLong(f"the formatted chat is {too_long.group(1)} tokens; the context holds {n_ctx}") from None
    except RuntimeError as exc:  # llama-cpp-python's eval: "llama_decode returned N"
        raise EngineError(f"llama.cpp failed: {exc}") from None


def _decode(ctx: Any, tokens: Any, count: int, what: str) -> None:
    import llama_cpp as c

    status = c.llama_decode(ctx, c.llama_batch_get_one(tokens, count))
    if status != 0:  # 1: no room in the KV cache; 2: aborted; negative: an error
        raise EngineError(f"llama.cpp could not decode {what} (llama_decode returned {status})")


def _forget(llm: Any) -> None:
    """Empty the KV cache and llama-cpp-python's record of it, so neither loop trusts stale state.

    Only the cache's metadata is cleared (``data=False``): every cell is marked empty, so no later
    decode attends to it (the attention mask hides empty cells) and the next decode writes the cells
    it uses before reading them. Zeroing the buffers as well (``data=True``) changes no output and
    costs milliseconds a request (docs/benchmarks.md); llama.cpp zeroes them once, when it allocates
    them, which is what keeps the never-written padding free of NaNs. A recurrent model's state is no
    exception: llama.cpp starts a new sequence from a zeroed state cell of its own (``rs_z``)."""
    import llama_cpp as c

    # llama-cpp-python exposes no public handle on its context: the low-level API needs it.
    c.llama_memory_clear(c.llama_get_memory(llm._ctx.ctx), False)  # noqa: SLF001
    llm.reset()


def _grammar_sampler(llm: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for ``grammar`` (GBNF, start symbol ``root``); EngineError if it
    cannot parse it. It masks every token the grammar does not allow next, end-of-generation included
    until the grammar is complete, and advances as each token is accepted."""
    import llama_cpp as c

    sampler = c.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")  # noqa: SLF001 -- as in _forget
    if not sampler:
        raise EngineError("llama.cpp could not parse the output grammar")
    return sampler


def _sampler(llm: Any, params: Params) -> Any:
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


class _Constrained:
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

        self.chain, self.grammar = chain, _grammar_sampler(llm, grammar)
        self.n = llm.n_vocab()
        self.ids = np.arange(self.n, dtype=np.int32)
        self.data = np.zeros(self.n, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)],
                                                    align=True))
        self.one = c.llama_token_data()
        self.pointer = self.data.ctypes.data_as(c.llama_token_data_p)

    def sample(self, ctx: Any) -> int:
        import llama_cpp as c

        token = self._draw(ctx, masked=False)
        self.one.id, self.one.logit, self.one.p = token, 0.0, 0.0  # type: ignore[assignment]
        c.llama_sampler_apply(self.grammar, ctypes.byref(c.llama_token_data_array(ctypes.pointer(self.one), 1, -1,
                                                                                   False)))
        if self.one.logit == -math.inf:
            token = self._draw(ctx, masked=True)
        c.llama_sampler_accept(self.grammar, token)
        c.llama_sampler_accept(self.chain, token)
        return token

    def _draw(self, ctx: Any, masked: bool) -> int:
        import llama_cpp as c
        import numpy as np

        self.data["id"] = self.ids
        self.data["logit"] = np.ctypeslib.as_array(c.llama_get_logits_ith(ctx, -1), shape=(self.n,))
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


class _StopStrings:
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


def _lean_completion(llm: Any, tokens: list[int], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
    """Generation on llama-cpp-python's low-level API: one llama_decode and one C sampler call per token,
    with no logits copied into Python and no re-detokenizing of the text so far. Under an output
    grammar (`_Constrained`), the logits are copied into a numpy array for llama.cpp's samplers to
    work on: a few milliseconds a token, against up to hundreds for masking every token."""

    import llama_cpp as c

    _forget(llm)
    ctx, vocab = llm._ctx.ctx, llm._model.vocab  # noqa: SLF001 -- as in _forget
    window = params.window(llm.n_ctx())
    if len(tokens) >= window:  # what is decoded, counted here whatever the caller checked
        raise PromptTooLong(f"the prompt is {len(tokens)} tokens; the context holds {window}")
    budget = min(params.num_predict, window - len(tokens))
    chain = _sampler(llm, params)
    try:
        constrained = _Constrained(llm, chain, params.grammar) if params.grammar is not None else None
    except EngineError:
        c.llama_sampler_free(chain)
        raise
    start = time.perf_counter_ns()
    try:
        for at in range(0, len(tokens), llm.n_batch):
            part = tokens[at:at + llm.n_batch]
            # The batch only points at the array: it must stay referenced until llama_decode returns.
            array = (c.llama_token * len(part))(*part)
            _decode(ctx, array, len(part), "the prompt")
        first = time.perf_counter_ns()
        text = _StopStrings(params.stop)
        piece_buffer = ctypes.create_string_buffer(256)
        one = (c.llama_token * 1)()
        count, reason = 0, "length"
        while count < budget:
            token = constrained.sample(ctx) if constrained else c.llama_sampler_sample(chain, ctx, -1)
            if c.llama_vocab_is_eog(vocab, token):
                reason = "stop"
                break
            count += 1
            size = c.llama_token_to_piece(vocab, token, piece_buffer, len(piece_buffer), 0, False)
            if ready := text.add(piece_buffer.raw[:max(size, 0)]):
                yield ready
            if text.stopped:
                reason = "stop"
                break
            if cancelled():
                return
            if count >= budget:  # the last token's own logits would never be read: skip its decode
                break
            one[0] = token
            _decode(ctx, one, 1, f"token {count}")
        if rest := text.rest():
            yield rest
        end = time.perf_counter_ns()
        yield Done(reason, len(tokens), count, first - start, end - first)
    finally:
        c.llama_sampler_free(chain)
        if constrained:
            constrained.free()
        _forget(llm)

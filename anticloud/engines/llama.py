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

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
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
from anticloud.engines.batching import Generation, Scheduler
from anticloud.engines.sampling import Sampler, StopStrings
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
            with _model_params(use_extra_bufts=spec.repack):
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
        if spec.parallel > 1:
            _split_context(llm, spec.n_ctx, spec.parallel)
        return _LlamaModel(llm, spec.parallel)

    def can_embed(self, metadata: Mapping[str, object]) -> bool:
        # A language model, through its hidden states. A model trained to embed needs a context of its own
        # (its declared pooling, every token in one batch), which this engine does not make.
        return not made_for_embeddings(metadata)


_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(**values: object) -> Iterator[None]:
    """Have the next `Llama` load its model with these llama_model_params fields, which
    llama-cpp-python takes no argument for (use_extra_bufts: llama.cpp's repacked weights). It
    starts from llama_model_default_params(), so that function is wrapped while it is made."""
    from llama_cpp import llama_cpp as module  # the module `Llama` calls it from

    fields = {field[0] for field in module.llama_model_params._fields_}
    if unknown := set(values) - fields:  # a ctypes structure takes any attribute name, silently
        raise EngineError(f"this llama-cpp-python has no model parameter {', '.join(sorted(unknown))}")
    _params_lock.acquire()
    default = module.llama_model_default_params
    pending = True

    def restore() -> None:  # once: other loads wait only for this one's first call, not its weights
        nonlocal pending
        if pending:
            pending = False
            module.llama_model_default_params = default
            _params_lock.release()

    def made() -> Any:
        restore()
        params = default()
        for name, value in values.items():
            setattr(params, name, value)
        return params

    module.llama_model_default_params = made
    try:
        yield
    finally:
        restore()


def _split_context(llm: Any, n_ctx: int, parallel: int) -> None:
    """Give ``llm`` a context for ``parallel`` sequences, each with a KV cache of its own holding
    ``n_ctx`` tokens (llama-cpp-python makes a context for one sequence and takes no parameter for more)."""
    from llama_cpp import _internals

    params = llm.context_params
    params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * parallel, parallel, False
    llm._ctx.close()  # noqa: SLF001 -- freed before the larger one is allocated
    llm._ctx = llm._stack.enter_context(contextlib.closing(  # noqa: SLF001
        _internals.LlamaContext(model=llm._model, params=params, verbose=False)))  # noqa: SLF001


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
    def __init__(self, llm: Any, parallel: int) -> None:
        import llama_cpp as c

        self.llm, self.parallel = llm, parallel
        # llama.cpp's own reading: a model that declares a pooling type, or has an encoder, is no plain
        # language model, and its last hidden state is not what the method above measured.
        language_model = (c.llama_pooling_type(llm._ctx.ctx) == c.LLAMA_POOLING_TYPE_NONE  # noqa: SLF001
                          and not c.llama_model_has_encoder(llm._model.model))  # noqa: SLF001
        self.embedding_method = EMBEDDING_METHOD if language_model else None
        self.n_ctx = c.llama_n_ctx_seq(llm._ctx.ctx)  # noqa: SLF001 -- what one generation may fill
        # The last text counted and its tokens: a completion is counted before it is recorded
        # (`anticloud.inference`) and generated right after, so its tokens are reused, not
        # computed twice. Replaced whole, so a reader sees one pair or the other, never a mix.
        self._counted: tuple[str, list[int]] = ("", [])
        self.scheduler = Scheduler(llm, parallel)

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
        """Refusals (`PromptTooLong`, an output grammar llama.cpp cannot parse) are raised here, on the call."""
        if isinstance(prompt, str):
            tokens, stop, what = self.tokens(prompt), params.stop, "prompt"
        else:
            tokens, extra = self._formatted(prompt)
            stop, what = (*params.stop, *extra), "chat"
        window = params.window(self.n_ctx)
        if len(tokens) >= window:  # what is decoded, counted here whatever the caller checked
            holder = "the window asked for (num_ctx)" if window < self.n_ctx else "the context"
            shown = "prompt" if what == "prompt" else "formatted chat"
            raise PromptTooLong(f"the {shown} is {len(tokens)} tokens; {holder} holds {window}")
        if not tokens:
            raise EngineError("the prompt is empty once tokenized, and this model adds no token to start it")
        generation = Generation(tokens, Sampler(self.llm, params), StopStrings(stop),
                                min(params.num_predict, window - len(tokens)),
                                params.alone(self.parallel), cancelled, what)
        return self.scheduler.run(generation)

    def _formatted(self, messages: list[Message]) -> tuple[list[int], list[str]]:
        """A chat as llama-cpp-python's own chat handler formats and tokenizes it (Jinja's sandbox for a
        GGUF template), with the stop strings the format adds; the handler's completion is not run."""
        from llama_cpp import llama_chat_format

        llm, seen = self.llm, {}

        class Formatted(Exception):
            pass

        class Capture:
            def __getattr__(self, name: str) -> Any:
                return getattr(llm, name)

            def create_completion(self, **kwargs: Any) -> Any:
                seen.update(kwargs)
                raise Formatted

        handler: Any = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)  # noqa: SLF001 -- as Llama does
                   or llama_chat_format.get_chat_completion_handler(llm.chat_format))
        try:
            handler(llama=Capture(), messages=messages, stop=[])
        except Formatted:
            pass
        except Exception as exc:  # noqa: BLE001 -- a template's failure, in Jinja's sandbox or the formatter
            raise EngineError(f"the chat could not be formatted: {_first_line(exc)}") from None
        if "prompt" not in seen:
            raise EngineError(f"the chat format {llm.chat_format!r} did not produce a prompt")
        stop = seen.get("stop") or []
        return list(seen["prompt"]), [stop] if isinstance(stop, str) else list(stop)

    def embed(self, texts: Sequence[str], truncate: bool, cancelled: Cancelled,
              window: int = 0) -> Iterator[Embedding]:
        if self.embedding_method is None:
            raise Unsupported("this model declares a pooling type or has an encoder: the llama.cpp engine makes "
                              "embeddings from language models only")
        n_ctx = min(window, self.n_ctx) if window > 0 else self.n_ctx
        prefix = self.llm.tokenize(EMBED_PROMPT[0].encode(), add_bos=True, special=False)
        suffix = self.llm.tokenize(EMBED_PROMPT[1].encode(), add_bos=False, special=False)
        room = n_ctx - len(prefix) - len(suffix)
        if room < 1:
            raise PromptTooLong(f"a window of {n_ctx} tokens cannot hold the embedding prompt")
        sequences: list[tuple[list[int], bool]] = []
        for text in texts:  # every text counted before any is decoded: a refusal comes before the work
            body = self.llm.tokenize(text.encode(), add_bos=False, special=False)
            if len(body) > room and not truncate:
                holder = "the window asked for (num_ctx)" if n_ctx < self.n_ctx else "the context"
                raise PromptTooLong(f"an input is {len(body)} tokens; with the {len(prefix) + len(suffix)} of the "
                                    f"embedding prompt, {holder} holds {n_ctx}")
            sequences.append((prefix + body[:room] + suffix, len(body) > room))
        return self._embeddings(sequences, cancelled)

    def _embeddings(self, sequences: list[tuple[list[int], bool]], cancelled: Cancelled) -> Iterator[Embedding]:
        for tokens, truncated in sequences:
            if cancelled():
                return
            with self.scheduler.exclusive():  # between generations: it empties the cache
                vector = last_hidden_state(self.llm, tokens)
            yield Embedding(vector, len(tokens), truncated)

    def unload(self) -> None:
        self.scheduler.close()
        self.llm.close()


def last_hidden_state(llm: Any, tokens: list[int]) -> list[float]:
    """The model's output embedding at the last of ``tokens``, decoded from an empty KV cache on the
    generation context, which is left as it was found: empty, and not outputting embeddings."""
    import llama_cpp as c

    ctx = llm._ctx.ctx  # noqa: SLF001 -- as in _forget
    if not 0 < len(tokens) <= (n_ctx := c.llama_n_ctx_seq(ctx)):
        raise PromptTooLong(f"{len(tokens)} tokens to embed; the context holds {n_ctx}")
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

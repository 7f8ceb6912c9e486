"""The engine interface: what the appliance needs from an inference backend, and nothing more.

An engine loads a model from a path (``/proc/self/fd/N`` of the sealed, hashed copy) and
returns a `LoadedModel` that streams text for a prompt or a chat, counts tokens, makes
embeddings (if it can) and unloads. Engines are plugins in the ``anticloud.engines``
entry-point group; llama.cpp is one of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anticloud.errors import Unsupported
from ledger import sha3_tag

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """A chat template as the pre-parse found it, with the hash the signed manifest declares for it."""

    sha3_256: str  # "sha3-256:<hex>" of the UTF-8 text
    text: str


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to load, with what the appliance's pre-parse of those very bytes found (`anticloud.gguf`):
    an engine uses it rather than parse the header again, and refuses a model its backend reads otherwise."""

    name: str
    path: str
    n_ctx: int
    threads: int  # 0: one per core
    gpu_layers: int
    metadata: dict[str, Any] = field(default_factory=dict)
    # By GGUF metadata key ("tokenizer.chat_template", "tokenizer.chat_template.NAME"); empty: none.
    chat_templates: dict[str, ChatTemplate] = field(default_factory=dict)
    parallel: int = 1  # generations decoded together at most, each with a context of n_ctx
    # llama.cpp's weights repacked for this CPU's faster kernels (its "extra buffer types")
    repack: bool = True


@dataclass(frozen=True, slots=True)
class Params:
    """Sampling parameters; names and defaults follow Ollama's options.

    ``grammar`` is a GBNF grammar (llama.cpp's syntax, start symbol ``root``) the whole output must
    match: the engine samples only tokens it allows, and ends only where it is complete. An engine
    that cannot apply it must refuse (`EngineError`), never generate unconstrained.
    """

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    seed: int | None = None
    num_predict: int = 128
    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64  # how many recent tokens the penalties look at (0: none)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    typical_p: float = 1.0
    num_ctx: int = 0  # the window this request may fill, prompt and reply (0: the whole loaded context)
    grammar: str | None = None
    # Decoded as it would be with nobody else running (`Batched`): recorded with the generation, not here.
    deterministic: bool = False

    def alone(self, parallel: int) -> bool:
        """Whether it is decoded alone, as a single stream, on a model that decodes ``parallel`` at once."""
        return self.deterministic or parallel == 1

    def window(self, n_ctx: int) -> int:
        """The tokens this generation may fill in a context of ``n_ctx``."""
        return min(self.num_ctx, n_ctx) if self.num_ctx > 0 else n_ctx

    def to_json(self) -> dict[str, Any]:
        # Floats are not in the ledger's encoding: they are recorded as their shortest decimal text.
        out = {"temperature": repr(self.temperature), "top_p": repr(self.top_p), "top_k": self.top_k,
               "min_p": repr(self.min_p), "seed": self.seed, "num_predict": self.num_predict,
               "stop": list(self.stop), "repeat_penalty": repr(self.repeat_penalty),
               "repeat_last_n": self.repeat_last_n, "presence_penalty": repr(self.presence_penalty),
               "frequency_penalty": repr(self.frequency_penalty), "typical_p": repr(self.typical_p),
               "num_ctx": self.num_ctx}
        if self.grammar is not None:  # its hash: the grammar itself is derived from what the request names
            out["grammar_sha3_256"] = sha3_tag(self.grammar.encode())
        return out


@dataclass(frozen=True, slots=True)
class Batched:
    """How a generation shared the engine with others, so that its result can be interpreted:
    llama.cpp does not round identically when it decodes several sequences in one batch, so a
    generation that shared batches may differ from the same request run alone. A deterministic
    one was decoded alone throughout, and is the single-stream result."""

    parallel: int  # generations the model decodes together at most
    deterministic: bool
    steps: int  # batches its tokens were decoded in
    shared: int  # of them, those holding another generation's tokens too
    most_others: int  # the most other generations in one of its batches

    def to_json(self) -> dict[str, Any]:
        return {"parallel": self.parallel, "deterministic": self.deterministic, "batched": self.shared > 0,
                "steps": self.steps, "shared_steps": self.shared, "most_others": self.most_others}


@dataclass(frozen=True, slots=True)
class Done:
    """The end of a generation: why it stopped, and its counts and durations (nanoseconds)."""

    done_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_ns: int
    eval_ns: int
    batch: Batched | None = None  # None: the engine does not batch


@dataclass(frozen=True, slots=True)
class Embedding:
    """One text's vector as the model gives it (not normalised), and what was decoded to make it."""

    vector: list[float]
    tokens: int  # tokens decoded for it, any wrapping the engine adds included
    truncated: bool  # the text was cut to fit the context


Cancelled = Callable[[], bool]


def made_for_embeddings(metadata: Mapping[str, object]) -> bool:
    """Whether a GGUF declares a pooling type (``{arch}.pooling_type``): a model trained to embed. Ollama
    lists such a model with the "embedding" capability (and its CLI then only embeds with it)."""
    return f"{metadata.get('general.architecture', '')}.pooling_type" in metadata


class LoadedModel(ABC):
    # How this model's vectors are made, as recorded with each embedding; None: it makes none.
    embedding_method: str | None = None
    parallel: int = 1  # generations it runs at once (`LoadSpec.parallel`)

    @abstractmethod
    def generate(self, prompt: str | list[Message], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
        """Yield pieces of text, then one `Done`. Stop early, without `Done`, once ``cancelled()`` is true."""

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    def embed(self, texts: Sequence[str], truncate: bool, cancelled: Cancelled,
              window: int = 0) -> Iterator[Embedding]:
        """One `Embedding` per text, in order; stop early, without the rest, once ``cancelled()`` is true.
        ``window`` is the most tokens one text may fill, any wrapping included (0, or more than the
        context: the context; Ollama's num_ctx).

        Raises on the call, before anything is decoded: `PromptTooLong` when a text does not fit the
        window and ``truncate`` is false (with it, the text is cut to fit), `Unsupported` when the
        model makes no embeddings (what an engine that does not override this says).
        """
        raise Unsupported("this engine makes no embeddings")

    @abstractmethod
    def unload(self) -> None: ...


class Engine(ABC):
    name: str

    @abstractmethod
    def load(self, spec: LoadSpec) -> LoadedModel: ...

    def can_embed(self, metadata: Mapping[str, object]) -> bool:
        """Whether a model with this GGUF metadata, once loaded, makes embeddings (`LoadedModel.embed`)."""
        return False

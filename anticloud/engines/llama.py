"""The llama.cpp engine, through llama-cpp-python: the appliance's built-in engine.

Chat prompts use llama-cpp-python's own formatter, which renders a GGUF chat template in
Jinja's sandbox; a model without a template (such as the embedded Gemma) is given the
format its architecture calls for.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from anticloud.engines.base import Cancelled, Done, Engine, LoadedModel, LoadSpec, Message, Params

_FORMATS = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}
# ggml.h numbers its levels NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5. llama-cpp-python's
# own logger still uses an older table in which 3 was ERROR, so warnings leak past verbose=False.
_GGML_LOG_ERROR = 4
_log_callback: Any = None  # kept alive: llama.cpp holds a pointer to it


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
        from llama_cpp import Llama

        _quiet_llama_logs()
        architecture = str(spec.metadata.get("general.architecture", ""))
        llm = Llama(model_path=spec.path, n_ctx=spec.n_ctx, n_threads=spec.threads or os.cpu_count(),
                    n_gpu_layers=spec.gpu_layers, verbose=False,
                    chat_format=None if spec.metadata.get("has_chat_template") else _FORMATS.get(architecture))
        return _LlamaModel(llm)


class _LlamaModel(LoadedModel):
    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=True, special=True))

    def generate(self, prompt: str | list[Message], params: Params, cancelled: Cancelled) -> Iterator[str | Done]:
        options: dict[str, Any] = {"max_tokens": params.num_predict, "temperature": params.temperature,
                                   "top_p": params.top_p, "top_k": params.top_k, "min_p": params.min_p,
                                   "repeat_penalty": params.repeat_penalty, "stop": list(params.stop) or None,
                                   "seed": params.seed, "stream": True}
        start = time.perf_counter_ns()
        if isinstance(prompt, str):
            prompt_tokens = self.count_tokens(prompt)
            stream = self.llm.create_completion(prompt, **options)
        else:
            prompt_tokens = 0
            stream = self.llm.create_chat_completion(messages=prompt, **options)
        first: int | None = None
        count, reason = 0, "stop"
        for chunk in stream:
            choice = chunk["choices"][0]
            text = choice.get("text") if "text" in choice else choice.get("delta", {}).get("content")
            if text:
                first = first or time.perf_counter_ns()
                count += 1
                yield text
            if cancelled():
                return
            reason = choice.get("finish_reason") or reason
        end = time.perf_counter_ns()
        if not prompt_tokens:
            prompt_tokens = self.llm.n_tokens - count
        first = first or end
        yield Done("length" if reason == "length" else "stop", prompt_tokens, count, first - start, end - first)

    def unload(self) -> None:
        self.llm.close()

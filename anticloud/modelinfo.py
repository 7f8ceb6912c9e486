"""What clients are told about a model (/api/show, /api/tags, `anticloud models show`), from its GGUF header.

Only what the bounded pre-parse (`anticloud.gguf`) read from the stored weights is reported:
the architecture, the parameter count (every tensor's elements), the quantisation the file
declares, the context and embedding lengths the model was trained with, and its chat
template. Nothing is guessed from a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anticloud.engines.base import made_for_embeddings
from anticloud.gguf import GgufInfo

# llama.cpp's llama_ftype (include/llama.h), the value of general.file_type.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}


@dataclass(frozen=True, slots=True)
class ModelFacts:
    architecture: str
    parameters: int
    quantization: str
    context_length: int | None  # what the model was trained with; the appliance loads compute.n_ctx
    embedding_length: int | None
    chat_template: bool
    metadata: dict[str, str | int]  # the header's descriptive keys (anticloud.gguf keeps which)

    def capabilities(self, can_embed: bool) -> list[str]:
        """Ollama's ``capabilities``: "completion" for a language model (not one trained only to embed,
        which declares a pooling type), "embedding" where its engine makes embeddings of it."""
        return (["completion"] if not made_for_embeddings(self.metadata) else []) + (["embedding"] if can_embed else [])

    @property
    def parameter_size(self) -> str:
        """Ollama's way to write a parameter count: "135.0M", "1.2B"."""
        n = self.parameters
        return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else str(n)

    def details(self) -> dict[str, Any]:
        """Ollama's ``details``."""
        return {"format": "gguf", "family": self.architecture, "families": [self.architecture] if self.architecture
                else [], "parameter_size": self.parameter_size, "quantization_level": self.quantization}

    def model_info(self) -> dict[str, Any]:
        """Ollama's ``model_info``: GGUF keys, the architecture's under its name."""
        arch = self.architecture
        info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": self.parameters}
        if self.context_length is not None:
            info[f"{arch}.context_length"] = self.context_length
        if self.embedding_length is not None:
            info[f"{arch}.embedding_length"] = self.embedding_length
        return info


def facts(info: GgufInfo) -> ModelFacts:
    """What ``info`` (the pre-parse of a model's weights) says about the model."""
    meta = info.metadata
    arch = str(meta.get("general.architecture", ""))
    file_type = meta.get("general.file_type")
    quant = _FILE_TYPES.get(file_type, f"file type {file_type}") if isinstance(file_type, int) else "unknown"
    return ModelFacts(arch, info.parameters, quant, _int(meta.get(f"{arch}.context_length")),
                      _int(meta.get(f"{arch}.embedding_length")), bool(info.chat_templates), dict(meta))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

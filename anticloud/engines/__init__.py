"""Inference engines, found as plugins in the ``anticloud.engines`` entry-point group.

The built-in llama.cpp engine is registered there the same way a third-party one would be.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from anticloud.engines.base import (
    Batched,
    ChatTemplate,
    Done,
    Embedding,
    Engine,
    LoadedModel,
    LoadSpec,
    Message,
    Params,
    made_for_embeddings,
)
from anticloud.errors import EngineError

GROUP = "anticloud.engines"
_extra: dict[str, type[Engine]] = {}


def register(name: str, engine: type[Engine]) -> None:
    """Add an engine without packaging it (the test suite's fake engine uses this)."""
    _extra[name] = engine


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(_extra))


def create(name: str) -> Engine:
    if name in _extra:
        return _extra[name]()
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise EngineError(f"no engine named {name!r}; installed: {', '.join(available()) or 'none'}")
    engine_class = found[0].load()
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        raise EngineError(f"the {name!r} entry point is not an anticloud Engine")
    return engine_class()


__all__ = ["Batched", "ChatTemplate", "Done", "Embedding", "Engine", "LoadSpec", "LoadedModel", "Message", "Params",
           "available", "create", "made_for_embeddings", "register"]

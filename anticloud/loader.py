"""Loading verified models into the engine and unloading them, each recorded.

Invariants:

* ``model.load`` (with the hash check, how the weights are held, the compute settings, the
  duration and the memory) and ``model.unload`` are recorded around every load and unload.
* The weights stay in their sealed memfd (`anticloud.models.VerifiedModel`) until the engine
  has unloaded them; a load that fails closes it at once.
* A model is loaded under the configuration and trust in force when the load begins.
* A refusal by the engine itself (llama.cpp reads other chat templates than the pre-parse,
  or Jinja cannot compile one) is recorded as ``model.load.refused``, like the store's.
* In a cluster, ``model.load`` states which device holds each layer (``split``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from anticloud.cluster import split
from anticloud.config import Config
from anticloud.engines import Engine, LoadedModel, LoadSpec
from anticloud.errors import LoadRefused
from anticloud.home import Home
from anticloud.models import ModelStore, VerifiedModel
from anticloud.pool import Slot
from anticloud.trust import TrustStore
from ledger import LedgerWriter


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ModelLoader:
    """The pool's loader and unloader: verify, load into ``engine``, record."""

    def __init__(self, home: Home, writer: LedgerWriter, engine: Engine, config: Callable[[], Config]) -> None:
        self.home, self.writer, self.engine, self.config = home, writer, engine, config
        self.store = ModelStore(home)
        self._verified: dict[str, VerifiedModel] = {}
        # A cluster's remote devices with their free memory, asked at each load (`anticloud.cluster`).
        self.remote: Callable[[], list[tuple[str, int]]] | None = None

    def load(self, name: str) -> tuple[LoadedModel, dict[str, object]]:
        config = self.config()
        start, rss_before = time.monotonic(), rss()
        verified = self.store.open_verified(name, TrustStore.load(self.home), config.policy, self.writer)
        try:
            compute = config.compute_for(name)
            # What the pre-parse of the sealed bytes llama.cpp is given found: its header is parsed once.
            spec = LoadSpec(name, verified.path, compute.n_ctx, compute.threads, compute.gpu_layers,
                            dict(verified.info.metadata), verified.chat_templates, compute.parallel,
                            compute.repack)
            placed = self._split(spec)  # weighed by the devices' free memory before the load, as llama.cpp does
            if placed and placed["split"]["remote_layers"]:
                # A worker's RPC server computes with weights as stored, never repacked: so do the
                # engine's own layers, and the split model answers as one machine does without
                # repacking, token for token (docs/cluster.md).
                spec = replace(spec, repack=False)
            model = self.engine.load(spec)
        except LoadRefused as exc:
            verified.close()
            self.writer.append("model.load.refused", {"model": name, "manifest": verified.model.digest,
                                                      "file": verified.file.path, **exc.evidence,
                                                      "reason": str(exc)})
            raise
        except BaseException:
            verified.close()
            raise
        self._verified[name] = verified
        data: dict[str, object] = {
            "name": name, "manifest": verified.model.digest, "file": verified.file.path,
            "sha3_256": verified.file.sha3_256, "hash_verified": True, **verified.holding(),
            "engine": self.engine.name, "n_ctx": compute.n_ctx, "threads": compute.threads,
            "gpu_layers": compute.gpu_layers, "parallel": compute.parallel, "repack": spec.repack, **placed,
            "duration_ms": round((time.monotonic() - start) * 1000),
            "rss_bytes": rss(), "rss_added_bytes": rss() - rss_before,
        }
        self.writer.append("model.load", data)
        return model, data

    def _split(self, spec: LoadSpec) -> dict[str, Any]:
        """Where a cluster's engine put each layer of the model (`anticloud.cluster.split`)."""
        blocks = spec.metadata.get(f"{spec.metadata.get('general.architecture')}.block_count")
        if self.remote is None or not spec.gpu_layers or not isinstance(blocks, int):
            return {}
        return {"split": split.describe(blocks, spec.gpu_layers, self.remote())}

    def unload(self, slot: Slot, reason: str) -> None:
        slot.model.unload()
        verified = self._verified.pop(slot.name, None)
        if verified:
            verified.close()
        self.writer.append("model.unload", {"name": slot.name, "reason": reason,
                                            "loaded_ms": round((time.monotonic() - slot.loaded_at) * 1000),
                                            "rss_bytes": rss()})

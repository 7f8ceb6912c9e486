"""The running appliance: start checks, the model pool, and every inference recorded, fail closed.

Invariants:

* The engine starts only if the configuration is one the ledger accepted and no network is
  reachable (or ``airgap.mode`` is "warn", which every record then says). A refusal is
  recorded as ``engine.refused`` with its evidence.
* ``inference.begin`` is durable before the first token is computed; if it cannot be
  appended, the inference does not run. ``inference.end`` follows with the output's hash,
  counts, durations and why it ended (stop, length, client_disconnected, client_stalled,
  error); it is
  durable before the client is told the generation is complete.
* A ``begin`` left without an ``end`` by a crash is closed at the next start by
  ``inference.interrupted``.
* Every inference passes the air-gap watch (anticloud.watch) when it is asked for and again
  just before its ``inference.begin``: a breach, a failed check or a stale one refuses it.
* ``model.load`` (with the hash check, the compute settings, the duration and the memory) and
  ``model.unload`` are recorded around every load and unload.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from anticloud import airgap, engines
from anticloud.airgap import NetworkState
from anticloud.config import Config, config_path, last_accepted, load_config, record_accepted
from anticloud.engines import Done, LoadedModel, LoadSpec, Message, Params
from anticloud.errors import EngineRefused, PromptTooLong, StreamStalled
from anticloud.home import Home
from anticloud.models import ModelStore, VerifiedModel
from anticloud.pool import ModelPool, Slot
from anticloud.trust import TrustStore
from anticloud.watch import AirGapState, AirGapWatch, sweeper
from ledger import LedgerWriter, canonical_bytes


def _sha3(data: bytes) -> str:
    return "sha3-256:" + hashlib.sha3_256(data).hexdigest()


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Appliance:
    """One running engine over one appliance home."""

    def __init__(self, home: Home, writer: LedgerWriter, config: Config, namespace: bool) -> None:
        self.home, self.writer, self.config, self.namespace = home, writer, config, namespace
        self.store = ModelStore(home)
        self.engine = engines.create(config.get("engine", "name"))
        self.gap = AirGapWatch(airgap.AirGap(True), config.get("airgap", "mode"), writer.append)
        self.pool = ModelPool(self._load, self._unload, config.get("engine", "max_loaded"),
                              config.get("engine", "keep_alive"), config.get("engine", "queue_size"))
        self._verified: dict[str, VerifiedModel] = {}
        self._watch_stop = threading.Event()

    # -- starting and stopping ------------------------------------------------------------------

    @classmethod
    def start(cls, home: Home, writer: LedgerWriter, namespace: bool = False,
              state: airgap.NetworkState | None = None) -> Appliance:
        """Run the start checks and record the start, or record the refusal and raise EngineRefused."""
        config = load_config(home)
        _check_drift(home, writer, config)
        verdict = airgap.assess(state or airgap.read_state())
        mode = config.get("airgap", "mode")
        if not verdict.isolated and mode == "enforce":
            writer.append("engine.refused", {"reason": "network reachable", "airgap": verdict.to_json(),
                                             "namespace": namespace})
            found = "".join(f"\n  {reason}" for reason in verdict.reasons())
            raise EngineRefused(f"refusing to start: a network is reachable{found}\n{airgap.FIX_HINT}")
        app = cls(home, writer, config, namespace)
        app.gap = AirGapWatch(verdict, mode, writer.append)
        app._close_interrupted()
        writer.append("engine.start", {"engine": app.engine.name, "airgap": app.airgap.label,
                                       "evidence": verdict.to_json(), "namespace": namespace,
                                       "config": config.digest(), "pid": os.getpid()})
        return app

    def stop(self, reason: str = "stopped") -> None:
        self._watch_stop.set()
        self.pool.close()
        self.writer.append("engine.stop", {"reason": reason, "pid": os.getpid()})

    def _close_interrupted(self) -> None:
        begun: dict[str, int] = {}
        with self.home.ledger.open("rb") as handle:
            for raw in handle:
                if b'"kind":"inference.' not in raw:
                    continue
                record = json.loads(raw)
                ident = record["data"].get("id")
                if record["kind"] == "inference.begin":
                    begun[ident] = record["seq"]
                else:
                    begun.pop(ident, None)
        for ident, seq in begun.items():
            self.writer.append("inference.interrupted", {"id": ident, "begin_seq": seq,
                                                         "reason": "the engine stopped before it ended"})

    # -- the air-gap watch -------------------------------------------------------------------------

    @property
    def airgap(self) -> AirGapState:
        return self.gap.state

    def watch(self, interval: float = 2.0, read_state: Callable[[], NetworkState] | None = None) -> threading.Thread:
        """Every ``interval`` seconds, in two threads that no error ends: re-check the network
        (a failed check refuses inferences until one succeeds; every change is recorded), and
        unload the models idle for longer than keep_alive. Returns the watch's thread."""
        sweeper(interval, self._watch_stop, self.pool.sweep)
        return self.gap.run(interval, self._watch_stop, read_state or airgap.read_state, self.writer.heal)

    def observe(self, state: NetworkState) -> None:
        """One successful check, recorded at once (raises LedgerError if it cannot be)."""
        self.gap.observed(state)
        self.gap.tell()

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self, name: str) -> tuple[LoadedModel, dict[str, object]]:
        policy = self.config.policy
        start, rss = time.monotonic(), _rss()
        verified = self.store.open_verified(name, TrustStore.load(self.home), policy, self.writer)
        try:
            compute = self.config.compute_for(name)
            with open(verified.fd, "rb", closefd=False) as handle:
                from anticloud.gguf import inspect

                info = inspect(handle, policy.gguf)
            spec = LoadSpec(name, verified.path, compute.n_ctx, compute.threads, compute.gpu_layers,
                            {**info.metadata, "has_chat_template": bool(info.chat_templates)})
            model = self.engine.load(spec)
        except BaseException:
            verified.close()
            raise
        self._verified[name] = verified
        data: dict[str, object] = {
            "name": name, "manifest": verified.model.digest, "file": verified.file.path,
            "sha3_256": verified.file.sha3_256, "hash_verified": True, "unchanged_since_hash": verified.unchanged(),
            "engine": self.engine.name, "n_ctx": compute.n_ctx, "threads": compute.threads,
            "gpu_layers": compute.gpu_layers, "duration_ms": round((time.monotonic() - start) * 1000),
            "rss_bytes": _rss(), "rss_added_bytes": _rss() - rss,
        }
        self.writer.append("model.load", data)
        return model, data

    def _unload(self, slot: Slot, reason: str) -> None:
        slot.model.unload()
        verified = self._verified.pop(slot.name, None)
        if verified:
            verified.close()
        self.writer.append("model.unload", {"name": slot.name, "reason": reason,
                                            "loaded_ms": round((time.monotonic() - slot.loaded_at) * 1000),
                                            "rss_bytes": _rss()})

    # -- inference -------------------------------------------------------------------------------------

    def infer(self, model: str, prompt: str | list[Message], params: Params, client: str,
              cancelled: engines.base.Cancelled = lambda: False, keep_alive: float | None = None,
              on_begin: Callable[[str], None] | None = None) -> Generator[str | Done, None, None]:
        """Stream one recorded inference. Raises before any token if it cannot be recorded or allowed.

        ``keep_alive`` (seconds; negative: for ever) replaces the model's keep-alive from now on;
        ``on_begin`` receives the inference id once its ``inference.begin`` is durable.
        """
        self.gap.allow()  # before a load or a wait in the queue; again before the begin record
        self.writer.heal()  # after a full disk or an I/O error: resume once the ledger can be written
        with self.pool.use(model) as slot:
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            yield from self._recorded(slot, prompt, params, client, cancelled, on_begin)
        if keep_alive is not None:
            self.pool.sweep()

    def _recorded(self, slot: Slot, prompt: str | list[Message], params: Params, client: str,
                  cancelled: engines.base.Cancelled,
                  on_begin: Callable[[str], None] | None) -> Generator[str | Done, None, None]:
        raw_prompt = prompt.encode() if isinstance(prompt, str) else canonical_bytes(prompt)
        n_ctx = int(str(slot.info["n_ctx"]))
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        if (length := slot.model.count_tokens(text)) >= n_ctx:
            raise PromptTooLong(f"the prompt is {length} tokens; {slot.name}'s context holds {n_ctx}")
        plaintext = self.config.get("inference", "record_content") == "plaintext"
        ident = secrets.token_hex(8)
        begin: dict[str, Any] = {"id": ident, "model": slot.name, "manifest": slot.info["manifest"],
                                 "params": params.to_json(), "prompt_sha3_256": _sha3(raw_prompt),
                                 "kind": "completion" if isinstance(prompt, str) else "chat", "client": client,
                                 "airgap": self.gap.allow().label}
        if plaintext:
            begin["prompt" if isinstance(prompt, str) else "messages"] = prompt
        self.writer.append("inference.begin", begin)  # durable before the first token, or nothing runs
        if on_begin is not None:
            on_begin(ident)
        output: list[str] = []
        end: dict[str, Any] = {"id": ident, "done_reason": "error"}
        ended = False

        def record_end() -> None:
            text = "".join(output)
            end.update(output_sha3_256=_sha3(text.encode()), output_chars=len(text), airgap=self.airgap.label)
            if plaintext:
                end["output"] = text
            self.writer.append("inference.end", end)

        try:
            for piece in slot.model.generate(prompt, params, cancelled):
                if isinstance(piece, Done):
                    end.update(done_reason=piece.done_reason, prompt_tokens=piece.prompt_tokens,
                               completion_tokens=piece.completion_tokens, prompt_eval_ns=piece.prompt_eval_ns,
                               eval_ns=piece.eval_ns)
                    ended = True
                    record_end()  # durable before the client hears the generation is complete
                else:
                    output.append(piece)
                yield piece
            if cancelled():
                end["done_reason"] = "client_disconnected"
        except GeneratorExit:
            end["done_reason"] = "client_disconnected"
            raise
        except StreamStalled:  # thrown in by the stream whose reader stopped reading
            end["done_reason"] = "client_stalled"
            raise
        finally:
            if not ended:
                record_end()

    def status(self) -> dict[str, Any]:
        head = self.writer.head
        return {"airgap": self.airgap.label, "evidence": self.airgap.verdict.to_json(), "namespace": self.namespace,
                "engine": self.engine.name, "loaded": self.pool.status(),
                "ledger": {"seq": head.seq, "hash": head.hash}}


def _check_drift(home: Home, writer: LedgerWriter, config: Config) -> None:
    accepted = last_accepted(home.ledger)
    if accepted is None and not config_path(home).exists():
        record_accepted(home, writer, "config.init")  # a home made before configuration was recorded
        return
    if accepted is not None and accepted.get("digest") == config.digest():
        return
    writer.append("config.drift", {"accepted": None if accepted is None else accepted.get("digest"),
                                   "found": config.digest(), "config": config.doc})
    accepted_mode = (accepted or {}).get("config", {}).get("airgap", {}).get("mode", "enforce")
    if accepted_mode == "enforce":
        writer.append("engine.refused", {"reason": "configuration changed outside anticloud",
                                         "found": config.digest()})
        raise EngineRefused("config.toml was changed outside anticloud (recorded as config.drift); review it with "
                            "`anticloud config show`, then `anticloud config accept`")

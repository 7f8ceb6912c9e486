"""The running appliance: start checks, the model pool, and every inference recorded, fail closed.

Invariants:

* The engine starts only if the configuration is one the ledger accepted (in every air-gap
  mode) and no network is reachable (or ``airgap.mode`` is "warn", which every record then
  says). A refusal is recorded as ``engine.refused`` with its evidence.
* ``inference.begin`` is durable before the first token is computed; if it cannot be
  appended, the inference does not run. ``inference.end`` follows with the output's hash,
  counts, durations and why it ended (stop, length, client_disconnected, client_stalled,
  error); it is
  durable before the client is told the generation is complete.
* A ``begin`` left without an ``end`` by a crash is closed at the next start by
  ``inference.interrupted``. Starting reads only the records since the last ``engine.start``
  or ``engine.stop`` (both state the accepted configuration's digest, for the drift check), so
  it does not grow with the ledger.
* Every inference passes the air-gap watch (anticloud.watch) when it is asked for and again
  just before its ``inference.begin``: a breach, a failed check or a stale one refuses it.
* ``model.load`` (with the hash check, how the weights are held, the compute settings, the
  duration and the memory) and ``model.unload`` are recorded around every load and unload.
  The weights stay in their sealed memfd (`anticloud.models.VerifiedModel`) until the engine
  has unloaded them.
* A configuration or trust change recorded by another process is in force for every record
  that follows it: before each governed operation the engine takes over what was recorded
  (`refresh`), and the records it writes are built under the ledger's lock only once nothing
  new was recorded (`_append_governed`). Settings take effect at once, except those that
  shape a loaded model (compute, per-model, trust, GGUF and template policy), which unload
  the loaded models so the next use loads them under the new settings, and ``engine.name``,
  which takes effect at the next start (its ``config.change`` says so). A revoked publisher
  key unloads the loaded models; the next load re-checks signatures and is refused.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from anticloud import airgap, engines
from anticloud.airgap import NetworkState
from anticloud.config import ACCEPTED, Config, config_path, last_accepted, load_config, merge, record_accepted
from anticloud.engines import Done, LoadedModel, LoadSpec, Message, Params
from anticloud.errors import Busy, EngineRefused, LoadRefused, PromptTooLong, StreamStalled
from anticloud.follow import LedgerFollower, StateChanged
from anticloud.home import Home
from anticloud.models import ModelStore, VerifiedModel
from anticloud.pool import ModelPool, Slot
from anticloud.trust import TrustStore
from anticloud.watch import AirGapState, AirGapWatch, sweeper
from ledger import LedgerWriter, Record, canonical_bytes, records_backward

# Sections that shape a loaded model: a change to one unloads the loaded models, so that the
# next use loads them under it rather than keep serving what the old settings admitted.
RELOAD_SECTIONS = ("compute", "models", "trust", "gguf", "chat_templates")
REVOKED = "trust.revoke"
_GOVERNED_TRIES = 8


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
        self._follower = LedgerFollower(home.ledger)
        self._refresh_lock = threading.Lock()
        self._stale: dict[str, str] = {}  # loaded models to unload as soon as idle -> why

    # -- starting and stopping ------------------------------------------------------------------

    @classmethod
    def start(cls, home: Home, writer: LedgerWriter, namespace: bool = False,
              state: airgap.NetworkState | None = None) -> Appliance:
        """Run the start checks and record the start, or record the refusal and raise EngineRefused."""
        follower = LedgerFollower(home.ledger)  # before reading the config: a change made meanwhile is taken
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
        app._follower = follower
        app.gap = AirGapWatch(verdict, mode, writer.append)
        app._close_interrupted()
        writer.append("engine.start", {"engine": app.engine.name, "airgap": app.airgap.label,
                                       "evidence": verdict.to_json(), "namespace": namespace,
                                       "config": config.digest(), ACCEPTED: config.digest(), "pid": os.getpid()})
        return app

    def stop(self, reason: str = "stopped") -> None:
        self._watch_stop.set()
        self.pool.close()
        # Built under the ledger's lock once every recorded change is in force, so the digest it
        # states is the newest accepted one: the next start's drift check reads back to here only.
        self._append_governed("engine.stop", lambda: {"reason": reason, "pid": os.getpid(),
                                                      ACCEPTED: self.config.digest()})

    def _close_interrupted(self) -> None:
        """Close by ``inference.interrupted`` every begin that a crash left without an end.

        Only the records after the newest ``engine.start`` or ``engine.stop`` are read, backwards
        from the head, because every begin before that record is closed already. By induction
        over the engines of this home, which run one at a time: each start closes the begins
        open before it, before it records ``engine.start`` (so a crash during this recovery
        leaves no boundary after the begins it has not closed yet), and a clean ``engine.stop``
        is recorded after its engine's generations ended. A crash leaves neither after its
        begins, so the scan reaches back to its ``engine.start``.
        """
        closed: set[str] = set()
        left_open: list[tuple[str, int]] = []
        for located in records_backward(self.home.ledger, ("inference.", "engine.start", "engine.stop")):
            record = located.record
            if record.kind in ("engine.start", "engine.stop"):
                break
            ident = record.data.get("id")
            if not isinstance(ident, str):
                continue
            if record.kind != "inference.begin":
                closed.add(ident)
            elif ident not in closed:
                left_open.append((ident, record.seq))
        for ident, seq in reversed(left_open):
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

    # -- recorded changes from other processes ------------------------------------------------

    def refresh(self) -> None:
        """Put in force what other processes recorded since the last look, and unload the models
        that a change made stale once nobody uses them. Cheap when nothing was recorded."""
        with self._refresh_lock:
            for record in self._follower.take():
                if record.kind == REVOKED:
                    self._stale.update(dict.fromkeys(self._loaded(), REVOKED))
                elif record.kind.startswith("config."):
                    self._apply(Config(merge(record.data["config"], f"ledger record {record.seq}")))
            for name, reason in list(self._stale.items()):
                if self.pool.drop_idle(name, reason):
                    del self._stale[name]

    def _apply(self, config: Config) -> None:
        old, self.config = self.config, config
        self.gap.set_mode(config.get("airgap", "mode"))
        self.pool.keep_alive = config.get("engine", "keep_alive")
        self.pool.max_loaded = config.get("engine", "max_loaded")
        self.pool.queue_size = config.get("engine", "queue_size")
        if any(old.doc.get(section) != config.doc.get(section) for section in RELOAD_SECTIONS):
            for name in self._loaded():
                self._stale.setdefault(name, "config.change")

    def _loaded(self) -> list[str]:
        return [str(slot["name"]) for slot in self.pool.status()]

    def _check_fresh(self, name: str) -> None:
        reason = self._stale.get(name)
        if reason == REVOKED:
            raise LoadRefused(f"refusing {name}: a publisher key was revoked since it was loaded; it is being "
                              "unloaded and will be verified again", {"model": name, "reason": reason})
        if reason is not None:
            raise Busy(f"{name} is being reloaded after a recorded configuration change; try again shortly")

    def _append_governed(self, kind: str, build: Callable[[], dict[str, Any]],
                         check: Callable[[], None] = lambda: None) -> Record:
        """Append a record built from the state in force, which no configuration or trust record
        can precede unseen: the builder runs under the ledger's lock, after checking that nothing
        new was recorded since `refresh`; if something was, take it over and build again."""
        def derived(head: Record) -> dict[str, Any]:
            if self._follower.pending(os.stat(self.home.ledger).st_size):
                raise StateChanged("a configuration or trust change was recorded meanwhile")
            return build()

        for _ in range(_GOVERNED_TRIES):
            self.refresh()
            check()
            try:
                return self.writer.append_derived(kind, derived)
            except StateChanged:
                continue
        raise Busy("the configuration or trust store keeps changing; try again shortly")

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self, name: str) -> tuple[LoadedModel, dict[str, object]]:
        policy = self.config.policy
        start, rss = time.monotonic(), _rss()
        verified = self.store.open_verified(name, TrustStore.load(self.home), policy, self.writer)
        try:
            compute = self.config.compute_for(name)
            # What the pre-parse of the sealed bytes llama.cpp is given found: its header is parsed once.
            spec = LoadSpec(name, verified.path, compute.n_ctx, compute.threads, compute.gpu_layers,
                            dict(verified.info.metadata), verified.chat_templates)
            model = self.engine.load(spec)
        except BaseException:
            verified.close()
            raise
        self._verified[name] = verified
        data: dict[str, object] = {
            "name": name, "manifest": verified.model.digest, "file": verified.file.path,
            "sha3_256": verified.file.sha3_256, "hash_verified": True, **verified.holding(),
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
        self.refresh()
        self._check_fresh(model)
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
        # An early refusal before anything is recorded. It counts the text alone, which for a chat
        # is less than the engine decodes once a template wraps each message: the engine counts
        # what it decodes and raises PromptTooLong itself (recorded in inference.end).
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        if (length := slot.model.count_tokens(text)) >= n_ctx:
            raise PromptTooLong(f"the prompt is {length} tokens; {slot.name}'s context holds {n_ctx}")
        ident = secrets.token_hex(8)

        def plaintext() -> bool:
            return bool(self.config.get("inference", "record_content") == "plaintext")

        def build_begin() -> dict[str, Any]:
            begin: dict[str, Any] = {"id": ident, "model": slot.name, "manifest": slot.info["manifest"],
                                     "params": params.to_json(), "prompt_sha3_256": _sha3(raw_prompt),
                                     "kind": "completion" if isinstance(prompt, str) else "chat", "client": client,
                                     "airgap": self.gap.allow().label}
            if plaintext():
                begin["prompt" if isinstance(prompt, str) else "messages"] = prompt
            return begin

        # durable before the first token, or nothing runs
        self._append_governed("inference.begin", build_begin, lambda: self._check_fresh(slot.name))
        if on_begin is not None:
            on_begin(ident)
        output: list[str] = []
        end: dict[str, Any] = {"id": ident, "done_reason": "error"}
        ended = False

        def build_end() -> dict[str, Any]:
            text = "".join(output)
            data = {**end, "output_sha3_256": _sha3(text.encode()), "output_chars": len(text),
                    "airgap": self.airgap.label}
            if plaintext():
                data["output"] = text
            return data

        def record_end() -> None:
            self._append_governed("inference.end", build_end)

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
        except Exception as exc:
            end["error"] = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
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
    """Refuse to start, in every air-gap mode, on a configuration no record accepted (recorded)."""
    accepted = last_accepted(home.ledger)
    if accepted is None and not config_path(home).exists():
        record_accepted(home, writer, "config.init")  # a home made before configuration was recorded
        return
    if accepted is not None and accepted.get("digest") == config.digest():
        return
    writer.append("config.drift", {"accepted": None if accepted is None else accepted.get("digest"),
                                   "found": config.digest(), "config": config.doc})
    writer.append("engine.refused", {"reason": "configuration changed outside anticloud", "found": config.digest()})
    raise EngineRefused("config.toml was changed outside anticloud (recorded as config.drift); review it with "
                        "`anticloud config show`, then `anticloud config accept`")

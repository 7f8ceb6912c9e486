"""The running appliance: one facade over the parts that each keep one promise.

* `anticloud.startup` decides whether the engine may start and closes what the engine before
  it left open;
* `anticloud.watch` keeps the air-gap verdict every inference must pass;
* `anticloud.governor` keeps the configuration and trust in force, as the ledger last
  recorded them, and appends the records built under them;
* `anticloud.loader` verifies, loads and unloads models, each recorded;
* `anticloud.inference` runs each inference between its durable begin and its end, and
  `anticloud.embedding` each embedding request, recorded the same way.

Invariants (those of the parts hold too):

* ``engine.start`` is recorded only after the start checks passed and the last engine's open
  inferences were closed; it and ``engine.stop`` state the accepted configuration's digest in
  force when they are written (built under the ledger's lock), which the next start's drift
  check reads back to.
* ``engine.stop`` is recorded after every inference of this engine ended or was recorded as
  interrupted, so the next start's scan for open inferences can stop at it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from anticloud import actor, airgap, clock, engines, startup, tokens
from anticloud.airgap import NetworkState
from anticloud.backlog import Backlog
from anticloud.cluster import engine as cluster_engine
from anticloud.cluster import settings as cluster_settings
from anticloud.config import ACCEPTED, Config, load_config
from anticloud.embedding import Embedded, EmbedRequest, embed
from anticloud.engines import Done, Message, Params
from anticloud.engines.base import Cancelled
from anticloud.errors import ClusterLost
from anticloud.follow import LedgerFollower
from anticloud.governor import Governor
from anticloud.home import Home
from anticloud.identity import key_id, load_identity
from anticloud.inference import Check, Inferences
from anticloud.loader import ModelLoader
from anticloud.modelinfo import ModelFacts
from anticloud.models import ModelStore, StoredModel
from anticloud.pool import ModelPool, Slot
from anticloud.vault import ContentStore, Keyring, LazySealer
from anticloud.vault.erasure import Eraser
from anticloud.vault.sealer import pinned_sealer, utc_now
from anticloud.watch import AirGapState, AirGapWatch, every, sweeper
from ledger import Checkpoint, LedgerError, LedgerWriter, SignedCheckpoint, sign_checkpoint, utc_timestamp

RETENTION_INTERVAL = 3600.0  # seconds between two looks for sealed content past its retention
STOP_GRACE = 10.0  # seconds the open inferences have to end once the engine stops


class Appliance:
    """One running engine over one appliance home."""

    def __init__(self, home: Home, writer: LedgerWriter, config: Config, namespace: bool,
                 verdict: airgap.AirGap | None = None, follower: LedgerFollower | None = None,
                 clock_reader: Callable[[], clock.Reading] = clock.read,
                 link: airgap.ClusterLink | None = None) -> None:
        self.home, self.writer, self.namespace = home, writer, namespace
        self.engine = engines.create(config.get("engine", "name"))
        self.backlog = Backlog(writer.append)  # what a failing ledger could not take, recorded once it can
        self.gap = AirGapWatch(verdict or airgap.AirGap(True), config.get("airgap", "mode"), self.backlog, link=link)
        self.cluster: cluster_engine.Cluster | None = None  # set once its links are proven, at start
        self._lost_told = False  # cluster.lost is recorded once
        self.clock = clock.ClockWatch(config.get("clock", "jump_threshold"), self._clock_jumped, clock_reader)
        self.loader = ModelLoader(home, writer, self.engine, lambda: self.governor.config)
        self.pool = ModelPool(self.loader.load, self.loader.unload, config.get("engine", "max_loaded"),
                              config.get("engine", "keep_alive"), config.get("engine", "queue_size"))
        self.token_use = tokens.UseLog(home)
        self.governor = Governor(home.ledger, writer, follower or LedgerFollower(home.ledger), config, self.gap,
                                 self.pool, self.clock)
        ledger_id = str(writer.genesis.data["ledger_id"])
        self.sealer = LazySealer(lambda: pinned_sealer(Keyring(home.keyring), ContentStore(home.content), home.ledger,
                                                       ledger_id))
        self.inferences = Inferences(writer, self.governor, self.gap, self.sealer,
                                     lambda: self.cluster.link_bytes() if self.cluster else None)
        self._watch_stop = threading.Event()

    @property
    def config(self) -> Config:
        """The configuration in force: the one the ledger recorded last."""
        return self.governor.config

    @property
    def store(self) -> ModelStore:
        return self.loader.store

    # -- starting and stopping ------------------------------------------------------------------

    @classmethod
    def start(cls, home: Home, writer: LedgerWriter, namespace: bool = False,
              state: airgap.NetworkState | None = None,
              clock_reader: Callable[[], clock.Reading] = clock.read) -> Appliance:
        """Run the start checks and record the start, or record the refusal and raise EngineRefused.
        ``state`` and ``clock_reader`` stand in for the kernel's network and clocks (tests)."""
        actor.attach(writer)  # every record says who acted, however the writer was opened
        follower = LedgerFollower(home.ledger)  # before reading the config: a change made meanwhile is taken
        config = load_config(home)
        startup.check_drift(home, writer, config)
        link = cluster_settings.link(config.doc["cluster"])  # the guard's one exception, if configured
        verdict = airgap.assess(state or airgap.read_state(), link)
        startup.check_network(writer, verdict, config.get("airgap", "mode"), namespace)
        app = cls(home, writer, config, namespace, verdict, follower, clock_reader, link)
        startup.close_interrupted(home.ledger, writer)
        if link is not None:
            app.cluster = cluster_engine.start(home, writer, config, link)
            app.loader.remote = app.cluster.free_memory
        try:
            app.record_start(verdict, namespace)
        except BaseException:
            if app.cluster is not None:
                app.cluster.close()
            raise
        return app

    def record_start(self, verdict: airgap.AirGap, namespace: bool) -> None:
        """``engine.start``, then what content keeping a crash or retention left to do."""
        # Built under the ledger's lock, so the accepted digest it states is the one in force
        # then, even if a change was recorded since the drift check.
        self.governor.append("engine.start", lambda: {
            "engine": self.engine.name, "airgap": self.airgap.label, "evidence": verdict.to_json(),
            "namespace": namespace, "config": self.config.digest(), ACCEPTED: self.config.digest(),
            "pid": os.getpid(), "clock": clock.describe()})
        self.keep_content()

    def keep_content(self) -> None:
        """Finish an erasure a crash interrupted, and erase what ``inference.content_retention`` let expire."""
        if not self.home.keyring.exists():
            return
        eraser = Eraser(Keyring(self.home.keyring), ContentStore(self.home.content), self.home.ledger, self.writer)
        eraser.finish()
        eraser.expire(self.config.get("inference", "content_retention"), utc_now())

    def stop(self, reason: str = "stopped") -> None:
        """End every inference (cancelled within a token), unload the models, record ``engine.stop``."""
        self._watch_stop.set()
        self.inferences.stop(STOP_GRACE)
        if self.cluster is None or self.cluster.lost() is None:
            self.pool.close(STOP_GRACE)  # with the link lost, llama.cpp would abort freeing the remote layers
        # Built under the ledger's lock once every recorded change is in force, so the digest it
        # states is the newest accepted one: the next start's drift check reads back to here only.
        self.governor.append("engine.stop", lambda: {"reason": reason, "pid": os.getpid(),
                                                     ACCEPTED: self.config.digest()})
        if self.cluster is not None:
            self.cluster.close()
        self.token_use.flush()

    # -- the air-gap watch -------------------------------------------------------------------------

    @property
    def airgap(self) -> AirGapState:
        return self.gap.state

    def watch(self, interval: float = 2.0, read_state: Callable[[], NetworkState] | None = None) -> threading.Thread:
        """Every ``interval`` seconds, in threads that no error ends: re-check the network (a
        failed check refuses inferences until one succeeds; every change is recorded), then
        reopen a failed ledger and record what the failure left (`heal`); compare the wall clock
        with the steady one (a jump is recorded, `anticloud.clock`); and unload the models idle
        for longer than keep_alive; and, in another, seal every ``ledger.seal_interval`` seconds
        once an auditor has enrolled. Returns the air-gap watch's thread."""
        sweeper(interval, self._watch_stop, self.pool.sweep)
        every("clock-watch", interval, self._watch_stop, self.clock.check)
        every("content-retention", RETENTION_INTERVAL, self._watch_stop, self.keep_content)
        # An idle engine still closes an epoch every seal_interval (a heartbeat): a tail cut from
        # the ledger then shows as a gap or a stale last seal (nothing, if no auditor enrolled).
        every("seal", self.config.get("ledger", "seal_interval"), self._watch_stop, self.writer.seal)
        return self.gap.run(interval, self._watch_stop, read_state or airgap.read_state, self.heal)

    def _clock_jumped(self, jump: clock.Jump) -> None:
        self.backlog.hold("clock.jump", {**jump.to_json(), "threshold_ms": round(self.clock.threshold * 1000)})
        with contextlib.suppress(LedgerError):  # held, and written once the ledger can take it
            self.heal()

    # -- the ledger failing ------------------------------------------------------------------------

    def heal(self) -> None:
        """Before an operation, and after every check of the watch: reopen a ledger that an earlier
        failure poisoned, then record what the failure left: ``ledger.outage`` and the changes held
        meanwhile (`anticloud.backlog`). Raises LedgerError while the ledger cannot be written, so
        that no operation's record comes before the outage it followed."""
        failure = self.writer.failure
        if failure is not None:
            self.backlog.failed(failure)
        try:
            self.writer.heal()
        except LedgerError as exc:
            self.backlog.failed(exc)
            raise
        self.backlog.tell()

    def refused(self, exc: BaseException) -> None:
        """An operation was refused because of ``exc``: counted in the outage if the ledger failed."""
        self.backlog.failed(exc, refused=True)

    def observe(self, state: NetworkState) -> None:
        """One successful check, recorded at once (raises LedgerError if it cannot be)."""
        self.gap.observed(state)
        self.gap.tell()

    def refresh(self) -> None:
        """Put in force what other processes recorded since the last look (`Governor.refresh`)."""
        self.governor.refresh()

    # -- inference -------------------------------------------------------------------------------------

    def infer(self, model: str, prompt: str | list[Message], params: Params, client: str,
              cancelled: Cancelled = lambda: False, keep_alive: float | None = None,
              on_begin: Callable[[str], None] | None = None, request: dict[str, Any] | None = None,
              cancel_reason: str = "client_disconnected",
              check_output: Check | None = None) -> Generator[str | Done, None, None]:
        """Stream one recorded inference. Raises before any token if it cannot be recorded or allowed.

        ``keep_alive`` (seconds; negative: for ever) replaces the model's keep-alive from now on;
        ``on_begin`` receives the inference id once its ``inference.begin`` is durable;
        ``request`` (what the client said beside the parameters) is recorded in it;
        ``cancel_reason`` is what ``inference.end`` says once ``cancelled()`` stopped it
        ("interrupted" for the operator's Ctrl-C at the terminal);
        ``check_output`` (the output against the format asked for) has its verdict recorded in ``inference.end``.
        """
        with self._slot(model, keep_alive) as slot:
            yield from self.inferences.run(slot, prompt, params, client, cancelled, on_begin, request, cancel_reason,
                                           check_output)

    def embed(self, model: str, asked: EmbedRequest, client: str, cancelled: Cancelled = lambda: False,
              keep_alive: float | None = None) -> Embedded:
        """Embed the texts asked for, recorded as an inference (`anticloud.embedding`). Raises before
        anything is computed if it cannot be recorded or allowed; ``keep_alive`` as for `infer`."""
        with self._slot(model, keep_alive) as slot:
            return embed(self.inferences, slot, asked, client, cancelled)

    def check_link(self) -> None:
        """Refuse every operation once a worker ended its session: llama.cpp aborts the process at
        its next use of a lost link, for any model (a load asks every device for its memory).
        Recorded once as ``cluster.lost``."""
        lost = self.cluster.lost() if self.cluster is not None else None
        if lost is None:
            return
        if not self._lost_told:
            self._lost_told = True
            self.backlog.hold("cluster.lost", lost)
            with contextlib.suppress(LedgerError):  # held, and written once the ledger can take it
                self.heal()
        raise ClusterLost(f"the cluster link to {lost['peer']} was lost ({lost['reason']}); restart the engine "
                          "once the worker serves again")

    @contextmanager
    def _slot(self, model: str, keep_alive: float | None) -> Iterator[Slot]:
        """``model``'s slot, loaded if need be, held for one operation; refused first if no operation
        may run (the engine stopping, the air gap breached, the ledger failing, the model stale)."""
        self.inferences.check_open()
        self.check_link()
        self.gap.allow()  # before a load or a wait in the queue; again before the begin record
        self.heal()  # after a full disk or an I/O error: resume once the ledger can be written
        self.refresh()
        self.governor.check_fresh(model)
        with self.pool.use(model) as slot:
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            yield slot
        if keep_alive is not None:
            self.pool.sweep()

    def preload(self, model: str, keep_alive: float | None = None) -> str:
        """Load ``model`` ahead of use (recorded as ``model.load``), keeping it ``keep_alive``
        seconds; with ``keep_alive`` 0, unload it if it is loaded and idle instead. Returns
        "load" or "unload", as Ollama answers an empty prompt."""
        self.inferences.check_open()
        self.heal()
        self.refresh()
        self.check_link()
        if keep_alive == 0:
            self.pool.drop_idle(model, "keep_alive")
            return "unload"
        self.gap.allow()  # weights are loaded only while the air gap holds
        self.governor.check_fresh(model)
        with self.pool.use(model) as slot:
            if keep_alive is not None:
                slot.keep_alive = keep_alive
        return "load"

    def status(self) -> dict[str, Any]:
        head = self.writer.head
        status = {"airgap": self.airgap.label, "evidence": self.airgap.verdict.to_json(), "namespace": self.namespace,
                  "engine": self.engine.name, "loaded": self.pool.status(),
                  "ledger": {"seq": head.seq, "hash": head.hash}}
        if self.cluster is not None:
            sent, received = self.cluster.link_bytes()
            status["cluster"] = {"peers": self.cluster.peers, "link_bytes": {"sent": sent, "received": received}}
        return status

    # -- what the API asks of the engine ---------------------------------------------------------

    def setting(self, section: str, key: str) -> Any:
        """The setting in force: the one last recorded, once `refresh` has taken it over."""
        return self.config.get(section, key)

    def context_size(self, model: str) -> int:
        """The context ``model`` is (or would be) loaded with, its per-model settings included."""
        return self.config.compute_for(model).n_ctx

    def model(self, name: str) -> StoredModel:
        """The stored model ``name``, without loading it; ModelError if there is none."""
        return self.store.get(name)

    def facts(self, name: str) -> ModelFacts:
        """What the stored weights of ``name`` say about the model (ModelError if they cannot be read)."""
        return self.store.facts(name, self.config.policy.gguf)

    def models(self) -> list[StoredModel]:
        """Every stored model, whether loaded or not."""
        return self.store.list()

    def loaded(self) -> list[dict[str, object]]:
        """The loaded models: ``name``, ``busy``, ``waiting`` and ``expires_in`` (seconds)."""
        return self.pool.status()

    def token_for(self, presented: str) -> tokens.Token | None:
        """The live token whose secret is ``presented``, compared in constant time with every one.

        tokens.json is read afresh, so a token created or revoked by another process is in force
        at once; UnsafeHomeError if anyone but its owner could have written it.
        """
        token = tokens.identify(tokens.load(self.home), presented)
        if token is not None:
            self.token_use.seen(token)
        return token

    def record_rejected(self, data: dict[str, Any]) -> None:
        """Record one ``request.rejected`` (LedgerError if it cannot be written)."""
        self.writer.append("request.rejected", data)

    def head_signer(self) -> Callable[[], SignedCheckpoint]:
        """Read the identity key now, once, and return what signs a checkpoint of the head on each call.

        The key stays inside the returned function: in no attribute, log or repr. Raises
        NotInitializedError or KeyFileError now if the key cannot be read.
        """
        key = load_identity(self.home)
        signer = key_id(key)

        def sign_head() -> SignedCheckpoint:
            head, genesis = self.writer.head, self.writer.genesis
            return sign_checkpoint(Checkpoint(genesis.data["ledger_id"], head.seq, head.hash, utc_timestamp(),
                                              signer), key)

        return sign_head

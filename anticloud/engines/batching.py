"""Continuous batching: up to ``parallel`` generations decoded together on one llama.cpp context.

One thread, the scheduler, owns the context. Each step decodes one batch (``llama_decode``)
holding the next token of every generation under way and, in the room left (``n_batch``), the
next chunk of each new prompt (chunked prefill), as llama-server's slots do; then it samples each
generation's next token from its own logits (``llama_sampler_sample(chain, ctx, idx)``).

Invariants:

* Each generation has its own sequence id, and with it its own part of the KV cache, which holds
  the whole window a request may fill (the context is split per sequence: a prompt that fits
  alone fits whatever else runs). It keeps its own sampler chain, grammar, stop strings and budget.
* Tokens go into a batch in sequence-id order, the lowest free id is given out first: llama.cpp
  packs only consecutive sequence ids into one compute of a split cache.
* Backpressure is per generation: one whose reader has `DEPTH` pieces unread sits the step out,
  and the others go on. One whose reader went away (closed it, or ``cancelled()``) is dropped at
  the next step and its cells freed (``llama_memory_seq_rm``).
* A deterministic generation is decoded alone: its prompt in the chunks a single stream uses, each
  later token in a batch of its own, on its own part of the cache. llama.cpp's kernels then compute
  what they would with nobody else running, so its output is the single-stream one; in a shared
  batch they may round differently (matrix kernels change with the number of rows).
* A decode that fails fails each generation in that batch with `EngineError`; the others go on.
  A fault in the scheduler itself fails every generation, and the model refuses new ones.
* `exclusive` runs its body with no generation under way and none admitted (embeddings switch the
  context to output embeddings and empty its cache).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from anticloud.engines.base import Batched, Cancelled, Done
from anticloud.engines.sampling import Sampler, StopStrings
from anticloud.errors import EngineError

DEPTH = 4  # pieces a generation may have unread before it sits steps out
POLL = 0.05  # seconds between looks at the cancel flags while every generation waits for its reader
WAKE = 1.0  # seconds between a waiting reader's own looks at its cancel flag and at the scheduler


@dataclass(eq=False)
class Generation:
    """One request's generation, as the scheduler runs it."""

    tokens: list[int]  # the prompt
    sampler: Sampler
    stop: StopStrings
    budget: int  # tokens it may generate
    deterministic: bool
    cancelled: Cancelled
    what: str  # "prompt" or "chat", for messages
    seq_id: int = -1
    fed: int = 0  # prompt tokens decoded
    next: int | None = None  # the token sampled last, decoded at the next step
    count: int = 0
    reason: str = "length"
    out: deque[str | Done | Exception] = field(default_factory=deque)
    over: bool = False  # nothing more will be queued in ``out``
    closed: bool = False  # its reader went away
    steps: int = 0
    shared: int = 0
    most_others: int = 0
    start: int = field(default_factory=time.perf_counter_ns)
    first: int = 0  # when its prompt was decoded
    ready: threading.Condition | None = None  # signalled when ``out`` grows or it is over


class Scheduler:
    def __init__(self, llm: Any, parallel: int) -> None:
        import llama_cpp as c

        self.llm, self.parallel = llm, parallel
        self.ctx, self.vocab = llm._ctx.ctx, llm._model.vocab  # noqa: SLF001 -- no public handle on them
        self.n_batch = llm.n_batch
        self._batch = c.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # wakes the scheduler and `exclusive`
        self._waiting: deque[Generation] = deque()
        self._running: list[Generation] = []
        self._exclusive = 0  # callers waiting for, or in, exclusive use
        self._held = False  # one of them is in it
        self._closing = False
        self._fault: str | None = None
        self._thread = threading.Thread(target=self._loop, name="llama-scheduler", daemon=True)
        self._thread.start()

    # -- the readers' side -------------------------------------------------------------------

    def run(self, generation: Generation) -> Iterator[str | Done]:
        """Queue ``generation`` and yield its pieces, then its `Done`; stop early, without it,
        once its ``cancelled()`` is true."""
        generation.ready = threading.Condition(self._lock)
        with self._lock:
            if self._fault or self._closing:
                generation.sampler.free()
                raise EngineError(self._fault or "the model is being unloaded")
            self._waiting.append(generation)
            self._changed.notify_all()
        try:
            while True:
                with self._lock:
                    while not (generation.out or generation.over):
                        # Signalled by the scheduler; looked at again now and then, so that a reader
                        # never waits for ever on a scheduler that is gone, or for a cancelled generation.
                        if generation.cancelled():
                            return
                        if not self._thread.is_alive():
                            raise EngineError(self._fault or "the llama.cpp scheduler stopped")
                        generation.ready.wait(WAKE)
                    if not generation.out:
                        return
                    item = generation.out.popleft()
                    self._changed.notify_all()  # room again: it may take part in the next step
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Done) or generation.cancelled():
                    return
        finally:
            with self._lock:
                generation.closed = True
                self._changed.notify_all()

    def running(self) -> int:
        """Generations queued or under way."""
        with self._lock:
            return len(self._waiting) + len(self._running)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The context to oneself: once the generations under way are over; none start meanwhile."""
        with self._lock:
            self._exclusive += 1
            try:
                self._changed.wait_for(lambda: not self._running and not self._held)
            except BaseException:
                self._exclusive -= 1
                raise
            self._held = True
        try:
            yield
        finally:
            with self._lock:
                self._exclusive -= 1
                self._held = False
                self._changed.notify_all()

    def close(self) -> None:
        """Stop the scheduler; what is queued or under way fails with EngineError."""
        import llama_cpp as c

        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        c.llama_batch_free(self._batch)

    # -- the scheduler's side ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    self._changed.wait_for(self._work, timeout=POLL)
                    if self._closing:
                        self._fail_all("the model is being unloaded")
                        return
                    self._drop_gone()
                    self._admit()
                    ready = [g for g in self._running if not g.over and len(g.out) < DEPTH]
                shared = [g for g in ready if not g.deterministic]
                if shared:
                    self._step(shared)
                for alone in (g for g in ready if g.deterministic):
                    self._step([alone])
        except BaseException as exc:  # noqa: BLE001 -- a fault here must not leave a reader waiting for ever
            with self._lock:
                self._fault = f"the llama.cpp scheduler failed: {type(exc).__name__}: {exc}"
                self._fail_all(self._fault)  # and were this to fail too, each reader sees the thread gone (run)

    def _work(self) -> bool:
        if self._closing or (self._waiting and not self._exclusive):
            return True
        return any(g.closed or g.over or len(g.out) < DEPTH for g in self._running)

    def _drop_gone(self) -> None:
        """Under the lock: forget the generations whose readers went away, and free their cells."""
        import llama_cpp as c

        for generation in [g for g in self._waiting if g.closed or g.cancelled()]:
            self._waiting.remove(generation)
            self._over(generation)
        for generation in [g for g in self._running if g.closed or g.cancelled() or g.over]:
            self._running.remove(generation)
            c.llama_memory_seq_rm(c.llama_get_memory(self.ctx), generation.seq_id, -1, -1)
            self._over(generation)
        if not self._running:
            self._changed.notify_all()  # `exclusive` may go on

    def _admit(self) -> None:
        """Under the lock: give the waiting generations the lowest free sequence ids, their cells emptied
        whatever used them last (llama-cpp-python's own loop too, which a benchmark may run)."""
        import llama_cpp as c

        if self._exclusive:
            return
        used = {g.seq_id for g in self._running}
        free = [i for i in range(self.parallel) if i not in used]
        while self._waiting and free:
            generation = self._waiting.popleft()
            generation.seq_id = free.pop(0)
            c.llama_memory_seq_rm(c.llama_get_memory(self.ctx), generation.seq_id, -1, -1)
            self.llm.reset()  # llama-cpp-python's record of what its own loop left in the cache
            self._running.append(generation)
        self._running.sort(key=lambda g: g.seq_id)

    def _over(self, generation: Generation) -> None:
        if not generation.over:
            generation.over = True
            generation.sampler.free()
        assert generation.ready is not None
        generation.ready.notify_all()

    def _fail_all(self, reason: str) -> None:
        for generation in [*self._waiting, *self._running]:
            if not generation.over:
                generation.out.append(EngineError(reason))
            self._over(generation)
        self._waiting.clear()
        self._running.clear()

    def _step(self, generations: list[Generation]) -> None:
        """Decode one batch for ``generations`` (in sequence-id order) and sample from it."""
        import llama_cpp as c

        parts, outputs = self._fill(generations)
        if not parts:
            return
        status = c.llama_decode(self.ctx, self._batch)
        for g, _ in parts:
            g.steps += 1
            g.shared += len(parts) > 1
            g.most_others = max(g.most_others, len(parts) - 1)
        if status != 0:  # 1: no room in the KV cache; 2: aborted; negative: an error
            with self._lock:
                for g, what in parts:
                    g.out.append(EngineError(f"llama.cpp could not decode {what} (llama_decode returned {status})"))
                    self._over(g)
            return
        # A backend may still be computing when llama_decode returns (a worker's RPC device does):
        # the prompt's time ends when its logits exist, not when the graph was handed over.
        c.llama_synchronize(self.ctx)
        now = time.perf_counter_ns()
        for g, index in outputs:
            if g.next is None:
                g.first = now
            self._sample(g, index)

    def _fill(self, generations: list[Generation]) -> tuple[list[tuple[Generation, str]], list[tuple[Generation, int]]]:
        """Fill the batch: each generation's next token, and prompt chunks in the room left. Returns
        who is in it (with what, for messages) and whose logits are read, at which index."""
        batch, n = self._batch, 0
        room = self.n_batch - sum(1 for g in generations if g.next is not None)
        parts: list[tuple[Generation, str]] = []
        outputs: list[tuple[Generation, int]] = []
        for g in generations:
            if g.next is not None:
                taken, position, last, what = [g.next], g.fed + g.count - 1, True, f"token {g.count}"
            else:
                taken, position = g.tokens[g.fed:g.fed + room], g.fed
                room -= len(taken)
                g.fed += len(taken)
                last, what = g.fed == len(g.tokens), "the prompt" if g.what == "prompt" else "the formatted chat"
            if not taken:
                continue
            for i, token in enumerate(taken):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, position + i, 1
                batch.seq_id[n][0] = g.seq_id
                batch.logits[n] = last and i == len(taken) - 1
                n += 1
            if last:
                outputs.append((g, n - 1))
            parts.append((g, what))
        batch.n_tokens = n
        return parts, outputs

    def _sample(self, g: Generation, index: int) -> None:
        import llama_cpp as c

        try:
            token = g.sampler.sample(self.ctx, index)
        except EngineError as exc:
            with self._lock:
                g.out.append(exc)
                self._over(g)
            return
        g.next, ready, end = None, "", False
        if c.llama_vocab_is_eog(self.vocab, token):
            g.reason, end = "stop", True
        else:
            g.count += 1
            size = c.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
            ready = g.stop.add(self._piece.raw[:max(size, 0)])
            if g.stop.stopped:
                g.reason, end = "stop", True
            elif g.count >= g.budget:  # the last token's own logits would never be read: no decode for it
                end = True
            else:
                g.next = token
        with self._lock:
            if ready:
                g.out.append(ready)
            if end:
                if rest := g.stop.rest():
                    g.out.append(rest)
                finished = time.perf_counter_ns()
                g.out.append(Done(g.reason, len(g.tokens), g.count, g.first - g.start, finished - g.first,
                                  Batched(self.parallel, g.deterministic, g.steps, g.shared, g.most_others)))
                self._over(g)
            else:
                assert g.ready is not None
                g.ready.notify_all()

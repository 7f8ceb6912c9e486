"""One inference, recorded from before its first token to after its last, fail closed.

Invariants:

* Every inference passes the air-gap watch (`anticloud.watch`) when it is asked for and again
  just before its ``inference.begin``: a breach, a failed check or a stale one refuses it.
* ``inference.begin`` is durable before the first token is computed; if it cannot be
  appended, the inference does not run. ``inference.end`` follows with the output's hash,
  counts, durations and why it ended (stop, length, client_disconnected, client_stalled,
  interrupted, engine_stopped, error); it is durable before the client is told the generation
  is complete. A cancel is recorded as the reason its caller gives: client_disconnected for an
  API request whose client went away, interrupted for an operator's Ctrl-C at the terminal.
  Where the output was asked for in a format (`anticloud.structured`), it also holds the verdict
  of checking the output against it (``format``), whose detail is kept only with the content.
* Both are built under the state in force (`anticloud.governor`): whether content is kept in
  plaintext is decided by the configuration recorded last, not the one the engine started with.
* Each begun inference is ended exactly once: by its own ``inference.end``, or, if the engine
  stops and it does not end in time, by the ``inference.interrupted`` that `Inferences.stop`
  records for it (and then its own end is never recorded).
* Embeddings (`anticloud.embedding`) are inferences of kind "embedding": they open and close
  through the same `Inferences.begin` and `Inferences.end`, so all of the above holds for them.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Generator
from typing import Any

from anticloud.content import prompt_hash, text_hash
from anticloud.engines import Done, Message, Params
from anticloud.engines.base import Cancelled
from anticloud.errors import Busy, PromptTooLong, StreamStalled
from anticloud.governor import Governor
from anticloud.pool import Slot
from anticloud.structured import Verdict
from anticloud.watch import AirGapWatch
from ledger import LedgerWriter

Prompt = str | list[Message]
Check = Callable[[str], Verdict]  # the output against the format it was asked for in


def _finished(done: Done) -> dict[str, Any]:
    """What ``inference.end`` says of a generation the engine finished."""
    fields: dict[str, Any] = {"done_reason": done.done_reason, "prompt_tokens": done.prompt_tokens,
                              "completion_tokens": done.completion_tokens, "prompt_eval_ns": done.prompt_eval_ns,
                              "eval_ns": done.eval_ns}
    if done.batch is not None:
        fields["batch"] = done.batch.to_json()
    return fields


def batch_at_begin(slot: Slot, params: Params) -> dict[str, Any]:
    """How a generation is about to share its model: how many it may share batches with at most,
    whether it is decoded alone (``deterministic``), and how many others are under way as it begins."""
    parallel = slot.model.parallel
    return {"parallel": parallel, "deterministic": params.alone(parallel),
            "others": max(0, slot.users - 1)}


class Inferences:
    """Runs recorded inferences on a pool's slots, and knows which are open."""

    def __init__(self, writer: LedgerWriter, governor: Governor, gap: AirGapWatch) -> None:
        self.writer, self.governor, self.gap = writer, governor, gap
        self._open: dict[str, int | None] = {}  # begun or beginning -> the seq of its inference.begin
        self._ending: set[str] = set()  # whose inference.end is being appended
        self._lock = threading.Condition()
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check_open(self) -> None:
        """Refuse a new inference once the engine is stopping."""
        if self._stopping.is_set():
            raise Busy("the engine is stopping")

    def run(self, slot: Slot, prompt: Prompt, params: Params, client: str, cancelled: Cancelled,
            on_begin: Callable[[str], None] | None, request: dict[str, Any] | None = None,
            cancel_reason: str = "client_disconnected",
            check_output: Check | None = None) -> Generator[str | Done, None, None]:
        """Stream one recorded inference on ``slot``. Raises before any token if it cannot be
        recorded or allowed; ``on_begin`` receives its id once ``inference.begin`` is durable;
        ``cancel_reason`` is the ``done_reason`` recorded when ``cancelled()`` stops it;
        ``check_output``'s verdict on the output is recorded in ``inference.end``."""
        self.check_open()
        n_ctx = params.window(int(str(slot.info["n_ctx"])))
        # An early refusal before anything is recorded. It counts the text alone, which for a chat
        # is less than the engine decodes once a template wraps each message: the engine counts
        # what it decodes and raises PromptTooLong itself (recorded in inference.end).
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        if (length := slot.model.count_tokens(text)) >= n_ctx:
            holder = "the window asked for (num_ctx)" if params.num_ctx else f"{slot.name}'s context"
            raise PromptTooLong(f"the prompt is {length} tokens; {holder} holds {n_ctx}")

        def build_begin(begin: dict[str, Any]) -> None:
            begin.update({"params": params.to_json(), "prompt_sha3_256": prompt_hash(prompt),
                          "kind": "completion" if isinstance(prompt, str) else "chat",
                          "batch": batch_at_begin(slot, params)})
            if request:
                begin["request"] = request  # what the client said beside the parameters, ignored fields named
            if self.plaintext():
                begin["prompt" if isinstance(prompt, str) else "messages"] = prompt

        ident = self.begin(slot, client, build_begin)  # durable before the first token
        if on_begin is not None:
            on_begin(ident)
        yield from self._generate(slot, ident, prompt, params,
                                  lambda: self._stopping.is_set() or cancelled(), cancel_reason, check_output)

    def begin(self, slot: Slot, client: str, build: Callable[[dict[str, Any]], None]) -> str:
        """Record ``inference.begin`` for an operation on ``slot`` by ``client`` and count it open
        until `end`; return its id. ``build`` adds the operation's own fields to the common ones
        (the id, the model, its manifest, the client and the air gap, which must be allowed); it
        runs under the ledger's lock, so the state in force is the one recorded last. Raises, with
        nothing left open, if the record cannot be written or the operation is not allowed."""
        ident = secrets.token_hex(8)

        def build_begin() -> dict[str, Any]:
            begin: dict[str, Any] = {"id": ident, "model": slot.name, "manifest": slot.info["manifest"],
                                     "client": client, "airgap": self.gap.allow().label}
            build(begin)
            return begin

        def check() -> None:
            self.governor.check_fresh(slot.name)
            self.check_open()

        with self._lock:  # open before its begin is recorded, so that a stop meanwhile waits for it
            self.check_open()
            self._open[ident] = None
        try:
            begun = self.governor.append("inference.begin", build_begin, check)
        except BaseException:
            with self._lock:
                self._open.pop(ident, None)
                self._lock.notify_all()
            raise
        with self._lock:
            if ident in self._open:
                self._open[ident] = begun.seq
        return ident

    def _generate(self, slot: Slot, ident: str, prompt: Prompt, params: Params, cancelled: Cancelled,
                  cancel_reason: str, check_output: Check | None) -> Generator[str | Done, None, None]:
        output: list[str] = []
        end: dict[str, Any] = {"id": ident, "done_reason": "error"}
        ended = False

        def build_end() -> dict[str, Any]:
            text = "".join(output)
            data = {**end, "output_sha3_256": text_hash(text), "output_chars": len(text),
                    "airgap": self.gap.state.label}
            plaintext = self.plaintext()
            if check_output is not None:
                data["format"] = check_output(text).to_json(with_detail=plaintext)  # its detail may quote the output
            if plaintext:
                data["output"] = text
            return data

        try:
            for piece in slot.model.generate(prompt, params, cancelled):
                if isinstance(piece, Done):
                    end.update(_finished(piece))
                    ended = True
                    self.end(ident, build_end)  # durable before the client hears the generation is complete
                else:
                    output.append(piece)
                yield piece
            if cancelled():
                end["done_reason"] = "engine_stopped" if self._stopping.is_set() else cancel_reason
        except GeneratorExit:
            end["done_reason"] = "client_disconnected"
            raise
        except KeyboardInterrupt:  # a Ctrl-C that did not wait for the next token: still the operator's
            end["done_reason"] = "interrupted"
            raise
        except StreamStalled:  # thrown in by the stream whose reader stopped reading
            end["done_reason"] = "client_stalled"
            raise
        except Exception as exc:
            end["error"] = (str(exc).splitlines() or [type(exc).__name__])[0][:500]
            raise
        finally:
            if not ended:
                self.end(ident, build_end)

    def end(self, ident: str, build: Callable[[], dict[str, Any]]) -> None:
        """Record ``inference.end`` (built under the state in force) for an open operation, unless
        `stop` closed it meanwhile; it is no longer open once this returns."""
        with self._lock:
            if ident not in self._open:  # closed by stop meanwhile
                return
            del self._open[ident]
            self._ending.add(ident)
        try:
            self.governor.append("inference.end", build)
        finally:
            with self._lock:
                self._ending.discard(ident)
                self._lock.notify_all()

    def plaintext(self) -> bool:
        """Whether the configuration in force keeps content in the records (``record_content``)."""
        return bool(self.governor.config.get("inference", "record_content") == "plaintext")

    def stop(self, grace: float) -> None:
        """Refuse new inferences, cancel the open ones (each stops within one token and records
        its end), and record ``inference.interrupted`` for any still open after ``grace`` seconds.
        Returns once no inference can record anything more."""
        self._stopping.set()
        with self._lock:
            self._lock.wait_for(lambda: not self._open and not self._ending, grace)
            stuck, self._open = sorted(self._open.items()), {}
        for ident, seq in stuck:
            self.writer.append("inference.interrupted", {"id": ident, "begin_seq": seq,
                                                         "reason": "the engine stopped before it ended"})
        with self._lock:
            self._lock.wait_for(lambda: not self._ending)  # an end being appended: durable, or failed

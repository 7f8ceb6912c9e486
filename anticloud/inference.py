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

import contextlib
import secrets
import threading
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from typing import Any

from anticloud import actor
from anticloud.content import prompt_hash, text_hash
from anticloud.engines import Done, Message, Params
from anticloud.engines.base import Cancelled
from anticloud.errors import Busy, ContentSealError, PromptTooLong, StreamStalled, first_line
from anticloud.governor import Governor
from anticloud.pool import Slot
from anticloud.structured import Verdict
from anticloud.vault import LazySealer
from anticloud.watch import AirGapWatch
from ledger import LedgerError, LedgerWriteError, LedgerWriter

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


def new_id() -> str:
    return secrets.token_hex(8)


class Content:
    """An inference's content as its record will hold it, under the policy in force when the
    record is built: hashes; hashes and the text (plaintext); or only the references to its
    sealed files (sealed), sealed beforehand or, if the policy turned to sealed meanwhile, then."""

    def __init__(self, owner: Inferences, ident: str, fields: dict[str, Any], sealed: dict[str, Any] | None) -> None:
        self.owner, self.ident, self.fields, self.sealed = owner, ident, fields, sealed

    def members(self, hashes: dict[str, Any]) -> dict[str, Any]:
        mode = self.owner.mode()
        if mode == "sealed":  # no hash of the content: a hash confirms a guess
            refs = self.sealed if self.sealed is not None else self.owner.seal(self.ident, self.fields)
            return {"sealed": refs} if refs else {}  # nothing kept (content_error says why)
        return {**hashes, **self.fields} if mode == "plaintext" else hashes


class Inferences:
    """Runs recorded inferences on a pool's slots, and knows which are open."""

    def __init__(self, writer: LedgerWriter, governor: Governor, gap: AirGapWatch,
                 sealer: LazySealer | None = None,
                 link_bytes: Callable[[], tuple[int, int] | None] = lambda: None) -> None:
        self.writer, self.governor, self.gap, self.sealer = writer, governor, gap, sealer
        self.link_bytes = link_bytes  # a cluster's bytes sent and received so far, or None
        self._link_at: dict[str, tuple[int, int]] = {}  # by inference id: the link's bytes at its begin
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

        ident = new_id()

        def build_begin(begin: dict[str, Any], content: Content) -> None:
            begin.update({"params": params.to_json(), "kind": "completion" if isinstance(prompt, str) else "chat",
                          "batch": batch_at_begin(slot, params)})
            if request:
                begin["request"] = request  # what the client said beside the parameters, ignored fields named
            begin.update(content.members({"prompt_sha3_256": prompt_hash(prompt)}))

        # durable before the first token
        self.open(slot, client, ident, {"prompt" if isinstance(prompt, str) else "messages": prompt}, build_begin)
        if on_begin is not None:
            on_begin(ident)
        yield from self._generate(slot, ident, prompt, params,
                                  lambda: self._stopping.is_set() or cancelled(), cancel_reason, check_output)

    def begin(self, slot: Slot, client: str, build: Callable[[dict[str, Any]], None], ident: str | None = None) -> str:
        """Record ``inference.begin`` for an operation on ``slot`` by ``client`` and count it open
        until `end`; return its id. ``build`` adds the operation's own fields to the common ones
        (the id, the model, its manifest, the client and the air gap, which must be allowed); it
        runs under the ledger's lock, so the state in force is the one recorded last. Raises, with
        nothing left open, if the record cannot be written or the operation is not allowed."""
        ident = ident or new_id()

        def build_begin() -> dict[str, Any]:
            begin: dict[str, Any] = {"id": ident, "model": slot.name, "manifest": slot.info["manifest"],
                                     "client": client, "airgap": self.gap.allow().label}
            placed = slot.info.get("split")
            counted = self.link_bytes()
            if isinstance(placed, dict) and placed.get("remote_layers") and counted is not None:
                begin["devices"] = list(dict.fromkeys(run["device"] for run in placed["runs"]))
                self._link_at[ident] = counted
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
            self._link_at.pop(ident, None)
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

        def build_end(content: Content) -> dict[str, Any]:
            text = "".join(output)
            data = {**end, "output_chars": len(text), "airgap": self.gap.state.label}
            if check_output is not None:  # its detail may quote the output
                data["format"] = check_output(text).to_json(with_detail=self.mode() == "plaintext")
            data.update(content.members({"output_sha3_256": text_hash(text)}))
            return data

        def ending() -> None:
            self.close(ident, {"output": "".join(output)}, end, build_end)

        try:
            for piece in slot.model.generate(prompt, params, cancelled):
                if isinstance(piece, Done):
                    end.update(_finished(piece))
                    ended = True
                    ending()  # durable before the client hears the generation is complete
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
            end["error"] = first_line(exc)
            raise
        finally:
            if not ended:
                ending()

    def end(self, ident: str, build: Callable[[], dict[str, Any]]) -> None:
        """Record ``inference.end`` (built under the state in force) for an open operation, unless
        `stop` closed it meanwhile; it is no longer open once this returns."""
        with self._lock:
            if ident not in self._open:  # closed by stop meanwhile
                return
            del self._open[ident]
            self._ending.add(ident)
        at = self._link_at.pop(ident, None)
        if at is not None:
            build = self._with_link_bytes(build, at)
        try:
            self.governor.append("inference.end", build)
        finally:
            if self.sealer is not None:
                self.sealer.forget(ident)
            with self._lock:
                self._ending.discard(ident)
                self._lock.notify_all()

    def _with_link_bytes(self, build: Callable[[], dict[str, Any]],
                         at: tuple[int, int]) -> Callable[[], dict[str, Any]]:
        """``build``, adding the bytes that crossed a cluster's link since the begin (every
        inference running meanwhile shares them: the link carries one model's layers)."""
        def counted() -> dict[str, Any]:
            now = self.link_bytes() or at
            return {**build(), "link_bytes": {"sent": now[0] - at[0], "received": now[1] - at[1]}}
        return counted

    def mode(self) -> str:
        """How the configuration in force records content (``record_content``): hash, plaintext or sealed."""
        return str(self.governor.config.get("inference", "record_content"))

    def content(self, ident: str, fields: dict[str, Any]) -> Content:
        """``fields`` (an inference's content, under their plaintext names), sealed now, before the
        ledger's lock is taken, if the policy in force seals; `Content.members` decides under the lock."""
        return Content(self, ident, fields, self.seal(ident, fields) if self.mode() == "sealed" else None)

    def open(self, slot: Slot, client: str, ident: str, fields: dict[str, Any],
             build: Callable[[dict[str, Any], Content], None]) -> None:
        """Record the ``inference.begin`` that ``build`` completes around its content ``fields``,
        sealed first if the policy seals, both under the keyring's shared lock (`holding`). A begin
        refused after sealing forgets the inference's data key."""
        with self.holding():
            try:
                content = self.content(ident, fields)
                self.begin(slot, client, lambda begin: build(begin, content), ident)
            except BaseException:
                if self.sealer is not None:
                    self.sealer.forget(ident)
                raise

    def close(self, ident: str, fields: dict[str, Any], end: dict[str, Any],
              build: Callable[[Content], dict[str, Any]]) -> None:
        """Record the ``inference.end`` that ``build`` makes around its content ``fields``, sealed
        first if the policy seals, both under the keyring's shared lock. An end is recorded even if
        sealing fails (a full disk, say): it then keeps none of the content, says why in
        ``content_error``, and the caller is told (ContentSealError) that its answer was not kept."""
        with self.holding():
            try:
                content, failed = self.content(ident, fields), None
            except (OSError, ContentSealError, LedgerError) as exc:
                end["content_error"] = first_line(exc)
                content = Content(self, ident, {}, {})
                failed = ContentSealError(f"the output could not be sealed: {exc}")
            self.end(ident, lambda: build(content))
        if failed is not None:
            raise failed

    def holding(self) -> AbstractContextManager[object]:
        """While sealing: the keyring's shared lock (`anticloud.vault.Sealer.holding`), so that an
        erasure falls wholly before or after a record and the content it commits to."""
        if self.sealer is None or self.mode() != "sealed":
            return contextlib.nullcontext()
        try:
            return self.sealer().holding()
        except ContentSealError:  # no key to seal to: `content` says so, where it is handled
            return contextlib.nullcontext()

    def seal(self, ident: str, fields: dict[str, Any]) -> dict[str, Any]:
        """The references to ``fields`` sealed for inference ``ident``, on behalf of the actor in force."""
        if self.sealer is None:
            raise ContentSealError("inference.record_content is sealed, but this engine has no sealer")
        sealer = self.sealer()
        try:
            return sealer.seal(ident, actor.person({"actor": actor.current()}) or "anonymous", fields)
        except OSError as exc:  # the record's own content cannot be kept: the ledger's storage has failed
            raise LedgerWriteError(sealer.store.root, f"cannot keep sealed content: {exc.strerror or exc}") from None

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

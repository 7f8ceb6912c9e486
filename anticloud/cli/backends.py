"""Where `anticloud chat` and `anticloud run` get their answers: the running server, or an engine of their own.

Both implement `Backend`: describe a stored model, list them, and stream one answer, given
a stop event that the terminal sets on Ctrl-C.

* `ServerBackend` is a client of the appliance's Ollama API (``/api/chat``, ``/api/generate``,
  streaming) on ``HOME/anticloud.sock``, where the server identifies the caller by the real
  uid of the connecting process, or on a loopback URL with a bearer token. Every answer is
  then recorded by the server like any API request. A Ctrl-C closes the connection: the
  server stops within a token and records ``client_disconnected``, which is all it can know.
* `LocalBackend` starts an engine in this process, exactly as `run` always did: the home's
  engine lock, ``engine.start``, the start checks, then `Appliance.infer` for each answer
  under the caller's real uid, and ``engine.stop`` at the end. A Ctrl-C sets the stop event,
  the engine stops at the next token and ``inference.end`` says ``interrupted``.

Invariants: a server is used only if it answers; an explicitly named one (``--url``) that does
not is an error, never a silent switch to a local engine, and a URL must be a loopback
address (the appliance serves nothing else, and a prompt must not leave the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from anticloud.api import loopback_only
from anticloud.api.ollama import params_from_options
from anticloud.chatrepl import ModelInfo
from anticloud.cli import open_ledger
from anticloud.cli.engine import _hold_engine_lock
from anticloud.engines import Done, Message
from anticloud.errors import ServerError
from anticloud.home import Home
from anticloud.models import StoredModel
from anticloud.peercred import real_uid
from anticloud.runtime import Appliance
from ledger import LedgerError, sha3_tag

Prompt = str | list[Message]  # a completion's text, or a chat's messages
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class Finished:
    """How an answer ended, as the engine or the server reported it."""

    done_reason: str
    prompt_tokens: int
    completion_tokens: int
    eval_ns: int
    inference: str | None  # the inference's id in the ledger, when known

    def summary(self) -> str:
        rate = self.completion_tokens / max(self.eval_ns / 1e9, 1e-9)
        return f"[{self.completion_tokens} tokens, {rate:.1f} tokens/s, {self.done_reason}]"


class Backend(Protocol):
    where: str  # for the person: what answers
    who: str  # how the ledger names the caller
    stops_at_token: bool  # a Ctrl-C sets the stop event (True), or must abandon a blocking read (False)

    def model(self, name: str) -> ModelInfo: ...

    def names(self) -> set[str]: ...

    def generate(self, model: str, prompt: Prompt, options: dict[str, Any],
                 stop: threading.Event) -> Generator[str | Finished, None, None]: ...


def _info(stored: StoredModel) -> ModelInfo:
    return ModelInfo(stored.name, stored.digest, sum(f.size for f in stored.manifest.files),
                     tuple(t.sha3_256 for t in stored.manifest.chat_templates))


class ServerBackend:
    """A client of the running appliance's Ollama API."""

    stops_at_token = False

    def __init__(self, base: str, uds: str | None, where: str, token: str | None, who: str) -> None:
        self.base, self.uds, self.where, self.who = base, uds, where, who
        self._headers = {"authorization": f"Bearer {token}"} if token else {}

    @contextmanager
    def _client(self, timeout: float | None = PROBE_SECONDS) -> Iterator[httpx.Client]:
        """A client for one request, its failures said in one line (ServerError). One per request:
        a Ctrl-C may abandon a read anywhere inside one, so none is reused."""
        transport = httpx.HTTPTransport(uds=self.uds) if self.uds else None
        try:
            with httpx.Client(base_url=self.base, transport=transport, headers=self._headers,
                              timeout=httpx.Timeout(timeout, connect=PROBE_SECONDS)) as client:
                yield client
        except httpx.HTTPError as exc:
            raise ServerError(f"{self.where} did not answer: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:  # a reply that is not what the API promises
            raise ServerError(f"{self.where} answered what anticloud cannot read: {exc!r}") from None

    @classmethod
    def find(cls, home: Home, url: str | None, token: str | None) -> ServerBackend | None:
        """The server at ``url``, or else on the home's socket, if it answers; None if none runs on
        the socket. ServerError if ``url`` names a server that does not answer."""
        if url is not None:
            host = httpx.URL(url).host
            if not loopback_only(host):
                raise ServerError(f"{url}: {host} is not a loopback address; the appliance serves only loopback")
            backend = cls(url.rstrip("/"), None, f"the server at {url}", token,
                          "your token's name" if token else "no one (over TCP, a token is needed)")
        else:
            sock = home.socket
            if not sock.exists():
                return None
            backend = cls("http://appliance", str(sock), f"the server on {sock}", token,
                          "your token's name" if token else f"uid:{os.getuid()}")
        try:
            with backend._client() as client:
                client.get("/").raise_for_status()
        except ServerError:
            if url is not None:
                raise
            return None  # a stale socket: no server runs
        return backend

    def _check(self, reply: httpx.Response) -> None:
        if reply.status_code != 200:
            reply.read()
            try:
                message = reply.json()["error"]
                message = message["message"] if isinstance(message, dict) else str(message)
            except (ValueError, KeyError, TypeError):
                message = reply.text[:200]
            raise ServerError(f"the server refused: {message} (HTTP {reply.status_code})")

    def model(self, name: str) -> ModelInfo:
        with self._client() as client:
            reply = client.post("/api/show", json={"model": name})
            self._check(reply)
            shown = reply.json()
            size = next((m["size"] for m in client.get("/api/tags").json()["models"]
                         if m["name"] == f"{name}:latest"), 0)
        info = shown.get("model_info") or {}
        templates = tuple(info.get("anticloud.chat_templates") or ())
        if not templates and shown.get("template"):  # Ollama's own field: the template's text
            templates = (sha3_tag(str(shown["template"]).encode()),)
        return ModelInfo(name, str(info.get("anticloud.manifest", "")), int(size), templates)

    def names(self) -> set[str]:
        with self._client() as client:
            reply = client.get("/api/tags")
            self._check(reply)
            return {str(m["name"]).removesuffix(":latest") for m in reply.json()["models"]}

    def loaded(self) -> list[dict[str, Any]]:
        """The models the server has loaded (``/api/ps``)."""
        with self._client() as client:
            reply = client.get("/api/ps")
            self._check(reply)
            return list(reply.json()["models"])

    def generate(self, model: str, prompt: Prompt, options: dict[str, Any],
                 stop: threading.Event) -> Generator[str | Finished, None, None]:
        chat = not isinstance(prompt, str)
        body: dict[str, Any] = {"model": model, "options": options, "stream": True,
                                **({"messages": prompt} if chat else {"prompt": prompt})}
        with self._client(timeout=None) as client, \
                client.stream("POST", "/api/chat" if chat else "/api/generate", json=body) as reply:
            self._check(reply)
            ident = reply.headers.get("x-anticloud-inference")
            for line in reply.iter_lines():
                if stop.is_set():
                    return  # leaving closes the connection: the server stops and records it
                if not line:
                    continue
                data = json.loads(line)
                text = data["message"]["content"] if chat else data["response"]
                if text:
                    yield text
                if data.get("done"):
                    yield Finished(data.get("done_reason", "stop"), data.get("prompt_eval_count", 0),
                                   data.get("eval_count", 0), data.get("eval_duration", 0), ident)
                    return
        if not stop.is_set():
            raise ServerError("the server ended the answer early (its ledger says why)")


class LocalBackend:
    """An engine started in this process for as long as the chat or the run lasts."""

    stops_at_token = True

    def __init__(self, app: Appliance, namespace: bool) -> None:
        self.app = app
        self.who = f"uid:{real_uid()}"  # the operator's uid outside --isolate's namespace, not the namespace's 0
        self.where = "an engine of its own" + (" in a network namespace holding only loopback" if namespace else "")

    @classmethod
    @contextmanager
    def started(cls, home: Home, namespace: bool, watch: bool, command: str) -> Iterator[LocalBackend]:
        """Take the engine lock, start the engine (recorded), and stop it on the way out ("COMMAND
        finished", or "COMMAND failed"). With ``watch``, the air gap is re-checked while it runs
        (a chat may last for hours)."""
        lock = _hold_engine_lock(home)
        try:
            with open_ledger(home) as writer:
                app = Appliance.start(home, writer, namespace)
                if watch:
                    app.watch()
                try:
                    yield cls(app, namespace)
                except BaseException:
                    with contextlib.suppress(LedgerError):  # if the ledger failed, engine.stop cannot be recorded
                        app.stop(f"{command} failed")  # the first failure is the one to report
                    raise
                app.stop(f"{command} finished")
        finally:
            lock.release()

    def model(self, name: str) -> ModelInfo:
        return _info(self.app.model(name))

    def names(self) -> set[str]:
        return {m.name for m in self.app.models()}

    def generate(self, model: str, prompt: Prompt, options: dict[str, Any],
                 stop: threading.Event) -> Generator[str | Finished, None, None]:
        params = params_from_options(options, self.app.context_size(model))
        ids: list[str] = []
        pieces = self.app.infer(model, prompt, params, self.who, stop.is_set, on_begin=ids.append,
                                cancel_reason="interrupted")
        with contextlib.closing(pieces):  # a reader that stops early ends the inference now, recorded
            for piece in pieces:
                if isinstance(piece, Done):
                    yield Finished(piece.done_reason, piece.prompt_tokens, piece.completion_tokens, piece.eval_ns,
                                   ids[0] if ids else None)
                else:
                    yield piece

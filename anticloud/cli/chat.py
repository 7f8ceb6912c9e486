"""`anticloud chat`, `anticloud run` and `anticloud ps`: talking with a model from the terminal.

The rules of the conversation are `anticloud.chatrepl`'s; this module is their edge: it reads
lines, writes the answer as it streams, turns Ctrl-C into a stop, and picks the backend
(`anticloud.cli.backends`): the running server when one answers, else an engine of its own.

Invariants:

* A Ctrl-C while an answer is being written stops that answer and nothing else: the chat goes
  on, and a one-shot `run` exits 130. With an engine of its own it is recorded as
  ``interrupted`` in ``inference.end``; through a server, as ``client_disconnected``.
* Nothing is written to disk but the ledger: no history file, whatever readline offers.
* Standard input is read only when it is not a terminal, and only in the process that
  answers (under ``--isolate``, the engine inside the namespace, never the launcher).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from anticloud import isolation
from anticloud.chatrepl import Leave, Say, Send, Session, ShowModel, model_text, one_prompt, run_arguments
from anticloud.cli import pass_home
from anticloud.cli.backends import Backend, Finished, LocalBackend, Prompt, ServerBackend
from anticloud.config import load_config
from anticloud.engines import Params
from anticloud.errors import AnticloudError
from anticloud.home import Home
from anticloud.models import ModelStore
from ledger import LedgerError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended
ISOLATE_HELP = ("When no server answers, run the engine in a fresh user and network namespace holding only "
                "loopback (Linux).")
CHAT_HELP = """Chat with MODEL (default: inference.default_model) in the terminal, as `ollama run` does.

A client of the running server when one answers (so every turn is recorded like any API
request), else an engine of its own for as long as the chat lasts. Type /? for the
commands: /set parameter, /set system, /show, /clear, /bye; \"\"\" begins and ends a message
of several lines. Ctrl-C stops an answer (recorded as interrupted), Ctrl-D leaves.

With standard input not a terminal (`echo ... | anticloud chat MODEL`), the whole input is
one message and the answer is printed.

No history file is written: it would keep your prompts in plaintext outside the ledger's
content policy (inference.record_content).
"""


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--url and --token: where the running server is, and who the caller is there."""
    command = click.option("--token", envvar="ANTICLOUD_TOKEN", metavar="TOKEN",
                           help="A per-person token for the server (prefer $ANTICLOUD_TOKEN: an option is "
                                "visible to other users in the process list).")(command)
    return click.option("--url", envvar="ANTICLOUD_URL", metavar="URL",
                        help="The server's loopback URL, e.g. http://127.0.0.1:11434 ($ANTICLOUD_URL); by default "
                             "HOME/anticloud.sock, which identifies you by your uid.")(command)


# -- choosing the backend ------------------------------------------------------------------------------


def _server(home: Home, url: str | None, token: str | None, isolate: bool) -> ServerBackend | None:
    """The running server if one answers; otherwise None, after re-running this command inside
    a fresh namespace if ``isolate`` asks for one (that never returns here)."""
    if isolation.in_namespace():
        return None
    server = ServerBackend.find(home, url, token)
    if server is None and isolate:
        isolation.run_isolated()
    return server


def _names(server: ServerBackend | None, home: Home) -> set[str]:
    return server.names() if server is not None else {m.name for m in ModelStore(home).list()}


@contextlib.contextmanager
def _backend(server: ServerBackend | None, home: Home, interactive: bool, command: str) -> Iterator[Backend]:
    if server is not None:
        yield server
        return
    namespace = isolation.enter()
    if namespace and interactive:
        isolation.take_terminal()
    with LocalBackend.started(home, namespace, watch=interactive, command=command) as local:
        yield local


def _piped() -> str | None:
    """Standard input, when it is not a terminal."""
    return None if sys.stdin.isatty() else sys.stdin.read()


# -- streaming one answer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spoken:
    text: str  # what was shown
    finished: Finished | None  # None: stopped by Ctrl-C

    @property
    def interrupted(self) -> bool:
        return self.finished is None


@contextlib.contextmanager
def _interruptible(stop: threading.Event, at_token: bool) -> Iterator[None]:
    """While an answer streams: where the backend stops at the next token, Ctrl-C only sets ``stop``,
    so no KeyboardInterrupt can land inside the engine or a ledger append; elsewhere Ctrl-C
    raises KeyboardInterrupt, which abandons the read.

    Either way the handler is put in place here, not inherited: a process started with SIGINT
    ignored (a job a non-interactive shell put in the background, and everything it starts, such
    as the chat a script runs in a terminal of its own) would otherwise never stop on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = (lambda signum, frame: stop.set()) if at_token else signal.default_int_handler
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """At the prompt, Ctrl-C raises KeyboardInterrupt, whatever SIGINT's disposition was inherited."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def speak(backend: Backend, model: str, prompt: Prompt, options: dict[str, Any]) -> Spoken:
    """Stream one answer to standard output as it is generated, until it ends or Ctrl-C stops it."""
    stop = threading.Event()
    shown: list[str] = []
    finished: Finished | None = None
    with _interruptible(stop, backend.stops_at_token):
        try:
            with contextlib.closing(backend.generate(model, prompt, options, stop)) as pieces:
                for piece in pieces:
                    if isinstance(piece, Finished):
                        finished = piece
                    else:
                        shown.append(piece)
                        click.echo(piece, nl=False)
        except KeyboardInterrupt:
            finished = None
    return Spoken("".join(shown), finished)


def _answer_once(backend: Backend, model: str, prompt: Prompt, options: dict[str, Any], stats: bool) -> bool:
    """One answer, for `run` and a piped `chat`; returns whether Ctrl-C stopped it."""
    spoken = speak(backend, model, prompt, options)
    click.echo()
    if spoken.finished is not None and stats:
        click.echo(spoken.finished.summary(), err=True)
    if spoken.interrupted:
        click.echo("[interrupted]", err=True)
    return spoken.interrupted


# -- the conversation ----------------------------------------------------------------------------------------


def converse(session: Session, backend: Backend, read: Callable[[str], str] = input) -> None:
    """The chat: read a line, do what the session says, until /bye or Ctrl-D."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 -- line editing for input(); it writes no history file unless asked to
    click.echo(f"Chatting with {session.model} through {backend.where}; each answer is recorded in the ledger "
               f"as {backend.who}. No history file is written. /? for help, Ctrl + d or /bye to leave.", err=True)
    while True:
        try:
            with _ctrl_c_raises():
                line = read(session.prompt)
        except EOFError:  # Ctrl-D
            click.echo()
            return
        except KeyboardInterrupt:
            hint = session.interrupt()
            click.echo("\n" + hint if hint else "")
            continue
        action = session.feed(line)
        if isinstance(action, Leave):
            return
        if isinstance(action, Say):
            click.echo(action.text.rstrip("\n"), err=action.err)
        elif isinstance(action, ShowModel):
            _show_model(session, backend, action.what)
        elif isinstance(action, Send):
            _turn(session, backend, action)


def _show_model(session: Session, backend: Backend, what: str) -> None:
    try:
        click.echo(model_text(backend.model(session.model), what))
    except (AnticloudError, LedgerError) as exc:
        click.echo(f"error: {exc}", err=True)


def _turn(session: Session, backend: Backend, send: Send) -> None:
    try:
        spoken = speak(backend, session.model, send.messages, session.options)
    except (AnticloudError, LedgerError) as exc:  # refused, recorded where it could be: the chat goes on
        session.unanswered()
        click.echo(f"error: {exc}", err=True)
        return
    if spoken.interrupted:
        session.interrupted(spoken.text)
        click.echo()
        return
    session.answered(spoken.text)
    click.echo("\n")
    if session.verbose and spoken.finished is not None:
        click.echo(spoken.finished.summary(), err=True)


# -- the commands ------------------------------------------------------------------------------------------


@click.command("chat", help=CHAT_HELP, short_help="Chat with a model in the terminal, as `ollama run` does.")
@click.argument("model", required=False)
@click.option("--isolate", is_flag=True, help=ISOLATE_HELP)
@click.option("--verbose", is_flag=True, help="Print token counts and speed after each answer.")
@server_options
@pass_home
def chat(home: Home, model: str | None, isolate: bool, verbose: bool, url: str | None, token: str | None) -> None:
    server = _server(home, url, token, isolate)
    model = (model or load_config(home).get("inference", "default_model")).removesuffix(":latest")
    interactive = sys.stdin.isatty()
    piped = None if interactive else one_prompt(_piped(), None)
    if not interactive and piped is None:
        raise click.UsageError("standard input is empty: nothing to ask")
    with _backend(server, home, interactive, "chat") as backend:
        backend.model(model)  # an unknown model: refused before anything is asked of it
        if piped is None:
            converse(Session(model, verbose=verbose), backend)
            return
        interrupted = _answer_once(backend, model, [{"role": "user", "content": piped}], {}, verbose)
    if interrupted:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


@click.command("run", short_help="Answer a prompt, or open the chat: `run MODEL [PROMPT]`.")
@click.argument("words", nargs=-1, metavar="[MODEL] [PROMPT]")
@click.option("--isolate", is_flag=True, help=ISOLATE_HELP)
@click.option("--num-predict", type=click.IntRange(min=1), default=Params().num_predict, show_default=True)
@click.option("--temperature", type=float, default=Params().temperature, show_default=True)
@click.option("--seed", type=int)
@server_options
@pass_home
def run(home: Home, words: tuple[str, ...], isolate: bool, num_predict: int, temperature: float,
        seed: int | None, url: str | None, token: str | None) -> None:
    """Answer a prompt, streaming: `anticloud run MODEL [PROMPT]`, as `ollama run` does.

    MODEL is a stored model. A single word that names no stored model is taken as the prompt
    for the default model (inference.default_model), as `anticloud run PROMPT` always did.
    Text piped to standard input comes first in the prompt; with no prompt on a terminal,
    the chat opens (`anticloud chat`). A model whose manifest declares a chat template gets
    the prompt as a chat message; a base model continues it as text.

    A client of the running server when one answers, else an engine of its own. Ctrl-C stops
    the answer: exit 130, recorded as interrupted. The chat writes no history file.
    """
    if len(words) > 2:
        raise click.UsageError("give at most a model and a prompt (quote the prompt)")
    server = _server(home, url, token, isolate)
    model, prompt = run_arguments(words, _names(server, home), load_config(home).get("inference", "default_model"))
    interactive = prompt is None and sys.stdin.isatty()
    text = None if interactive else one_prompt(_piped(), prompt)
    if not interactive and text is None:
        raise click.UsageError("no prompt: give one, or pipe one in")
    given = click.get_current_context().get_parameter_source
    options = {name: value for name, value in (("temperature", temperature), ("num_predict", num_predict),
                                               ("seed", seed)) if given(name) != ParameterSource.DEFAULT}
    with _backend(server, home, interactive, "run") as backend:
        as_chat = bool(backend.model(model).chat_templates)  # and an unknown model is refused here
        if text is None:
            converse(Session(model, options=options), backend)
            return
        interrupted = _answer_once(backend, model, [{"role": "user", "content": text}] if as_chat else text,
                                   options, stats=True)
    if interrupted:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


@click.command("ps")
@server_options
@pass_home
def ps(home: Home, url: str | None, token: str | None) -> None:
    """The models the running server has loaded, and until when (Ollama's `ps`)."""
    server = ServerBackend.find(home, url, token)
    if server is None:
        click.echo(f"no server is running for {home.root}: no model is loaded")
        return
    loaded = server.loaded()
    click.echo(f"{'NAME':<28} {'ID':<14} {'SIZE':>10}  UNTIL")
    for m in loaded:
        ident = str(m.get("digest", "")).rpartition(":")[2][:12]
        click.echo(f"{m['name']:<28} {ident:<14} {m.get('size', 0) / 1e6:>7.1f} MB  {_until(m.get('expires_in'))}")


def _until(expires_in: Any) -> str:
    if expires_in is None:
        return "forever"
    return f"{expires_in:.0f} s from now" if expires_in < 120 else f"{expires_in / 60:.0f} minutes from now"

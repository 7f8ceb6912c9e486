"""The terminal chat's rules, following `ollama run`'s conventions, with no I/O: lines in, actions out.

A `Session` holds what a conversation is made of: the model, the system message, the
parameters set with ``/set parameter`` and the turns so far. `Session.feed` takes one line
as typed and answers with at most one `Action` for the terminal (`anticloud.cli.chat`) to
carry out: something to say, a conversation to send, model details to show, or leaving.

Invariants:

* What is sent is always the system message (if any) followed by alternating user and
  assistant turns, so any chat template (strict ones refuse two user turns in a row) applies.
  A question that got no answer (a refusal, or a Ctrl-C before the first word) is taken back;
  a reply cut short by Ctrl-C is kept as far as it was shown, since that is what the person
  saw the model say.
* A parameter is accepted only if the API's own contract (`anticloud.api.schema`) accepts it,
  so a session never holds a value the server would refuse; those the appliance accepts but
  does not apply (``num_thread``) are refused here, with the reason.
* Nothing here writes a history: the session lives in memory only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from jsonschema import Draft202012Validator

from anticloud.api.schema import IGNORED_OPTIONS, OLLAMA_OPTIONS
from anticloud.engines.base import Message, Params

PROMPT, CONTINUATION = ">>> ", "... "
FENCE = '"""'
EXIT_HINT = "Use Ctrl + d or /bye to exit."
NO_HISTORY = ("anticloud keeps no history file: it would hold your prompts in plaintext, outside the "
              "ledger's content policy (inference.record_content).")

HELP = f"""Commands:
  /set            Set a parameter, the system message, or verbose output
  /show           Show the model, the parameters or the system message
  /clear          Forget the conversation (the system message stays)
  /bye            Leave (also /exit, or Ctrl + d)
  /?, /help       This help; /? set, /? show, /? shortcuts for more

Begin and end a message of several lines with {FENCE}.
"""
SET_HELP = f"""Commands:
  /set parameter NAME VALUE   Set a parameter (/set parameter alone lists them)
  /set system TEXT            Set the system message ({FENCE} for several lines)
  /set verbose                Print token counts and speed after each answer
  /set quiet                  Stop printing them
"""
SHOW_HELP = """Commands:
  /show info         The model: its signed manifest and chat template
  /show parameters   The parameters in force
  /show system       The system message
  /show template     The chat template's hash
"""
PARAMETERS_HELP = """Parameters:
  /set parameter seed INT                 Seed of the random sampler (the same seed, the same answer)
  /set parameter num_predict INT          How many tokens to generate at most (-1: up to the context)
  /set parameter top_k INT                Sample from the k likeliest tokens
  /set parameter top_p FLOAT              Sample from the tokens making up this share of probability
  /set parameter min_p FLOAT              Leave out tokens less likely than min_p times the likeliest
  /set parameter temperature FLOAT        Higher is more varied, 0 always picks the likeliest
  /set parameter repeat_penalty FLOAT     How much to hold back repeated tokens
  /set parameter repeat_last_n INT        How many recent tokens the penalties look at
  /set parameter stop STRING [STRING...]  Stop where the answer would contain one of these
"""
SHORTCUTS_HELP = """Keyboard shortcuts:
  Ctrl + a / Ctrl + e   Go to the start / end of the line
  Ctrl + k / Ctrl + u   Delete to the end / start of the line
  Ctrl + w              Delete the word before the cursor
  Ctrl + l              Clear the screen
  Ctrl + c              Stop the answer being written (at the prompt: nothing)
  Ctrl + d              Leave (/bye)
"""

_OPTIONS = Draft202012Validator(OLLAMA_OPTIONS)
_PROPERTIES = cast(dict[str, dict[str, Any]], OLLAMA_OPTIONS["properties"])


@dataclass(frozen=True)
class Say:
    """Text for the person: on standard output, or standard error for help and usage."""

    text: str
    err: bool = False


@dataclass(frozen=True)
class Send:
    """Ask the model to answer this conversation; then tell the session how it went."""

    messages: list[Message]


@dataclass(frozen=True)
class ShowModel:
    """Show the model's details (``what``: "info" or "template"), as `model_text` words them."""

    what: str


@dataclass(frozen=True)
class Leave:
    """End the chat."""


Action = Say | Send | ShowModel | Leave


@dataclass(frozen=True)
class ModelInfo:
    """What the chat shows of a stored model, wherever the engine runs."""

    name: str
    manifest: str  # the digest of its signed manifest
    size: int  # bytes
    chat_templates: tuple[str, ...]  # the hashes of the chat templates its manifest declares


def model_text(info: ModelInfo, what: str) -> str:
    """``/show info`` or ``/show template`` for ``info``."""
    if what == "template":
        if not info.chat_templates:
            return "This model declares no chat template: a chat is formatted by llama.cpp's default for its family."
        return "\n".join(f"chat template  {t}" for t in info.chat_templates)
    templates = ", ".join(info.chat_templates) or "none declared"
    return (f"  model          {info.name}\n  manifest       {info.manifest}\n"
            f"  size           {info.size / 1e6:.1f} MB\n  chat template  {templates}")


@dataclass
class Session:
    """One conversation, as ``/`` commands and messages shape it."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    turns: list[Message] = field(default_factory=list)
    verbose: bool = False
    _gathering: list[str] | None = None  # the lines of a multi-line input so far
    _gathering_system: bool = False  # whether that input is the system message

    @property
    def prompt(self) -> str:
        return CONTINUATION if self._gathering is not None else PROMPT

    def messages(self) -> list[Message]:
        """The conversation as sent: the system message, then the turns."""
        system: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.turns]

    # -- what the person typed ---------------------------------------------------------------------

    def feed(self, line: str) -> Action | None:
        """Take one line as typed; return what to do about it (None: nothing, or wait for more)."""
        if self._gathering is not None:
            return self._gather(line)
        if line.startswith(FENCE):
            return self._open(line[len(FENCE):], system=False)
        if line.startswith("/"):
            return self._command(line)
        return self._ask(line)

    def _open(self, rest: str, system: bool) -> Action | None:
        """A fence opened; the text may close on the same line."""
        if len(rest) >= len(FENCE) and rest.endswith(FENCE):
            return self._complete(rest[:-len(FENCE)], system)
        self._gathering, self._gathering_system = ([rest] if rest else []), system
        return None

    def _gather(self, line: str) -> Action | None:
        assert self._gathering is not None
        closed = line.endswith(FENCE)
        before = line[:-len(FENCE)] if closed else line
        if before or not closed:
            self._gathering.append(before)
        if not closed:
            return None
        text, system = "\n".join(self._gathering), self._gathering_system
        self._gathering = None
        return self._complete(text, system)

    def _complete(self, text: str, system: bool) -> Action | None:
        if system:
            self.system = text or None
            return Say("Set system message." if text else "Cleared the system message.")
        return self._ask(text)

    def _ask(self, text: str) -> Action | None:
        if not text.strip():
            return None
        self.turns.append({"role": "user", "content": text})
        return Send(self.messages())

    def _command(self, line: str) -> Action | None:
        words = line.split()
        command, args = words[0], words[1:]
        if command in ("/bye", "/exit"):
            return Leave()
        if command in ("/?", "/help"):
            topic = args[0].lstrip("/") if args else ""
            return Say({"set": SET_HELP, "show": SHOW_HELP, "shortcut": SHORTCUTS_HELP,
                        "shortcuts": SHORTCUTS_HELP}.get(topic, HELP), err=True)
        if command == "/clear":
            self.turns = []
            return Say("Cleared session context")
        if command == "/set":
            return self._set(line, args)
        if command == "/show":
            return self._show(args)
        return Say(f"Unknown command '{command}'. Type /? for help")

    def _set(self, line: str, args: list[str]) -> Action | None:
        if not args:
            return Say(SET_HELP, err=True)
        if args[0] == "parameter":
            if len(args) < 3:
                return Say(PARAMETERS_HELP, err=True)
            return Say(self.set_parameter(args[1], args[2:]))
        if args[0] == "system":
            if len(args) < 2:
                return Say(SET_HELP, err=True)
            rest = line.split(None, 2)[2]  # the text as typed, its inner spacing kept
            if rest.startswith(FENCE):
                return self._open(rest[len(FENCE):], system=True)
            return self._complete(rest, system=True)
        if args[0] in ("verbose", "quiet"):
            self.verbose = args[0] == "verbose"
            return Say(f"Set '{args[0]}' mode.")
        if args[0] in ("history", "nohistory"):
            return Say(NO_HISTORY)
        return Say(f"Unknown command '/set {args[0]}'. Type /? for help")

    def _show(self, args: list[str]) -> Action | None:
        if not args:
            return Say(SHOW_HELP, err=True)
        if args[0] in ("info", "template"):
            return ShowModel(args[0])
        if args[0] == "parameters":
            return Say(self.parameters_text())
        if args[0] == "system":
            return Say(self.system if self.system else "No system message was set.")
        return Say(f"Unknown command '/show {args[0]}'. Type /? for help")

    # -- parameters ---------------------------------------------------------------------------------

    def set_parameter(self, name: str, values: list[str]) -> str:
        """Set ``name`` if the API's contract accepts it; return what to tell the person."""
        if name in IGNORED_OPTIONS:
            return f"Couldn't set parameter: anticloud does not apply {name} (the context is compute.n_ctx)"
        kind = _PROPERTIES.get(name)
        if kind is None:
            return f"Couldn't set parameter: unknown parameter '{name}' (/set parameter lists them)"
        try:
            value = parse_value(kind, values)
        except ValueError as exc:
            return f"Couldn't set parameter: {name}: {exc}"
        problem = next(iter(_OPTIONS.iter_errors({name: value})), None)
        if problem is not None:
            return f"Couldn't set parameter: {name}: {problem.message}"
        self.options[name] = value
        return f"Set parameter '{name}' to '{', '.join(values)}'"

    def parameters_text(self) -> str:
        defaults = Params().to_json()
        lines = ["Parameters set in this session:"]
        lines += [f"  {k:<20} {v}" for k, v in sorted(self.options.items())] or ["  none"]
        lines += ["Defaults for the others:"]
        lines += [f"  {k:<20} {v}" for k, v in sorted(defaults.items()) if k not in self.options and v is not None]
        return "\n".join(lines)

    # -- how a sent conversation went ------------------------------------------------------------------

    def answered(self, text: str) -> None:
        """The model answered ``text`` in full: it joins the conversation."""
        self.turns.append({"role": "assistant", "content": text})

    def interrupted(self, shown: str) -> None:
        """The answer was stopped after ``shown``: kept as far as it went, or the question is taken back."""
        if shown:
            self.answered(shown)
        else:
            self.unanswered()

    def unanswered(self) -> None:
        """The question got no answer (a refusal, an error): it leaves the conversation."""
        if self.turns and self.turns[-1]["role"] == "user":
            self.turns.pop()

    def interrupt(self) -> str | None:
        """Ctrl-C at the prompt: drop a multi-line input being typed, or say how to leave."""
        if self._gathering is not None:
            self._gathering = None
            return None
        return EXIT_HINT


def parse_value(kind: dict[str, Any], values: list[str]) -> Any:
    """The words typed after a parameter's name, as the JSON value the contract's ``kind`` describes."""
    if "anyOf" in kind:  # stop: one string, or several
        return values
    if len(values) != 1:
        raise ValueError("give one value")
    if kind.get("type") == "integer":
        try:
            return int(values[0])
        except ValueError:
            raise ValueError(f"'{values[0]}' is not an integer") from None
    try:
        return float(values[0])
    except ValueError:
        raise ValueError(f"'{values[0]}' is not a number") from None


def run_arguments(words: tuple[str, ...], models: set[str], default: str) -> tuple[str, str | None]:
    """``anticloud run [MODEL] [PROMPT]``: (model, prompt or None). A single word names a model
    only if a stored model has that name; otherwise it is a prompt for the default model."""
    if not words:
        return default, None
    if len(words) == 1:
        name = words[0].removesuffix(":latest")
        return (name, None) if name in models else (default, words[0])
    return words[0].removesuffix(":latest"), words[1]


def one_prompt(piped: str | None, prompt: str | None) -> str | None:
    """What standard input (when it is not a terminal) and the prompt argument make together: the
    piped text first, as `ollama run` puts it, without the newline that ends it, then a blank line,
    then the prompt; None when both are empty."""
    parts = [p for p in ((piped or "").rstrip("\n"), prompt) if p and p.strip()]
    return "\n\n".join(parts) if parts else None

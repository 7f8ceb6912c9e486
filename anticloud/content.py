"""The content of an inference as its records state it: the prompt the engine is given, and its hashes.

The appliance records with these functions and an auditor re-applies them (`anticloud audit
hash`) to check that a candidate text was the prompt or the output of a recorded inference;
docs/records.md ("How content is hashed") states them for anyone re-implementing them. This
form is part of the documented contract: changing it changes every recorded hash.

* A completion's prompt (``inference.begin`` ``prompt_sha3_256``, kind "completion"): SHA3-256
  of the prompt's UTF-8 bytes. Ollama's ``system`` field, if not empty, is put before it:
  ``SYSTEM + "\\n\\n" + PROMPT``.
* A chat's prompt (kind "chat"): SHA3-256 of the canonical JSON (docs/ledger-format.md) of the
  list of messages the engine is given, each exactly ``{"role", "content"}`` with a string
  content: a list of content parts is their ``text`` joined with nothing between, OpenAI's role
  ``developer`` is ``system``, and any other member (``name``) is dropped.
* An output (``inference.end`` ``output_sha3_256``): SHA3-256 of the UTF-8 bytes of the whole
  text generated, every piece joined: the text the API returns (Ollama's ``response`` or
  ``message.content``, OpenAI's ``text`` or ``message.content``, streamed pieces joined).
* An embedding's inputs (``input_sha3_256``): one SHA3-256 per input, of its UTF-8 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from anticloud.engines.base import Message
from anticloud.errors import ContentError
from ledger import canonical_bytes, sha3_tag

Kind = Literal["prompt", "output", "input"]
KINDS: tuple[Kind, ...] = ("prompt", "output", "input")


def completion_prompt(prompt: str, system: str | None = None) -> str:
    """The text a completion's engine is given: Ollama's ``system`` (if any), a blank line, the prompt."""
    return f"{system}\n\n{prompt}" if system else prompt


def engine_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[list[Message], list[str]]:
    """The messages as the engine takes them (and recorded), and what was accepted but not applied.

    ``developer`` is OpenAI's newer name for ``system``; a content given as text parts is their
    text, joined; a message's ``name`` reaches no chat template, so it is named as ignored.
    """
    out: list[Message] = []
    for m in messages:
        content = m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out, ["messages[].name"] if any("name" in m for m in messages) else []


def text_hash(text: str) -> str:
    """``sha3-256:<hex>`` of ``text``'s UTF-8 bytes: an output, an embedding input, a completion's prompt."""
    try:
        return sha3_tag(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 text at all
        raise ContentError(f"the text is not valid Unicode at character {exc.start}") from None


def prompt_hash(prompt: str | list[Message]) -> str:
    """The ``prompt_sha3_256`` of a completion's prompt (a string) or a chat's messages (a list)."""
    return text_hash(prompt) if isinstance(prompt, str) else sha3_tag(canonical_bytes(prompt))


def candidate_messages(text: str) -> list[Message]:
    """A chat's messages from JSON: a list of messages, or a request body holding ``messages``,
    in Ollama's or OpenAI's form. ContentError if it is neither."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentError(f"the messages are not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    messages = doc.get("messages") if isinstance(doc, dict) else doc
    if not isinstance(messages, list) or not messages:
        raise ContentError("expected a JSON list of messages, or an object with a non-empty \"messages\" list")
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        parts_ok = isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                     for p in content)
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not (isinstance(content, str)
                                                                                  or parts_ok):
            raise ContentError(f"message {i} needs a string \"role\" and a \"content\" that is a string or a list "
                               "of text parts")
    return engine_messages(messages)[0]


@dataclass(frozen=True, slots=True)
class Computed:
    """A candidate's hash, computed as the appliance computes it, and what it was checked against."""

    kind: Kind
    form: str  # "text", "text with system", "messages"
    sha3_256: str
    expected: str | None = None

    @property
    def matches(self) -> bool | None:
        """Whether it is the hash expected (None if none was given)."""
        return None if self.expected is None else self.expected.strip().lower() == self.sha3_256

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "form": self.form, "sha3_256": self.sha3_256}
        if self.expected is not None:
            out.update(expected=self.expected, matches=self.matches)
        return out


def hash_candidate(raw: bytes, kind: Kind, messages: bool = False, system: str | None = None,
                   expected: str | None = None) -> Computed:
    """Hash candidate content ``raw`` (bytes exactly as given) as the appliance hashed the ``kind``
    recorded: ``messages`` for a chat's prompt given as JSON, ``system`` for Ollama's system field.
    ContentError for bytes that are not UTF-8, malformed messages, or options that do not fit ``kind``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContentError(f"the candidate is not UTF-8 (byte {exc.start}); the appliance hashes UTF-8 text") from None
    if kind != "prompt" and (messages or system is not None):
        raise ContentError(f"messages and a system text are parts of a prompt, not of an {kind}")
    if messages and system is not None:
        raise ContentError("a chat's system text is one of its messages; give it there")
    if messages:
        return Computed(kind, "messages", prompt_hash(candidate_messages(text)), expected)
    if system:
        return Computed(kind, "text with system", prompt_hash(completion_prompt(text, system)), expected)
    return Computed(kind, "text", text_hash(text), expected)

"""Per-person bearer tokens for the HTTP API.

Tokens are shown once, when created, and stored only as their SHA3-256 in
``HOME/tokens.json``. Checking a presented token compares it with every stored hash with
``hmac.compare_digest``, so the time taken says nothing about which one, or how much of
one, matched. The file is refused if anyone but its owner could have written it
(`anticloud.home.read_trusted`), since a swapped file would let its author in unrecorded.
Creating and revoking are recorded (``token.create``, ``token.revoke``) before the store
changes; the ledger names the person and a short id, never the token.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import dataclass

from anticloud.errors import TokenError
from anticloud.fsutil import atomic_write
from anticloud.home import Home, read_trusted
from ledger import LedgerWriter, canonical_bytes, sha3_tag, utc_timestamp

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
PREFIX = "act_"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    sha3_256: str
    created: str
    revoked: str | None

    @property
    def short_id(self) -> str:
        return self.sha3_256[9:21]



def _digest(token: str) -> str:
    return sha3_tag(token.encode())


def load(home: Home) -> dict[str, Token]:
    path = home.tokens
    try:
        raw = read_trusted(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenError(f"{path} is unreadable: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
        return {n: Token(n, e["sha3_256"], e["created"], e["revoked"]) for n, e in doc["tokens"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenError(f"{path} is unreadable or malformed: {exc}") from None


def _save(home: Home, tokens: dict[str, Token]) -> None:
    doc = {"tokens": {t.name: {"created": t.created, "revoked": t.revoked, "sha3_256": t.sha3_256}
                      for t in tokens.values()}}
    atomic_write(home.tokens, canonical_bytes(doc) + b"\n", 0o600)


def create(home: Home, writer: LedgerWriter, name: str) -> tuple[Token, str]:
    """Make a token for ``name``; return it with the secret, which is never shown again."""
    if not NAME_RE.match(name):
        raise TokenError(f"{name!r}: a token name is letters, digits and . _ @ -")
    tokens = load(home)
    if name in tokens and tokens[name].revoked is None:
        raise TokenError(f"{name} already has a token; revoke it first")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = Token(name, _digest(secret), utc_timestamp(), None)
    writer.append("token.create", {"name": name, "token_id": token.short_id})
    tokens[name] = token
    _save(home, tokens)
    return token, secret


def revoke(home: Home, writer: LedgerWriter, name: str) -> Token:
    tokens = load(home)
    token = tokens.get(name)
    if token is None or token.revoked is not None:
        raise TokenError(f"{name} has no live token")
    writer.append("token.revoke", {"name": name, "token_id": token.short_id})
    tokens[name] = Token(token.name, token.sha3_256, token.created, utc_timestamp())
    _save(home, tokens)
    return tokens[name]


def identify(tokens: dict[str, Token], presented: str) -> Token | None:
    """The live token matching ``presented``, comparing in constant time against every one."""
    digest = _digest(presented).encode()
    found = None
    for token in tokens.values():
        if hmac.compare_digest(token.sha3_256.encode(), digest) and token.revoked is None:
            found = token
    return found

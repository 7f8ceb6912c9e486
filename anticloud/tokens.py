"""Per-person bearer tokens for the HTTP API.

Tokens are shown once, when created, and stored only as their SHA3-256 in
``HOME/tokens.json``, keyed by a short id, so every token ever made stays listed (revoked
ones marked) even when a person gets a new one. Checking a presented token compares it with
every stored hash with ``hmac.compare_digest``, so the time taken says nothing about which
one, or how much of one, matched; a revoked or expired token identifies nobody. The file is
refused if anyone but its owner could have written it (`anticloud.home.read_trusted`), since
a swapped file would let its author in unrecorded. Creating and revoking are recorded
(``token.create``, ``token.revoke``) before the store changes; the ledger names the person
and the short id, never the token.

When each token was last used is kept apart (``HOME/tokens.used.json``, written by the server
at most once a minute and when it stops, `UseLog`): it informs the operator and decides
nothing, so it is never read to let anyone in.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from anticloud.errors import TokenError
from anticloud.fsutil import atomic_write
from anticloud.home import Home, read_trusted
from ledger import LedgerWriter, canonical_bytes, sha3_tag, utc_timestamp

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
PREFIX = "act_"
USED_FILE = "tokens.used.json"


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    sha3_256: str
    created: str
    revoked: str | None
    expires: str | None = None

    @property
    def short_id(self) -> str:
        return self.sha3_256[9:21]

    def live(self, now: str | None = None) -> bool:
        """Neither revoked nor expired (timestamps compare as text: they share one fixed format)."""
        return self.revoked is None and (self.expires is None or (now or utc_timestamp()) < self.expires)

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "sha3_256": self.sha3_256, "created": self.created, "revoked": self.revoked,
                "expires": self.expires}


def _digest(token: str) -> str:
    return sha3_tag(token.encode())


def load(home: Home) -> dict[str, Token]:
    """Every token ever made, by short id. A file written before tokens had ids (keyed by name) is read too."""
    path = home.tokens
    try:
        raw = read_trusted(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenError(f"{path} is unreadable: {exc.strerror}") from None
    try:
        entries = json.loads(raw)["tokens"]
        found = [Token(e.get("name", key), e["sha3_256"], e["created"], e["revoked"], e.get("expires"))
                 for key, e in entries.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TokenError(f"{path} is unreadable or malformed: {exc}") from None
    return {t.short_id: t for t in found}


def _save(home: Home, tokens: dict[str, Token]) -> None:
    atomic_write(home.tokens, canonical_bytes({"tokens": {k: t.to_json() for k, t in tokens.items()}}) + b"\n",
                 0o600)


def live_token_of(tokens: dict[str, Token], name: str) -> Token | None:
    return next((t for t in tokens.values() if t.name == name and t.live()), None)


def create(home: Home, writer: LedgerWriter, name: str, lifetime: float | None = None) -> tuple[Token, str]:
    """Make a token for ``name``, valid for ``lifetime`` seconds (None: until revoked); return it with
    the secret, which is never shown again."""
    if not NAME_RE.match(name):
        raise TokenError(f"{name!r}: a token name is letters, digits and . _ @ -")
    if lifetime is not None and lifetime <= 0:
        raise TokenError("a token's lifetime must be positive")
    tokens = load(home)
    if live_token_of(tokens, name) is not None:
        raise TokenError(f"{name} already has a live token; revoke it first")
    secret = PREFIX + secrets.token_urlsafe(32)
    expires = None if lifetime is None else utc_timestamp(datetime.now(UTC) + timedelta(seconds=lifetime))
    token = Token(name, _digest(secret), utc_timestamp(), None, expires)
    data = {"name": name, "token_id": token.short_id}
    writer.append("token.create", {**data, "expires": expires} if expires else data)
    tokens[token.short_id] = token
    _save(home, tokens)
    return token, secret


def revoke(home: Home, writer: LedgerWriter, name: str) -> Token:
    """Revoke ``name``'s live token."""
    tokens = load(home)
    token = live_token_of(tokens, name)
    if token is None:
        raise TokenError(f"{name} has no live token")
    writer.append("token.revoke", {"name": name, "token_id": token.short_id})
    tokens[token.short_id] = Token(token.name, token.sha3_256, token.created, utc_timestamp(), token.expires)
    _save(home, tokens)
    return tokens[token.short_id]


def identify(tokens: dict[str, Token], presented: str) -> Token | None:
    """The live token matching ``presented``, comparing in constant time against every one."""
    digest = _digest(presented).encode()
    found = None
    now = utc_timestamp()
    for token in tokens.values():
        if hmac.compare_digest(token.sha3_256.encode(), digest) and token.live(now):
            found = token
    return found


class UseLog:
    """When each token was last used, kept in memory and written out at most every ``every`` seconds."""

    def __init__(self, home: Home, every: float = 60.0) -> None:
        self.home, self.every = home, every
        self._seen: dict[str, str] = {}
        self._written = time.monotonic()
        self._lock = threading.Lock()

    def seen(self, token: Token) -> None:
        with self._lock:
            self._seen[token.short_id] = utc_timestamp()
            due = time.monotonic() - self._written >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        """Merge what was seen into the file (best effort: it informs, it decides nothing)."""
        with self._lock:
            seen, self._seen, self._written = self._seen, {}, time.monotonic()
        if seen:
            with contextlib.suppress(OSError):
                atomic_write(self.home.root / USED_FILE, canonical_bytes({**last_used(self.home), **seen}) + b"\n",
                             0o600)


def last_used(home: Home) -> dict[str, str]:
    """Short id -> when it was last used, as far as the servers wrote it down."""
    try:
        doc = json.loads((home.root / USED_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(doc, dict) else {}

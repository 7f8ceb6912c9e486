"""Per-person tokens over their life: every one listed, expiry, last use, and files written before ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud import tokens
from anticloud.cli import cli
from anticloud.errors import TokenError
from anticloud.home import Home
from ledger import LedgerWriter, canonical_bytes


def test_every_token_ever_made_is_listed_with_its_state_and_last_use(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")

    def anticloud(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--home", str(home.root), "tokens", *args])

    first = anticloud("create", "alice").stdout.strip()
    assert anticloud("create", "alice").exit_code != 0, "one live token per person"
    assert anticloud("revoke", "alice").exit_code == 0
    second = anticloud("create", "alice", "--expires-in", "90d")
    assert second.exit_code == 0 and "valid until" in second.stderr
    with LedgerWriter.open(home.ledger) as writer:
        tokens.create(home, writer, "bob", lifetime=0.001)
    use = tokens.UseLog(home, every=0)
    use.seen(tokens.identify(tokens.load(home), second.stdout.strip()))  # type: ignore[arg-type]

    listed = anticloud("list").output.splitlines()
    assert len(listed) == 3 and [line.split()[0] for line in listed] == ["alice", "alice", "bob"]
    assert "revoked" in listed[0] and "last used never" in listed[0]
    assert " live until " in listed[1] and "last used never" not in listed[1]
    assert "EXPIRED" in listed[2]
    assert tokens.identify(tokens.load(home), first) is None, "a revoked token identifies nobody"
    created = [json.loads(x)["data"] for x in home.ledger.read_bytes().splitlines() if b"token.create" in x]
    assert "expires" not in created[0] and created[1]["expires"] == tokens.load(home)[created[1]["token_id"]].expires
    assert first not in home.ledger.read_text() and first not in home.tokens.read_text()


def test_an_expired_token_is_refused_like_a_revoked_one(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        token, secret = tokens.create(home, writer, "carol", lifetime=3600)
    assert tokens.identify(tokens.load(home), secret) == token
    doc = json.loads(home.tokens.read_bytes())
    doc["tokens"][token.short_id]["expires"] = "2020-01-01T00:00:00.000000Z"
    home.tokens.write_bytes(canonical_bytes(doc))
    assert tokens.identify(tokens.load(home), secret) is None
    with pytest.raises(TokenError, match="lifetime must be positive"), LedgerWriter.open(home.ledger) as writer:
        tokens.create(home, writer, "dave", lifetime=-5)


def test_a_tokens_file_written_before_tokens_had_ids_still_works(imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    secret = tokens.PREFIX + "x" * 43
    old = {"tokens": {"erin": {"created": "2026-01-01T00:00:00.000000Z", "revoked": None,
                               "sha3_256": tokens._digest(secret)}}}
    home.tokens.write_bytes(canonical_bytes(old))
    home.tokens.chmod(0o600)
    found = tokens.identify(tokens.load(home), secret)
    assert found is not None and found.name == "erin"

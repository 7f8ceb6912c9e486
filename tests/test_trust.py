"""The trust store: every change is in the ledger first, and a failed record changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anticloud.errors import TrustError
from anticloud.home import Home
from anticloud.identity import initialise
from anticloud.trust import TrustStore, generate_publisher_key, revoke_key, trust_key
from ledger import LedgerWriteError, LedgerWriter


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    initialise(home)
    return home


def test_trust_list_revoke_are_recorded(home: Home, tmp_path: Path) -> None:
    key_id = generate_publisher_key(tmp_path / "k")
    pem = (tmp_path / "k" / "publisher.pub").read_bytes()
    with LedgerWriter.open(home.ledger) as writer:
        key = trust_key(home, writer, pem, "k/publisher.pub", "staging")
        assert key.key_id == key_id
        with pytest.raises(TrustError, match="already trusted"):
            trust_key(home, writer, pem, "k/publisher.pub", None)
        revoke_key(home, writer, key_id)
        with pytest.raises(TrustError, match="already revoked"):
            revoke_key(home, writer, key_id)
        with pytest.raises(TrustError, match="not in the trust store"):
            revoke_key(home, writer, "sha3-256:" + "0" * 64)
    records = [json.loads(x) for x in home.ledger.read_bytes().splitlines()]
    assert [r["kind"] for r in records[1:]] == ["trust.add", "trust.revoke"]
    assert records[1]["data"]["key_id"] == key_id
    assert TrustStore.load(home).lookup(key_id)[1] is True


def test_a_failed_ledger_append_leaves_the_store_untouched(home: Home, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    generate_publisher_key(tmp_path / "k")
    with LedgerWriter.open(home.ledger) as writer:
        def fail(kind: str, data: dict[str, object]) -> None:
            raise LedgerWriteError(home.ledger, "cannot append: No space left on device")

        monkeypatch.setattr(writer, "append", fail)
        with pytest.raises(LedgerWriteError):
            trust_key(home, writer, (tmp_path / "k" / "publisher.pub").read_bytes(), "k", None)
    assert TrustStore.load(home).keys() == []
    assert not TrustStore.path(home).exists()


def test_non_keys_are_refused(home: Home, tmp_path: Path) -> None:
    with LedgerWriter.open(home.ledger) as writer, pytest.raises(TrustError, match=r"hello\.pub: not a PEM public key"):
        trust_key(home, writer, b"hello", "hello.pub", None)


def test_an_encrypted_publisher_key_needs_its_passphrase(tmp_path: Path) -> None:
    from anticloud.errors import KeyFileError
    from anticloud.identity import read_private_key

    generate_publisher_key(tmp_path / "k", b"correct horse")
    path = tmp_path / "k" / "publisher.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in path.read_bytes()
    with pytest.raises(KeyFileError, match="passphrase"):
        read_private_key(path, b"wrong")
    read_private_key(path, b"correct horse")

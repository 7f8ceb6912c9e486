"""Sealed content: sealing, reading back, every check that must fail, and erasure by key destruction."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from anticloud.errors import ContentSealError, ErasureHeld
from anticloud.vault import ContentStore, Keyring, Sealer, crypto
from anticloud.vault.erasure import Eraser, holds_in_force, plan
from anticloud.vault.reading import ContentReader, Erasures
from ledger import ContentRef, LedgerWriter, Record, records_forward
from tests.conftest import Made

LEDGER_ID = "0" * 32


class Vault:
    """A ledger, a keyring and a content store, with an engine's sealer over them."""

    def __init__(self, root: Path, made: Made, now: datetime | None = None) -> None:
        self.root, self.ledger = root, made.path
        self.keyring = Keyring(root / "keyring")
        self.private = self.keyring.create(None, None)
        self.store = ContentStore(root / "content")
        self.ledger_id = str(LedgerWriter.open(made.path).genesis.data["ledger_id"])
        self.clock = now or datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
        self.sealer = Sealer(self.keyring, self.store, self.ledger_id, lambda: self.clock)

    def infer(self, ident: str, person: str, prompt: str, output: str) -> tuple[Record, Record]:
        """What the engine records for one sealed completion."""
        begin_refs = self.sealer.seal(ident, person, {"prompt": prompt})
        with LedgerWriter.open(self.ledger) as writer:
            begin = writer.append("inference.begin", {"id": ident, "actor": {"token": person}, "sealed": begin_refs})
            end_refs = self.sealer.seal(ident, person, {"output": output})
            end = writer.append("inference.end", {"id": ident, "actor": {"token": person}, "sealed": end_refs})
        self.sealer.forget(ident)
        return begin, end

    def reader(self) -> ContentReader:
        return ContentReader(self.keyring, self.store, self.ledger_id, self.private, Erasures.of_ledger(self.ledger))

    def eraser(self, writer: LedgerWriter) -> Eraser:
        return Eraser(self.keyring, self.store, self.ledger, writer)

    def erase(self, scope: dict[str, object], delete: bool = False) -> None:
        with LedgerWriter.open(self.ledger) as writer:
            self.eraser(writer).erase(scope, "ticket 7", delete)


@pytest.fixture
def vault(tmp_path: Path, make_ledger: object) -> Vault:
    return Vault(tmp_path, make_ledger(1))  # type: ignore[operator]


def ref_of(seq: int, field: str, ref: dict[str, str]) -> ContentRef:
    return ContentRef(seq, field, ref["id"], ref["alg"], ref["sha3_256"], ref["key_commitment"], ref["key"])


def states(vault: Vault, record: Record) -> dict[str, str]:
    return {o.field: o.state if o.state != "open" else o.value for o in vault.reader().open_record(record)}


def all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_sealed_content_reads_back_and_the_ledger_holds_no_trace_of_it(vault: Vault) -> None:
    begin, end = vault.infer("a1b2c3d4e5f60708", "alice", "Is patient Zebediah diabetic?", "I cannot tell.")
    assert states(vault, begin) == {"prompt": "Is patient Zebediah diabetic?"}
    assert states(vault, end) == {"output": "I cannot tell."}
    ledger = vault.ledger.read_bytes()
    assert b"Zebediah" not in ledger and b"cannot tell" not in ledger
    for text in ("Is patient Zebediah diabetic?", "I cannot tell."):  # no hash to confirm a guess with
        for form in (text.encode(), json.dumps(text).encode()):
            assert crypto.sha3(form).removeprefix("sha3-256:").encode() not in ledger
    ref = begin.data["sealed"]["prompt"]
    assert ref["alg"] == "aes-256-gcm" and ref["id"] == "a1b2c3d4e5f60708.prompt"
    # one data key per inference, a key of its own per field: the begin's key does not open the end
    assert ref["key_commitment"] != end.data["sealed"]["output"]["key_commitment"]
    kept = [p for d in (vault.keyring.root, vault.store.root) for p in (d, *d.rglob("*"))]
    modes = {str(p): p.stat().st_mode & 0o777 for p in kept}
    assert {m for m in modes.values()} == {0o600, 0o700}, modes


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_a_damaged_content_file_is_named_and_nothing_of_it_is_shown(vault: Vault, damage: str) -> None:
    begin, _ = vault.infer("a1b2c3d4e5f60708", "alice", "secret prompt", "secret answer")
    path = vault.store.path(begin.data["sealed"]["prompt"]["id"])
    blob = path.read_bytes()
    if damage == "flip":
        path.write_bytes(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:])
    elif damage == "truncate":
        path.write_bytes(blob[:-5])
    else:
        path.unlink()
    [opened] = vault.reader().open_record(begin)
    assert opened.state == "failed" and opened.value is None
    assert ("does not match its commitment" if damage != "remove" else "is missing") in str(opened.reason)


def test_content_swapped_between_two_records_is_caught_even_with_the_commitments_swapped_too(vault: Vault) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "first", "one")
    b, _ = vault.infer("bbbbbbbbbbbbbbbb", "alice", "second", "two")
    pa, pb = (vault.store.path(r.data["sealed"]["prompt"]["id"]) for r in (a, b))
    blob_a, blob_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(blob_b)
    pb.write_bytes(blob_a)
    assert "does not match its commitment" in str(vault.reader().open_record(a)[0].reason)
    # An insider who also rewrites the record's commitment (the chain would catch that; the
    # associated data catches it even without the chain): the data key and AD are a's.
    forged = dict(a.data["sealed"]["prompt"], sha3_256=crypto.sha3(blob_b))
    opened = vault.reader().open_ref(ref_of(a.seq, "prompt", forged))
    assert "does not open under its key and record" in str(opened.reason)


def test_a_wrong_content_key_and_a_wrong_data_key_are_refused(vault: Vault, tmp_path: Path) -> None:
    begin, _ = vault.infer("a1b2c3d4e5f60708", "alice", "secret prompt", "secret answer")
    other = Keyring(tmp_path / "other")
    stranger = other.create(None, None)
    with pytest.raises(ContentSealError, match="not this appliance's content key"):
        vault.keyring.private_key(other.private_path, None)
    reader = ContentReader(vault.keyring, vault.store, vault.ledger_id, stranger, Erasures())
    assert "does not open under this content key" in str(reader.open_record(begin)[0].reason)
    ref = ref_of(begin.seq, "prompt", begin.data["sealed"]["prompt"])
    blob = vault.store.path(ref.id).read_bytes()
    with pytest.raises(ContentSealError, match="not the one its record commits to"):
        crypto.open_content(os.urandom(32), vault.ledger_id, ref, blob)
    # GCM alone would let a second key open a crafted ciphertext; the commitment is checked first.
    assert crypto.key_commitment(os.urandom(32)) != ref.key_commitment


def test_content_opens_only_in_its_own_ledger_inference_and_field() -> None:
    data_key = os.urandom(32)
    sealed = crypto.seal(data_key, "ledger-a", "1111111111111111", "prompt", "text", "g")
    ref = ref_of(1, "prompt", sealed.ref)
    key = crypto.field_key(data_key, "prompt")
    assert json.loads(crypto.open_content(key, "ledger-a", ref, sealed.blob)) == "text"
    with pytest.raises(ContentSealError, match="not the one its record commits to"):  # the output's key
        crypto.open_content(crypto.field_key(data_key, "output"), "ledger-a", ref, sealed.blob)
    with pytest.raises(ContentSealError, match="does not open"):
        crypto.open_content(key, "ledger-b", ref, sealed.blob)
    moved = ref_of(1, "prompt", dict(sealed.ref, id="2222222222222222.prompt"))
    with pytest.raises(ContentSealError, match="does not open"):
        crypto.open_content(key, "ledger-a", moved, sealed.blob)
    # The layout is the documented one: the field's key is HKDF-SHA256 of the data key, the field
    # in its info; the file is the nonce, then AES-256-GCM over the canonical JSON.
    documented = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                      info=b"anticloud/content-field/v1\x00prompt").derive(data_key)
    ad = crypto.content_ad("ledger-a", "1111111111111111", "prompt")
    assert key == documented and AESGCM(key).decrypt(sealed.blob[:12], sealed.blob[12:], ad) == b'"text"'


def test_a_passphrase_protects_the_private_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keyring")
    key = keyring.create(None, b"correct horse")
    assert b"PRIVATE KEY" in keyring.private_path.read_bytes() and b"ENCRYPTED" in keyring.private_path.read_bytes()
    with pytest.raises(ContentSealError, match="passphrase is needed"):
        keyring.private_key(None, None)
    with pytest.raises(ContentSealError, match="wrong passphrase"):
        keyring.private_key(None, b"battery staple")
    assert keyring.private_key(None, b"correct horse").public_key().public_bytes_raw() == \
        key.public_key().public_bytes_raw()
    with pytest.raises(ContentSealError, match="already has a content key"):
        keyring.create(tmp_path / "elsewhere.key", None)
    clear = Keyring(tmp_path / "clear")
    clear.create(None, None)
    with pytest.raises(ContentSealError, match="is not encrypted: give no passphrase"):
        clear.private_key(None, b"a passphrase it does not need")


def test_erasing_a_person_destroys_their_keys_and_leaves_others_readable(vault: Vault) -> None:
    a_begin, a_end = vault.infer("aaaaaaaaaaaaaaaa", "alice", "alice's prompt", "alice's answer")
    b_begin, _ = vault.infer("bbbbbbbbbbbbbbbb", "bob", "bob's prompt", "bob's answer")
    [alice_group] = [g for g in vault.keyring.all_groups() if g.person == "alice"]
    key_file = vault.keyring.groups / f"{alice_group.group}.key"
    secret = key_file.read_bytes()
    group_key = crypto.unwrap_group_key(vault.private, vault.ledger_id, alice_group.group, "alice",
                                        alice_group.month, alice_group.sealed)
    vault.erase({"person": "alice"})
    assert states(vault, a_begin) == {"prompt": "erased"} and states(vault, a_end) == {"output": "erased"}
    assert states(vault, b_begin) == {"prompt": "bob's prompt"}
    erased = [r.record for r in records_forward(vault.ledger, ["content.erased"])]
    assert [e.data["keys"] for e in erased] == [[alice_group.group]] and erased[0].data["request"] == "ticket 7"
    everything = all_bytes_under(vault.root)
    assert secret not in everything and group_key not in everything and alice_group.sealed.encode() not in everything


def test_erasing_one_record_takes_only_its_inference(vault: Vault) -> None:
    a, a_end = vault.infer("aaaaaaaaaaaaaaaa", "alice", "first", "one")
    b, _ = vault.infer("bbbbbbbbbbbbbbbb", "alice", "second", "two")
    vault.erase({"seq": a.seq, "inference": "aaaaaaaaaaaaaaaa", "key": a.data["sealed"]["prompt"]["key"]},
                delete=True)
    assert states(vault, a) == {"prompt": "erased"} and states(vault, a_end) == {"output": "erased"}
    assert states(vault, b) == {"prompt": "second"}
    assert not vault.store.path("aaaaaaaaaaaaaaaa.prompt").exists()
    assert vault.store.path("bbbbbbbbbbbbbbbb.prompt").exists()


def test_before_a_day_takes_whole_months_and_the_older_keys_of_the_month_it_falls_in(vault: Vault) -> None:
    vault.clock = datetime(2026, 10, 3, tzinfo=UTC)
    october, _ = vault.infer("1000000000000000", "alice", "october", "x")
    vault.clock = datetime(2026, 11, 2, tzinfo=UTC)
    early, _ = vault.infer("2000000000000000", "alice", "early november", "x")
    vault.clock = datetime(2026, 11, 20, tzinfo=UTC)
    late, _ = vault.infer("3000000000000000", "alice", "late november", "x")
    p = plan(vault.keyring, {"person": "alice", "before": "2026-11-10"})
    assert [g.month for g in p.groups] == ["2026-10"] and p.inferences() == ["2000000000000000"]
    vault.erase({"person": "alice", "before": "2026-11-10"})
    assert [states(vault, r) for r in (october, early, late)] == [
        {"prompt": "erased"}, {"prompt": "erased"}, {"prompt": "late november"}]


def test_a_legal_hold_blocks_erasure_and_the_refusal_is_recorded(vault: Vault) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "kept for court", "x")
    with LedgerWriter.open(vault.ledger) as writer:
        writer.append("content.hold", {"hold": "h1", "scope": {"person": "alice"}, "reason": "case 12"})
    with pytest.raises(ErasureHeld, match="h1"):
        vault.erase({"person": "alice"})
    assert [r.record.data["holds"] for r in records_forward(vault.ledger, ["content.refused"])] == [["h1"]]
    assert not list(records_forward(vault.ledger, ["content.erased"]))
    assert states(vault, a) == {"prompt": "kept for court"}
    with LedgerWriter.open(vault.ledger) as writer:
        writer.append("content.release", {"hold": "h1", "reason": "case closed"})
    assert holds_in_force(vault.ledger) == {}
    vault.erase({"person": "alice"})
    assert states(vault, a) == {"prompt": "erased"}


def test_retention_erases_months_past_it_but_not_a_held_one(vault: Vault) -> None:
    vault.clock = datetime(2025, 1, 10, tzinfo=UTC)
    old_alice, _ = vault.infer("1000000000000000", "alice", "old alice", "x")
    old_bob, _ = vault.infer("2000000000000000", "bob", "old bob", "x")
    vault.clock = datetime(2026, 11, 10, tzinfo=UTC)
    recent, _ = vault.infer("3000000000000000", "alice", "recent", "x")
    with LedgerWriter.open(vault.ledger) as writer:
        writer.append("content.hold", {"hold": "h2", "scope": {"person": "bob"}, "reason": "audit"})
        done = vault.eraser(writer).expire(365 * 86400, datetime(2026, 11, 20, tzinfo=UTC))
    assert done is not None
    [record] = [r.record for r in records_forward(vault.ledger, ["content.erased"])]
    assert record.data["scope"] == {"retention": 365 * 86400, "before": "2025-11-01"}
    assert len(record.data["held"]) == 1 and record.data["ciphertext"] == "deleted"
    assert [states(vault, r) for r in (old_alice, old_bob, recent)] == [
        {"prompt": "erased"}, {"prompt": "old bob"}, {"prompt": "recent"}]
    with LedgerWriter.open(vault.ledger) as writer:
        assert vault.eraser(writer).expire(0, datetime(2030, 1, 1, tzinfo=UTC)) is None  # 0 keeps for ever


def test_an_engine_keeps_sealing_for_a_person_whose_month_was_erased_while_it_ran(vault: Vault) -> None:
    vault.infer("aaaaaaaaaaaaaaaa", "alice", "before", "x")
    vault.erase({"person": "alice"})
    after, _ = vault.infer("bbbbbbbbbbbbbbbb", "alice", "after the erasure", "x")
    assert states(vault, after) == {"prompt": "after the erasure"}


def test_a_missing_key_without_a_recorded_erasure_is_a_failure_not_an_erasure(vault: Vault) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "text", "x")
    for path in vault.keyring.groups.iterdir():
        path.unlink()  # removed around the appliance, unrecorded
    [opened] = vault.reader().open_record(a)
    assert opened.state == "failed" and "no erasure is recorded" in str(opened.reason)


def test_the_engine_seals_only_to_the_content_key_the_ledger_recorded(vault: Vault, tmp_path: Path) -> None:
    from anticloud.vault.sealer import pinned_sealer

    with pytest.raises(ContentSealError, match="is not the content key the ledger records"):
        pinned_sealer(vault.keyring, vault.store, vault.ledger, vault.ledger_id)  # nothing recorded yet
    with LedgerWriter.open(vault.ledger) as writer:
        writer.append("content.key", {"fingerprint": vault.keyring.fingerprint(), "private": "home",
                                      "passphrase": False})
    assert pinned_sealer(vault.keyring, vault.store, vault.ledger, vault.ledger_id).seal(
        "aaaaaaaaaaaaaaaa", "alice", {"prompt": "x"})
    insider = Keyring(tmp_path / "insider")
    insider.create(None, None)
    vault.keyring.public_path.write_bytes(insider.public_path.read_bytes())  # root swaps in their own key
    with pytest.raises(ContentSealError, match="refusing to seal to it"):
        pinned_sealer(vault.keyring, vault.store, vault.ledger, vault.ledger_id)


def test_a_recorded_erasure_is_obeyed_even_while_its_keys_survive_and_is_then_finished(vault: Vault) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "to be erased", "x")
    group = a.data["sealed"]["prompt"]["key"]

    class FailsAfterWriting:  # the record is durable, then the append reports a failure (Ctrl-C, say)
        def __init__(self, writer: LedgerWriter) -> None:
            self.writer = writer

        def append(self, kind: str, data: dict[str, object]) -> Record:
            self.writer.append(kind, data)
            raise KeyboardInterrupt

    with LedgerWriter.open(vault.ledger) as writer, pytest.raises(KeyboardInterrupt):
        Eraser(vault.keyring, vault.store, vault.ledger, FailsAfterWriting(writer)).erase(  # type: ignore[arg-type]
            {"person": "alice"}, "ticket 8", False)
    assert (vault.keyring.groups / f"{group}.key").exists()  # recorded, not yet carried out
    assert states(vault, a) == {"prompt": "erased"}  # the ledger says erased: nothing is shown
    with LedgerWriter.open(vault.ledger) as writer:
        assert vault.eraser(writer).finish() is not None  # what the next start does
    assert not (vault.keyring.groups / f"{group}.key").exists()


def test_an_answer_still_running_when_its_person_is_erased_is_sealed_under_a_new_key(vault: Vault) -> None:
    ident = "cccccccccccccccc"
    with LedgerWriter.open(vault.ledger) as writer:
        refs = vault.sealer.seal(ident, "alice", {"prompt": "asked before the erasure"})
        begin = writer.append("inference.begin", {"id": ident, "actor": {"token": "alice"}, "sealed": refs})
        vault.eraser(writer).erase({"person": "alice"}, "ticket 9", False)  # while the answer is generated
        with vault.sealer.holding():  # as the engine does: seal and append under the shared lock
            refs = vault.sealer.seal(ident, "alice", {"output": "answered after it"})
            end = writer.append("inference.end", {"id": ident, "actor": {"token": "alice"}, "sealed": refs})
    assert states(vault, begin) == {"prompt": "erased"}
    assert states(vault, end) == {"output": "answered after it"}  # new content, under a key no erasure named
    assert end.data["sealed"]["output"]["key"] != begin.data["sealed"]["prompt"]["key"]


def test_a_torn_key_append_is_cut_back_and_a_damaged_group_file_is_named(vault: Vault,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "first", "x")
    group = a.data["sealed"]["prompt"]["key"]
    path = vault.keyring.groups / f"{group}.dks"
    before = path.read_bytes()
    import anticloud.vault.keyring as keyring_module

    def half(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keyring_module, "write_all", half)
    with pytest.raises(OSError):
        vault.sealer.seal("bbbbbbbbbbbbbbbb", "alice", {"prompt": "second"})
    monkeypatch.undo()
    assert path.read_bytes() == before and states(vault, a) == {"prompt": "first"}
    path.write_bytes(before + b'{"inference": "x"\n')
    with pytest.raises(ContentSealError, match=r"line 2 is not a wrapped data key"):
        vault.keyring.entries(group)


def test_a_hold_whose_scope_cannot_be_read_holds_everything_and_breaks_nothing(vault: Vault) -> None:
    a, _ = vault.infer("aaaaaaaaaaaaaaaa", "alice", "kept", "x")
    with LedgerWriter.open(vault.ledger) as writer:
        writer.append("content.hold", {"hold": "h9", "scope": {"person": 7, "before": "soon"}, "reason": "?"})
    assert holds_in_force(vault.ledger) == {"h9": {}}
    with pytest.raises(ErasureHeld, match="h9"):
        vault.erase({"person": "alice"})
    with LedgerWriter.open(vault.ledger) as writer:  # retention keeps what it cannot judge
        assert vault.eraser(writer).expire(1, datetime(2030, 1, 1, tzinfo=UTC)) is None
    assert states(vault, a) == {"prompt": "kept"}

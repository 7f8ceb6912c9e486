"""The engine under record_content = "sealed", on the fake engine: what each record holds, a
policy changed while it runs, a content key swapped underneath, a disk that fills at the output,
and retention at the start."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from anticloud.config import set_value
from anticloud.engines import Done, Params
from anticloud.errors import ContentSealError
from anticloud.home import Home
from anticloud.runtime import Appliance
from anticloud.vault import ContentStore, Keyring
from anticloud.vault.reading import ContentReader, Erasures
from anticloud.vault.store import ContentStore as Store
from ledger import LedgerWriter, record_with_seq, verify_file
from tests.fake_engine import FakeEngine  # noqa: F401 - registers the "fake" engine
from tests.test_runtime import ISOLATED, records


@pytest.fixture
def home(imported_home: Callable[..., Home]) -> Home:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        Keyring(home.keyring).create(None, None)
        writer.append("content.key", {"fingerprint": Keyring(home.keyring).fingerprint(), "private": "home",
                                      "passphrase": False})
        set_value(home, writer, "inference.record_content", "sealed")
    return home


@pytest.fixture
def writer(home: Home) -> Iterator[LedgerWriter]:
    with LedgerWriter.open(home.ledger) as writer:
        yield writer


def infer(app: Appliance, prompt: str = "one two three") -> str:
    return "".join(p for p in app.infer("tiny", prompt, Params(), "uid:1000") if not isinstance(p, Done))


def opened(home: Home, record: dict[str, Any]) -> dict[str, Any]:
    keyring = Keyring(home.keyring)
    reader = ContentReader(keyring, ContentStore(home.content), records(home)[0]["data"]["ledger_id"],
                           keyring.private_key(None, None), Erasures.of_ledger(home.ledger))
    found = reader.open_record(record_with_seq(home.ledger, record["seq"]).record)
    return {o.field: o.value if o.state == "open" else o.state for o in found}


def test_a_sealed_inference_records_references_only_and_opens_to_what_was_said(home: Home,
                                                                               writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    answer = infer(app, "hello there")
    app.stop()
    begin = next(r for r in records(home) if r["kind"] == "inference.begin")
    end = next(r for r in records(home) if r["kind"] == "inference.end")
    for record in (begin, end):
        assert not {"prompt", "prompt_sha3_256", "output", "output_sha3_256"} & set(record["data"])
    assert opened(home, begin) == {"prompt": "hello there"} and opened(home, end) == {"output": answer}
    assert verify_file(home.ledger, content_dir=home.content).content.checked == 2  # type: ignore[union-attr]


def test_a_policy_turned_to_sealed_while_the_engine_runs_seals_the_next_inference(
        imported_home: Callable[..., Home]) -> None:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        infer(app)
        with pytest.raises(Exception, match="needs a content key"):  # refused, unrecorded, without a key
            set_value(home, writer, "inference.record_content", "sealed")
        Keyring(home.keyring).create(None, None)
        writer.append("content.key", {"fingerprint": Keyring(home.keyring).fingerprint(), "private": "home",
                                      "passphrase": False})
        set_value(home, writer, "inference.record_content", "sealed")
        infer(app, "now sealed")
        app.stop()
    begins = [r for r in records(home) if r["kind"] == "inference.begin"]
    assert "prompt_sha3_256" in begins[0]["data"] and "sealed" in begins[1]["data"]
    assert opened(home, begins[1]) == {"prompt": "now sealed"}


def test_a_swapped_content_key_refuses_the_inference_before_anything_is_recorded(home: Home,
                                                                                  writer: LedgerWriter,
                                                                                  tmp_path: Any) -> None:
    insider = Keyring(tmp_path / "insider")
    insider.create(None, None)
    Keyring(home.keyring).public_path.write_bytes(insider.public_path.read_bytes())
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    with pytest.raises(ContentSealError, match="refusing to seal to it"):
        infer(app)
    app.stop()
    assert not [r for r in records(home) if r["kind"] == "inference.begin"]
    assert not any(home.content.rglob("*.prompt")) if home.content.exists() else True


def test_an_output_that_cannot_be_sealed_is_recorded_as_such_and_the_client_is_told(
        home: Home, writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    real = Store.put

    def full(self: Store, content_id: str, blob: bytes) -> None:
        if content_id.endswith(".output"):
            raise OSError(28, "No space left on device", str(self.path(content_id)))
        real(self, content_id, blob)

    monkeypatch.setattr(Store, "put", full)
    with pytest.raises(ContentSealError, match=r"could not be sealed: .*No space left"):
        infer(app)
    app.stop()
    end = next(r for r in records(home) if r["kind"] == "inference.end")
    assert "sealed" not in end["data"] and "No space left on device" in end["data"]["content_error"]
    assert "output_sha3_256" not in end["data"]  # no hash either: the policy is sealed
    assert verify_file(home.ledger, content_dir=home.content).exit_code == 0


def test_retention_at_the_start_erases_months_past_it(home: Home, writer: LedgerWriter,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    infer(app, "an old question")
    app.stop()
    set_value(home, writer, "inference.content_retention", "30d")
    next_year = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1, day=1)
    monkeypatch.setattr("anticloud.runtime.utc_now", lambda: next_year)
    Appliance.start(home, writer, namespace=True, state=ISOLATED).stop()
    [erased] = [r for r in records(home) if r["kind"] == "content.erased"]
    assert erased["data"]["request"] == "retention" and erased["data"]["keys"]
    begin = next(r for r in records(home) if r["kind"] == "inference.begin")
    assert opened(home, begin) == {"prompt": "erased"}
    assert json.loads(json.dumps(verify_file(home.ledger).to_json()))["content"]["erased"] == 2

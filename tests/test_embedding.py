"""Embeddings recorded like inferences, with the fake engine: the vectors' shape (`pack`, known
answers), the begin and end records, fail closed, and the stop and crash paths they share."""

from __future__ import annotations

import base64
import math
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from anticloud.actor import local
from anticloud.config import set_value
from anticloud.embedding import EmbedRequest, pack
from anticloud.errors import Busy, EngineError, PromptTooLong, Unsupported
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriteError, LedgerWriter, sha3_tag, verify_file
from tests.fake_engine import DIMENSIONS, FakeEngine, FakeModel  # registers the "fake" engine
from tests.test_runtime import ISOLATED, kinds, records
from tests.waiting import poll


@pytest.fixture
def home(imported_home: Callable[..., Home]) -> Home:
    home = imported_home("tiny")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
        set_value(home, writer, "models.tiny.n_ctx", "8")
    FakeModel.loads, FakeModel.unloads, FakeModel.generations, FakeModel.gate = [], [], 0, None
    FakeModel.embeddings, FakeModel.embeds, FakeEngine.refusal = 0, True, None
    return home


@pytest.fixture
def app(home: Home) -> Iterator[Appliance]:
    with LedgerWriter.open(home.ledger) as writer:
        yield Appliance.start(home, writer, state=ISOLATED)


def last(home: Home, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = next(r["data"] for r in reversed(records(home)) if r["kind"] == kind)
    return data


def test_pack_normalises_cuts_and_encodes_little_endian_float32() -> None:
    assert pack([3.0, 4.0], True, None) == struct.pack("<2f", 0.6, 0.8)
    assert pack([3.0, 4.0], False, None) == b"\x00\x00\x40\x40\x00\x00\x80\x40"  # 3.0 and 4.0, as they are
    assert pack([3.0, 4.0, 12.0], True, 2) == pack([3.0, 4.0], True, None), "the first ones, normalised again"
    assert pack([0.0, 0.0], True, None) == bytes(8), "a zero vector stays zero rather than dividing by zero"
    with pytest.raises(Unsupported, match="2 dimensions; 3 cannot"):
        pack([3.0, 4.0], True, 3)
    with pytest.raises(EngineError, match="not finite"):
        pack([1.0, math.nan], True, None)


def test_an_embedding_is_recorded_before_and_after_like_an_inference(home: Home, app: Appliance) -> None:
    texts = ["one two three", "one two three", "four five"]
    done = app.embed("tiny", EmbedRequest(texts, dimensions=4, request={"user": "ward-7"}), "uid:1000")
    assert len(done.vectors) == 3 and done.tokens == [3, 3, 2] and done.compute_ns > 0
    assert done.vectors[0] == done.vectors[1] != done.vectors[2], "the same text, the same vector"
    assert all(math.isclose(math.fsum(x * x for x in done.floats(i)), 1.0, rel_tol=1e-6) for i in range(3))
    assert len(done.floats(0)) == 4
    begin, end = records(home)[-2:]
    assert [begin["kind"], end["kind"]] == ["inference.begin", "inference.end"]
    assert begin["data"] == {"id": end["data"]["id"], "kind": "embedding", "model": "tiny",
                             "manifest": begin["data"]["manifest"], "client": "uid:1000", "airgap": "isolated",
                             "method": "fake-word-buckets", "inputs": 3,
                             "input_sha3_256": [sha3_tag(t.encode()) for t in texts], "truncate": True,
                             "normalise": True, "dimensions": 4, "num_ctx": 0, "request": {"user": "ward-7"},
                             "actor": local()}
    assert begin["data"]["manifest"].startswith("sha3-256:")
    assert end["data"]["done_reason"] == "stop" and end["data"]["input_tokens"] == [3, 3, 2]
    assert end["data"]["prompt_tokens"] == 8 and end["data"]["truncated"] == [] and end["data"]["dimensions"] == 4
    assert end["data"]["output_sha3_256"] == [sha3_tag(v) for v in done.vectors]
    assert "one two" not in home.ledger.read_text(), "by default the ledger holds hashes, not the texts"


def test_plaintext_keeps_the_inputs_and_the_vectors(home: Home, app: Appliance) -> None:
    set_value(home, app.writer, "inference.record_content", "plaintext")  # in force for the next record
    done = app.embed("tiny", EmbedRequest(["alpha beta", "gamma"]), "uid:1000")
    assert last(home, "inference.begin")["input"] == ["alpha beta", "gamma"]
    assert [base64.b64decode(v) for v in last(home, "inference.end")["output"]] == done.vectors


def test_truncation_is_recorded_and_its_refusal_records_no_inference(home: Home, app: Appliance) -> None:
    long = " ".join(f"w{i}" for i in range(12))  # the context holds 8
    done = app.embed("tiny", EmbedRequest([long, "short"]), "uid:1000")
    end = last(home, "inference.end")
    assert done.tokens == [8, 1] and end["truncated"] == [0] and end["input_tokens"] == [8, 1]
    before, embedded = len(records(home)), FakeModel.embeddings
    with pytest.raises(PromptTooLong, match="12 tokens; tiny's context holds 8"):
        app.embed("tiny", EmbedRequest(["short", long], truncate=False), "uid:1000")
    assert len(records(home)) == before and FakeModel.embeddings == embedded, "refused before anything ran"


def test_a_model_that_makes_no_embeddings_is_refused_before_any_record(home: Home, app: Appliance) -> None:
    FakeModel.embeds = False
    with pytest.raises(Unsupported, match="tiny makes no embeddings"):
        app.embed("tiny", EmbedRequest(["one"]), "uid:1000")
    assert "inference.begin" not in kinds(home) and FakeModel.embeddings == 0


def test_no_vector_is_computed_without_its_begin_record(home: Home, app: Appliance,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app.embed("tiny", EmbedRequest(["warm the model up"]), "uid:1000")
    embedded = FakeModel.embeddings

    def failing(kind: str, build: Any) -> Any:
        raise LedgerWriteError(home.ledger, "cannot append: No space left on device")

    monkeypatch.setattr(app.writer, "append_derived", failing)
    with pytest.raises(LedgerWriteError):
        app.embed("tiny", EmbedRequest(["one two"]), "uid:1000")
    assert FakeModel.embeddings == embedded and not app.inferences._open


def test_no_vector_is_returned_without_its_end_record(home: Home, app: Appliance,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = app.writer.append_derived

    def refuse_end(kind: str, build: Any) -> Any:
        if kind == "inference.end":
            raise LedgerWriteError(home.ledger, "cannot append: No space left on device")
        return real(kind, build)

    monkeypatch.setattr(app.writer, "append_derived", refuse_end)
    with pytest.raises(LedgerWriteError):
        app.embed("tiny", EmbedRequest(["one two"]), "uid:1000")
    assert FakeModel.embeddings == 1 and kinds(home)[-1] == "inference.begin", "computed, never handed out"


def test_a_dimension_count_the_model_lacks_is_an_error_recorded_in_its_end(home: Home, app: Appliance) -> None:
    with pytest.raises(Unsupported, match=f"{DIMENSIONS} dimensions; {DIMENSIONS + 1} cannot"):
        app.embed("tiny", EmbedRequest(["one", "two"], dimensions=DIMENSIONS + 1), "uid:1000")
    end = last(home, "inference.end")
    assert end["done_reason"] == "error" and "cannot be returned" in end["error"] and end["output_sha3_256"] == []
    assert FakeModel.embeddings == 1, "refused at the first vector, not after computing them all"


def test_a_stop_ends_an_open_embedding_before_the_engine_stop(home: Home, app: Appliance) -> None:
    FakeModel.gate = threading.Event()  # held before the second input
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            app.embed("tiny", EmbedRequest(["one", "two", "three"]), "uid:1000")
        except BaseException as exc:  # noqa: BLE001 -- the test reads it below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    poll(lambda: FakeModel.embeddings == 1, 10, "the first vector")
    stopper = threading.Thread(target=app.stop)
    stopper.start()
    poll(lambda: app.inferences.stopping, 10, "the stop to begin")
    FakeModel.gate.set()
    worker.join(10)
    stopper.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], Busy) and FakeModel.embeddings == 1
    tail = records(home)[-3:]
    assert [r["kind"] for r in tail] == ["inference.end", "model.unload", "engine.stop"]
    assert tail[0]["data"]["done_reason"] == "engine_stopped" and len(tail[0]["data"]["output_sha3_256"]) == 1


def test_an_embedding_a_crash_left_open_is_interrupted_at_the_next_start(home: Home, app: Appliance) -> None:
    FakeModel.gate = threading.Event()  # the process "dies" with the embedding held open
    worker = threading.Thread(target=app.embed, args=("tiny", EmbedRequest(["one", "two"]), "uid:1000"))
    worker.start()
    poll(lambda: FakeModel.embeddings == 1, 10, "the first vector")
    begin = next(r for r in reversed(records(home)) if r["kind"] == "inference.begin")
    Appliance.start(home, app.writer, state=ISOLATED)
    interrupted = last(home, "inference.interrupted")
    assert interrupted == {"id": begin["data"]["id"], "begin_seq": begin["seq"],
                           "reason": "the engine stopped before it ended", "actor": local()}
    FakeModel.gate.set()  # (the "dead" process's thread then ends, as no real crash would let it)
    worker.join(10)
    assert verify_file(home.ledger).status == "intact"

"""The running appliance with a fake engine: every record kind, the start rules, the pool, fail closed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anticloud import clock
from anticloud.actor import local
from anticloud.airgap import Interface, NetworkState, Route
from anticloud.config import load_config, record_accepted, set_value
from anticloud.engines import Done, Params
from anticloud.errors import AirGapBreached, Busy, EngineRefused, LoadRefused
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriteError, LedgerWriter, verify_file
from tests.conftest import genesis_for, operator_imports_real_model
from tests.fake_engine import FakeEngine, FakeModel  # registers the "fake" engine
from tests.waiting import join, poll, wait_for_socket

ROOT = Path(__file__).resolve().parent.parent

LO = Interface(1, "lo", True, True, ("127.0.0.1/8",))
ISOLATED = NetworkState((LO,), (Route(4, 255, "local", "127.0.0.0/8", "lo"),))
CONNECTED = NetworkState((LO, Interface(2, "eth0", True, False, ("192.0.2.2/24",))),
                         (Route(4, 254, "unicast", "default", "eth0", "192.0.2.1"),))


def records(home: Home) -> list[dict[str, Any]]:
    return [json.loads(x) for x in home.ledger.read_bytes().splitlines()]


def kinds(home: Home) -> list[str]:
    return [r["kind"] for r in records(home)]


@pytest.fixture
def home(imported_home: Callable[..., Home]) -> Home:
    home = imported_home("tiny", "other")
    with LedgerWriter.open(home.ledger) as writer:
        set_value(home, writer, "engine.name", "fake")
    FakeModel.loads, FakeModel.unloads, FakeModel.generations, FakeModel.gate = [], [], 0, None
    FakeEngine.refusal = None
    return home


@pytest.fixture
def writer(home: Home) -> Iterator[LedgerWriter]:
    with LedgerWriter.open(home.ledger) as w:
        yield w


def infer(app: Appliance, prompt: str = "one two three", model: str = "tiny", **kw: Any) -> list[str | Done]:
    return list(app.infer(model, prompt, Params(**kw), "uid:1000"))


def test_an_inference_is_recorded_from_start_to_stop(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    out = infer(app)
    app.stop()
    assert "".join(p for p in out if isinstance(p, str)) == "one two three "
    tail = records(home)[-6:]
    assert [r["kind"] for r in tail] == ["engine.start", "model.load", "inference.begin", "inference.end",
                                         "model.unload", "engine.stop"]
    start, load, begin, end = (r["data"] for r in tail[:4])
    assert start["airgap"] == "isolated" and start["namespace"] is True and start["engine"] == "fake"
    assert load["hash_verified"] is True and load["n_ctx"] == 2048 and load["manifest"].startswith("sha3-256:")
    assert begin["client"] == "uid:1000" and begin["airgap"] == "isolated" and "prompt" not in begin
    assert begin["prompt_sha3_256"].startswith("sha3-256:") and begin["params"]["num_predict"] == 128
    assert end["id"] == begin["id"] and end["done_reason"] == "stop" and end["completion_tokens"] == 3
    assert "output" not in end and end["output_sha3_256"].startswith("sha3-256:")
    assert verify_file(home.ledger).status == "intact"


def test_plaintext_content_policy_records_prompt_and_output(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "inference.record_content", "plaintext")
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app, "hello there")
    begin, end = records(home)[-2:]
    assert begin["data"]["prompt"] == "hello there" and end["data"]["output"] == "hello there "


def test_refuses_to_start_on_a_reachable_network_and_records_the_evidence(home: Home, writer: LedgerWriter) -> None:
    with pytest.raises(EngineRefused, match=r"interface eth0 is up with 192\.0\.2\.2/24"):
        Appliance.start(home, writer, state=CONNECTED)
    refused = records(home)[-1]
    assert refused["kind"] == "engine.refused" and refused["data"]["reason"] == "network reachable"
    assert refused["data"]["airgap"]["routes"] == ["IPv4 unicast default via 192.0.2.1 dev eth0 (table 254)"]


def test_warn_mode_starts_and_every_record_says_so(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "airgap.mode", "warn")
    app = Appliance.start(home, writer, state=CONNECTED)
    infer(app)
    start = next(r for r in reversed(records(home)) if r["kind"] == "engine.start")
    begin, end = records(home)[-2:]
    assert start["data"]["airgap"] == begin["data"]["airgap"] == end["data"]["airgap"] == "warn: network reachable"


def test_a_breach_while_serving_refuses_inference_until_restored(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    app.observe(CONNECTED)
    with pytest.raises(AirGapBreached, match="eth0"):
        infer(app)
    assert FakeModel.generations == 0
    app.observe(ISOLATED)
    infer(app)
    assert [k for k in kinds(home) if k.startswith("airgap.")] == ["airgap.breach", "airgap.restored"]


def test_an_edit_made_around_the_appliance_is_drift_and_refuses_until_accepted(home: Home,
                                                                             writer: LedgerWriter) -> None:
    home.config.write_text(home.config.read_text() + '\n[airgap]\nmode = "warn"\n')
    with pytest.raises(EngineRefused, match="changed outside anticloud"):
        Appliance.start(home, writer, state=CONNECTED)
    assert kinds(home)[-2:] == ["config.drift", "engine.refused"]
    record_accepted(home, writer, "config.accept")
    Appliance.start(home, writer, state=CONNECTED)  # accepted: warn mode is now a recorded choice
    assert kinds(home)[-1] == "engine.start"


def test_config_changes_are_recorded_with_old_new_and_digest(home: Home, writer: LedgerWriter) -> None:
    _, _, config = set_value(home, writer, "models.tiny.n_ctx", "512")
    change = records(home)[-1]
    assert change["kind"] == "config.change"
    assert (change["data"]["key"], change["data"]["old"], change["data"]["new"]) == ("models.tiny.n_ctx", 2048, 512)
    assert change["data"]["digest"] == config.digest() == load_config(home).digest()
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app)
    assert FakeModel.loads[-1].n_ctx == 512


def test_begin_that_cannot_be_recorded_means_no_inference(home: Home, writer: LedgerWriter,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app)  # loads the model
    before = FakeModel.generations
    real = writer.append_derived  # the begin is built under the ledger's lock, from the state in force

    def refuse_begin(kind: str, build: Any) -> Any:
        if kind == "inference.begin":
            raise LedgerWriteError(home.ledger, "cannot append: No space left on device")
        return real(kind, build)

    monkeypatch.setattr(writer, "append_derived", refuse_begin)
    with pytest.raises(LedgerWriteError):
        infer(app)
    assert FakeModel.generations == before, "not one token may be computed without its begin record"


def test_a_crash_mid_inference_is_closed_as_interrupted_at_the_next_start(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    stream = app.infer("tiny", "one two three", Params(), "uid:1000")
    next(stream)  # begin is recorded and a token produced; then the process "dies"
    begin = records(home)[-1]
    assert begin["kind"] == "inference.begin"
    Appliance.start(home, writer, state=ISOLATED)
    interrupted = next(r for r in records(home) if r["kind"] == "inference.interrupted")
    assert interrupted["data"]["id"] == begin["data"]["id"] and interrupted["data"]["begin_seq"] == begin["seq"]
    Appliance.start(home, writer, state=ISOLATED)
    assert kinds(home).count("inference.interrupted") == 1


def test_a_client_that_goes_away_ends_the_generation_and_is_recorded(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    stream = app.infer("tiny", "one two three four five", Params(), "uid:1000")
    next(stream)
    stream.close()
    end = records(home)[-1]
    assert end["kind"] == "inference.end" and end["data"]["done_reason"] == "client_disconnected"


def test_a_cancel_is_recorded_as_the_reason_its_caller_gives(home: Home, writer: LedgerWriter) -> None:
    """The terminal's Ctrl-C is the operator's, not a client's disconnect: `interrupted`, whether it
    arrives as the cancel the CLI sets or as a KeyboardInterrupt in the middle of the generation."""
    app = Appliance.start(home, writer, state=ISOLATED)
    stop = threading.Event()
    stream = app.infer("tiny", "one two three four", Params(), "uid:1000", stop.is_set, cancel_reason="interrupted")
    assert next(stream) == "one "
    stop.set()
    assert list(stream) == []  # it stopped at the next token
    assert [records(home)[-1]["kind"], records(home)[-1]["data"]["done_reason"]] == ["inference.end", "interrupted"]
    stream = app.infer("tiny", "one two three four", Params(), "uid:1000")
    next(stream)
    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)
    assert records(home)[-1]["data"]["done_reason"] == "interrupted"


def test_one_generation_at_a_time_with_a_bounded_queue(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "engine.queue_size", "1")
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app)  # load it first
    FakeModel.gate = threading.Event()
    first = threading.Thread(target=infer, args=(app,))
    first.start()
    poll(lambda: FakeModel.generations == 2, 10, "the first generation to begin")
    second = threading.Thread(target=infer, args=(app,))
    second.start()
    poll(lambda: app.pool.status()[0]["waiting"], 10, "the second request to queue behind the first")
    with pytest.raises(Busy, match="busy"):
        infer(app)
    FakeModel.gate.set()
    join(first, 10, "the first generation to finish")
    join(second, 10, "the queued generation to finish")
    assert FakeModel.generations == 3


def test_keep_alive_and_lru_eviction_are_recorded(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app, model="tiny")
    infer(app, model="other")  # max_loaded 1: tiny is evicted
    assert FakeModel.unloads == ["tiny"]
    app.pool.keep_alive = 0
    app.pool.sweep()
    unloads = [r["data"] for r in records(home) if r["kind"] == "model.unload"]
    assert [(u["name"], u["reason"]) for u in unloads] == [("tiny", "evicted"), ("other", "keep_alive")]


def test_the_engine_is_chosen_by_configuration(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "engine.name", "nonesuch")
    with pytest.raises(Exception, match="no engine named 'nonesuch'"):
        Appliance.start(home, writer, state=ISOLATED)


def test_llama_cpp_is_a_plugin_like_any_other() -> None:
    from importlib.metadata import entry_points

    from anticloud import engines
    from anticloud.engines.llama import LlamaEngine

    (point,) = [ep for ep in entry_points(group=engines.GROUP) if ep.name == "llama_cpp"]
    assert point.load() is LlamaEngine
    assert "llama_cpp" in engines.available() and "fake" in engines.available()


def test_every_record_kind_verifies(home: Home, writer: LedgerWriter, tmp_path: Path) -> None:
    test_a_breach_while_serving_refuses_inference_until_restored(home, writer)
    test_a_crash_mid_inference_is_closed_as_interrupted_at_the_next_start(home, writer)
    verdict = verify_file(home.ledger)
    assert verdict.status == "intact"
    assert {"config.init", "config.change", "trust.add", "model.import", "engine.start", "model.load",
            "inference.begin", "inference.end", "inference.interrupted", "airgap.breach",
            "airgap.restored"} <= set(kinds(home))


def test_the_end_record_is_durable_before_the_client_hears_the_generation_is_complete(
        home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    for piece in app.infer("tiny", "one two", Params(), "uid:1000"):
        if isinstance(piece, Done):
            assert kinds(home)[-1] == "inference.end", "a kill right now must not lose the end record"


def test_a_load_the_engine_refuses_is_recorded_with_its_evidence(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    sealed_before = _sealed_copies()
    FakeEngine.refusal = "the chat templates llama.cpp read differ from the pre-parse's"
    with pytest.raises(LoadRefused, match="differ from the pre-parse"):
        infer(app)
    refused = records(home)[-1]
    assert refused["kind"] == "model.load.refused"
    assert refused["data"]["model"] == "tiny" and refused["data"]["engine"] == "fake"
    assert refused["data"]["reason"] == FakeEngine.refusal and refused["data"]["manifest"].startswith("sha3-256:")
    assert _sealed_copies() == sealed_before, "the refused model's sealed copy is closed"


def _sealed_copies() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "memfd:anticloud" in os.readlink(f"/proc/self/fd/{fd}"):
                found.add(fd)
        except OSError:
            continue
    return found


def test_a_stop_ends_the_open_inferences_before_it_records_the_engine_stop(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    stream = app.infer("tiny", "one two three four five", Params(), "uid:1000")
    next(stream)  # begun and streaming
    stopper = threading.Thread(target=app.stop)
    stopper.start()
    poll(lambda: app.inferences.stopping, 10, "the stop to begin")
    with pytest.raises(Busy, match="stopping"):
        infer(app)
    rest = list(stream)  # the generation sees the stop within one token
    stopper.join(10)
    assert not stopper.is_alive() and not any(isinstance(p, str) for p in rest)
    tail = records(home)[-3:]
    assert [r["kind"] for r in tail] == ["inference.end", "model.unload", "engine.stop"]
    assert tail[0]["data"]["done_reason"] == "engine_stopped"
    Appliance.start(home, writer, state=ISOLATED)
    assert "inference.interrupted" not in kinds(home)


def test_an_inference_that_does_not_end_in_time_is_interrupted_by_the_stop_and_never_ended(
        home: Home, writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anticloud.runtime.STOP_GRACE", 0.2)
    app = Appliance.start(home, writer, state=ISOLATED)
    FakeModel.gate = threading.Event()  # the generation hangs mid-stream, deaf to the stop
    stuck = threading.Thread(target=infer, args=(app,))
    stuck.start()
    poll(lambda: FakeModel.generations == 1 and kinds(home)[-1] == "inference.begin", 10, "the begin")
    begin = records(home)[-1]
    app.stop()
    interrupted = next(r for r in records(home) if r["kind"] == "inference.interrupted")
    assert interrupted["data"] == {"id": begin["data"]["id"], "begin_seq": begin["seq"],
                                   "reason": "the engine stopped before it ended", "actor": local()}
    FakeModel.gate.set()
    stuck.join(10)
    assert "inference.end" not in kinds(home)[-4:], "an interrupted inference must not end as well"
    assert kinds(home)[-1] == "engine.stop"
    assert verify_file(home.ledger).status == "intact"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_a_ledger_replaced_under_a_running_server_is_refused_and_only_its_own_chain_resumes(
        gemma_path: Path, tmp_path: Path) -> None:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    home = operator_imports_real_model(tmp_path, gemma_path)
    sock = home.root / "anticloud.sock"
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(home.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    acked: list[str] = []
    try:
        wait_for_socket(sock, 30, server)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client:
            def generate() -> httpx.Response:
                reply = client.post("http://appliance/api/generate",
                                    json={"prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
                if reply.status_code == 200:
                    acked.append(reply.headers["x-anticloud-inference"])
                return reply

            assert generate().status_code == 200
            held = tmp_path / "held.jsonl"
            os.link(home.ledger, held)  # the inode the server holds
            at_replacement = held.read_bytes()
            with LedgerWriter.create(tmp_path / "foreign.jsonl", genesis_for(Ed25519PrivateKey.generate())):
                pass
            foreign = (tmp_path / "foreign.jsonl").read_bytes()
            os.rename(tmp_path / "foreign.jsonl", home.ledger)
            refused = generate()
            assert refused.status_code == 503 and "replaced or removed while open" in refused.json()["error"]
            again = generate()  # the server tries to reopen the path, and finds another chain there
            assert again.status_code == 503 and "another ledger" in again.json()["error"]
            assert home.ledger.read_bytes() == foreign and held.read_bytes() == at_replacement

            # The same chain put back as a copy, which a CLI command extends: the server continues it.
            shutil.copyfile(held, tmp_path / "copy.jsonl")
            os.rename(tmp_path / "copy.jsonl", home.ledger)
            cli = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "tokens", "create",
                                  "auditor"], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0, cli.stderr
            assert generate().status_code == 200
        server.terminate()
        assert server.wait(60) == 0
    finally:
        server.kill()
    assert held.read_bytes() == at_replacement, "nothing was written into the file the path no longer named"
    assert verify_file(home.ledger).status == "intact"
    final = records(home)
    ended = {r["data"]["id"] for r in final if r["kind"] == "inference.end"}
    assert len(acked) == 2 and set(acked) <= ended, "every acknowledged inference is in the file at the path"
    kinds_after = [r["kind"] for r in final[len(at_replacement.splitlines()):]]
    # The server records the outage once it is back on its chain: at its next watch check or its
    # next request, whichever comes first, so before or after the CLI's record.
    assert set(kinds_after[:2]) == {"token.create", "ledger.outage"} and kinds_after[-1] == "engine.stop"
    outage = next(r["data"] for r in final if r["kind"] == "ledger.outage")
    assert outage["refused"] == 2 and "replaced or removed while open" in outage["error"]
    assert "another ledger" in outage["last_error"]


# -- starting reads only the recent ledger -------------------------------------------------------------


def _accepted_before_an_upgrade(home: Home, writer: LedgerWriter, change: Callable[[dict[str, Any]], None]) -> None:
    """What an older anticloud accepted: today's configuration as it stood before ``change``."""
    from ledger import canonical_bytes, sha3_tag
    doc = json.loads(json.dumps(load_config(home).doc))
    change(doc)
    writer.append("config.accept", {"digest": sha3_tag(canonical_bytes(doc)), "config": doc})
    writer.append("engine.stop", {"reason": "stopped", "accepted_config": sha3_tag(canonical_bytes(doc))})


def test_an_upgrade_that_adds_settings_at_their_defaults_is_recorded_not_refused(home: Home,
                                                                                writer: LedgerWriter) -> None:
    _accepted_before_an_upgrade(home, writer, lambda doc: doc.pop("ledger"))
    Appliance.start(home, writer, state=ISOLATED)
    upgrade = next(r for r in reversed(records(home)) if r["kind"] == "config.upgrade")
    assert upgrade["data"]["added"] == ["ledger.seal_interval"]
    assert kinds(home)[-1] == "engine.start" and "config.drift" not in kinds(home)
    Appliance.start(home, writer, state=ISOLATED)  # accepted now: no second upgrade
    assert kinds(home).count("config.upgrade") == 1


def test_an_upgrade_cannot_hide_a_changed_value(home: Home, writer: LedgerWriter) -> None:
    def older(doc: dict[str, Any]) -> None:
        doc.pop("ledger")
        doc["airgap"]["mode"] = "warn"  # the accepted value differs from today's: that is not an upgrade

    _accepted_before_an_upgrade(home, writer, older)
    with pytest.raises(EngineRefused, match="changed outside anticloud"):
        Appliance.start(home, writer, state=ISOLATED)
    assert kinds(home)[-2:] == ["config.drift", "engine.refused"]


def test_drift_refuses_the_start_in_warn_mode_too(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "airgap.mode", "warn")  # warn mode, accepted
    home.config.write_text(home.config.read_text() + '\n[api]\nmax_body_bytes = 12345\n')
    with pytest.raises(EngineRefused, match="changed outside anticloud"):
        Appliance.start(home, writer, state=CONNECTED)
    assert kinds(home)[-2:] == ["config.drift", "engine.refused"]
    assert "engine.start" not in kinds(home)


def _crash_mid_inference(home: Home, writer: LedgerWriter, n: int = 1) -> tuple[list[dict[str, Any]], list[Any]]:
    """Start, leave ``n`` inferences begun and not ended (the process "dies"): their begins, and the
    generators, which the caller keeps alive so that they record no end while it runs."""
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app, model="tiny")
    streams = []
    for _ in range(n):
        stream = app.infer("tiny", "one two three", Params(), "uid:1000")
        next(stream)
        streams.append(stream)
        app.pool.close()  # lets the next one in
    return [r for r in records(home) if r["kind"] == "inference.begin"][-n:], streams


def test_begins_left_open_are_closed_once_in_order_and_never_again(home: Home, writer: LedgerWriter) -> None:
    begins, _dead = _crash_mid_inference(home, writer, 2)
    set_value(home, writer, "engine.keep_alive", "300")  # another process's records after the crash
    Appliance.start(home, writer, state=ISOLATED).stop()  # recovers, then stops cleanly after the recovery
    interrupted = [r["data"] for r in records(home) if r["kind"] == "inference.interrupted"]
    assert [(i["id"], i["begin_seq"]) for i in interrupted] == [(b["data"]["id"], b["seq"]) for b in begins]
    Appliance.start(home, writer, state=ISOLATED)
    assert kinds(home).count("inference.interrupted") == 2
    assert verify_file(home.ledger).status == "intact"


def test_a_crash_during_the_recovery_leaves_the_rest_for_the_next_start(home: Home, writer: LedgerWriter) -> None:
    (first, second), _dead = _crash_mid_inference(home, writer, 2)
    # The recovering start closed the first begin, then died before closing the second or recording its start.
    writer.append("inference.interrupted", {"id": first["data"]["id"], "begin_seq": first["seq"],
                                            "reason": "the engine stopped before it ended", "actor": local()})
    Appliance.start(home, writer, state=ISOLATED)
    interrupted = [r["data"]["id"] for r in records(home) if r["kind"] == "inference.interrupted"]
    assert interrupted == [first["data"]["id"], second["data"]["id"]]


def test_starting_reads_nothing_before_the_last_clean_stop(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    for _ in range(5):
        infer(app)
    app.stop()
    break_before_the_stop(home, b'"kind":"inference.')
    Appliance.start(home, writer, state=ISOLATED)
    assert kinds_of_tail(home, 1) == ["engine.start"]


def break_before_the_stop(home: Home, marker: bytes) -> None:
    """Break every record holding ``marker`` before the final engine.stop, keeping the file's
    length: a start that read one would fail to parse it."""
    lines = home.ledger.read_bytes().split(b"\n")
    broken = [b"X" + line[1:] if marker in line else line for line in lines[:-2]]
    assert broken != lines[:-2]
    home.ledger.write_bytes(b"\n".join(broken + lines[-2:]))


def kinds_of_tail(home: Home, n: int) -> list[str]:
    return [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()[-n:]]


def test_an_acceptance_recorded_by_another_process_while_serving_is_known_at_the_next_start(
        home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    with LedgerWriter.open(home.ledger) as cli:
        set_value(home, cli, "engine.keep_alive", "42")
    app.stop()  # without a request in between: the stop itself takes the change over
    change = next(r for r in reversed(records(home)) if r["kind"] == "config.change")
    assert records(home)[-1]["data"]["accepted_config"] == change["data"]["digest"]
    Appliance.start(home, writer, state=ISOLATED)  # no drift: the change was accepted
    assert kinds(home)[-1] == "engine.start"


def test_a_configuration_restored_to_an_older_accepted_one_is_drift(home: Home, writer: LedgerWriter) -> None:
    """Only the newest acceptance counts, and only the chain says which it is."""
    older = home.config.read_text()
    set_value(home, writer, "engine.keep_alive", "42")
    Appliance.start(home, writer, state=ISOLATED).stop()
    home.config.write_text(older)  # accepted once, but no longer
    with pytest.raises(EngineRefused, match="changed outside anticloud"):
        Appliance.start(home, writer, state=ISOLATED)
    assert kinds(home)[-2:] == ["config.drift", "engine.refused"]
    assert not home.ledger.with_name("ledger.jsonl.accepted").exists(), "nothing beside the ledger is trusted"


def test_the_drift_check_reads_back_only_to_the_last_engine_record(home: Home, writer: LedgerWriter) -> None:
    set_value(home, writer, "engine.keep_alive", "42")
    Appliance.start(home, writer, state=ISOLATED).stop()
    break_before_the_stop(home, b'"kind":"config.')
    Appliance.start(home, writer, state=ISOLATED)
    assert kinds_of_tail(home, 1) == ["engine.start"]


def test_engine_records_from_before_the_accepted_digest_are_passed_over(home: Home, writer: LedgerWriter) -> None:
    """A ledger written by an earlier version: its engine.stop states no accepted configuration."""
    set_value(home, writer, "engine.keep_alive", "42")
    writer.append("engine.start", {"config": "sha3-256:" + "00" * 32, "pid": 1})  # a drifted start in warn mode
    writer.append("engine.stop", {"reason": "stopped", "pid": 1})
    Appliance.start(home, writer, state=ISOLATED)  # found further back: the config.change
    assert kinds(home)[-1] == "engine.start"


# -- the air-gap watch under faults ----------------------------------------------------------------

WATCH_SECONDS = 30.0  # the watch checks every 0.02 s here; this is only a loaded machine's margin


class Network:
    """A read_state for the watch: the state the test sets, or the error it sets."""

    def __init__(self) -> None:
        self.state, self.reads = ISOLATED, 0
        self.error: Exception | None = None
        self.gate: threading.Event | None = None

    def __call__(self) -> NetworkState:
        self.reads += 1
        if self.gate is not None and not self.gate.wait(WATCH_SECONDS):
            raise AssertionError("the test never let the held network read return")
        if self.error is not None:
            raise self.error
        return self.state

    def wait_reads(self, more: int) -> None:
        until = self.reads + more
        poll(lambda: self.reads >= until, WATCH_SECONDS, f"the watch to read the network {more} more times")


def refusal(app: Appliance) -> str | None:
    try:
        infer(app)
    except AirGapBreached as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_a_check_that_fails_refuses_inference_until_one_succeeds_and_the_watch_lives_on(
        home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    network = Network()
    thread = app.watch(0.02, read_state=network)
    network.error = OSError(24, "Too many open files")
    network.wait_reads(5)
    assert refusal(app) == ("AirGapUnobserved: refusing inference: the network cannot be checked: "
                            "OSError: [Errno 24] Too many open files")
    assert app.status()["airgap"] == "unobserved"
    network.error = None
    poll(lambda: refusal(app) is None, WATCH_SECONDS, "a successful check to allow inference again")
    network.state = CONNECTED  # and the watch still sees a network that comes up
    poll(lambda: refusal(app) is not None and "eth0" in str(refusal(app)), WATCH_SECONDS,
         "the watch to see the network that came up")
    assert thread.is_alive()
    app.stop()
    gap = [r["data"] for r in records(home) if r["kind"].startswith("airgap.")]
    assert [d.get("reason") for d in gap][:1] == ["OSError: [Errno 24] Too many open files"]
    assert [r["kind"] for r in records(home) if r["kind"].startswith("airgap.")] == [
        "airgap.unobserved", "airgap.observed", "airgap.breach"], "one record per span, not one per check"
    assert gap[1]["failed_checks"] >= 5


def test_an_unload_that_cannot_be_recorded_stops_neither_the_watch_nor_the_sweep(
        home: Home, writer: LedgerWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    infer(app)
    real, refused = writer.append, list[str]()

    def full_disk(kind: str, data: dict[str, Any]) -> Any:
        if kind == "model.unload" and not refused:
            refused.append(kind)
            raise LedgerWriteError(home.ledger, "cannot append: No space left on device")
        return real(kind, data)

    monkeypatch.setattr(writer, "append", full_disk)
    app.pool.keep_alive = 0
    network = Network()
    thread = app.watch(0.02, read_state=network)
    poll(lambda: refused, WATCH_SECONDS, "the sweep to try to unload")
    network.state = CONNECTED
    poll(lambda: refusal(app) is not None, WATCH_SECONDS,
         "the watch, alive after the failed unload, to refuse on a network")
    network.state = ISOLATED
    poll(lambda: refusal(app) is None, WATCH_SECONDS,
         "the watch, alive after the failed unload, to allow inference again")
    poll(lambda: "model.unload" in kinds(home) and app.pool.status() == [], WATCH_SECONDS,
         "the sweep, alive after the failed unload, to unload and record it")
    assert thread.is_alive()


def test_a_change_the_ledger_cannot_take_is_recorded_once_it_can(home: Home, writer: LedgerWriter,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    full = threading.Event()
    full.set()
    real = writer.append

    def append(kind: str, data: dict[str, Any]) -> Any:
        if full.is_set():
            raise LedgerWriteError(home.ledger, "cannot append: No space left on device")
        return real(kind, data)

    app.backlog.append = append
    network = Network()
    network.error = OSError("netlink")
    app.watch(0.02, read_state=network)
    network.wait_reads(5)
    assert refusal(app) is not None and "airgap.unobserved" not in kinds(home)
    network.error = None
    network.state = CONNECTED
    network.wait_reads(3)
    full.clear()
    poll(lambda: "airgap.breach" in kinds(home), WATCH_SECONDS, "the held records to be written")
    assert [k for k in kinds(home) if k.startswith(("airgap.", "ledger.outage"))] == [
        "ledger.outage", "airgap.unobserved", "airgap.observed", "airgap.breach"], "the outage first"
    outage = next(r["data"] for r in records(home) if r["kind"] == "ledger.outage")
    assert "No space left on device" in outage["error"] and outage["failures"] >= 1 and outage["refused"] == 0
    assert outage["from"] <= outage["until"]
    assert refusal(app) is not None and "eth0" in str(refusal(app))


def test_a_watch_that_is_stuck_goes_stale_and_inference_is_refused(home: Home, writer: LedgerWriter) -> None:
    app = Appliance.start(home, writer, state=ISOLATED)
    network = Network()
    network.gate = threading.Event()  # the next read never returns, until the test lets it
    app.watch(0.02, read_state=network)
    poll(lambda: refusal(app) is not None, WATCH_SECONDS, "a stuck watch to refuse inference")
    assert "no successful check of the network for over 2 s" in str(refusal(app))
    assert kinds(home).count("airgap.unobserved") == 1
    network.gate.set()
    poll(lambda: refusal(app) is None, WATCH_SECONDS, "the watch, no longer stuck, to allow inference again")
    assert kinds(home).count("airgap.observed") == 1


class SteppedClock:
    """The real clocks, with the wall clock stepped by the test (as an operator or a daemon would)."""

    def __init__(self) -> None:
        self.offset, self.reads = 0.0, 0

    def __call__(self) -> clock.Reading:
        self.reads += 1
        real = clock.read()
        return clock.Reading(real.wall + self.offset, real.steady)

    def wait_reads(self, more: int) -> None:
        until = self.reads + more
        poll(lambda: self.reads >= until, WATCH_SECONDS, f"the clock watch to read the clocks {more} more times")


def test_a_clock_jump_while_serving_is_recorded_under_the_threshold_in_force(home: Home, writer: LedgerWriter) -> None:
    stepped = SteppedClock()
    app = Appliance.start(home, writer, state=ISOLATED, clock_reader=stepped)
    start = next(r["data"] for r in records(home) if r["kind"] == "engine.start")
    assert start["clock"]["timezone"] == "UTC" and start["clock"]["steady_clock"] == "CLOCK_BOOTTIME"
    app.watch(0.02, read_state=Network())
    stepped.wait_reads(5)
    assert "clock.jump" not in kinds(home), "clocks that keep pace are no jump"
    stepped.offset = -3600.0
    poll(lambda: "clock.jump" in kinds(home), WATCH_SECONDS, "the watch to record the clock stepped back")
    set_value(home, writer, "clock.jump_threshold", "2h")
    app.refresh()
    stepped.offset += 3600.0  # an hour forward again: under the new threshold
    stepped.wait_reads(5)
    app.stop()
    jumps = [r for r in records(home) if r["kind"] == "clock.jump"]
    assert len(jumps) == 1
    data = jumps[0]["data"]
    assert abs(data["delta_ms"] + 3_600_000) < 1000 and data["threshold_ms"] == 2000 and data["to"] < data["from"]
    assert verify_file(home.ledger).status == "intact"

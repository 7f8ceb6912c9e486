"""The operator's lines: one per event to act on, none for routine records, never any content."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from anticloud import journal
from ledger import LedgerWriter, Record


def record(kind: str, data: dict[str, object]) -> Record:
    return Record(v=1, seq=7, ts="2026-12-03T10:00:00.000000Z", kind=kind, data=data, prev="0" * 64, hash="1" * 64)


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("model.load.refused", {"model": "m", "reason": "its publisher key was revoked"},
     "refused to load m: its publisher key was revoked"),
    ("airgap.breach", {"airgap": {"interfaces": [{"name": "wlan0"}], "routes": []}, "mode": "enforce"},
     "AIR GAP BREACHED: a network is reachable (wlan0 up); inferences are refused"),
    ("request.rejected", {"identity": "uid:1000", "path": "/api/chat", "status": 401, "reason": "no",
                          "count": 12, "from": "t0"}, "refused /api/chat (401) for uid:1000 x12 since t0: no"),
    ("inference.end", {"id": "ab", "done_reason": "error", "error": "llama.cpp failed"},
     "generation ab failed: llama.cpp failed"),
    ("config.change", {"key": "airgap.mode", "old": "enforce", "new": "warn"},
     "configuration changed: airgap.mode enforce -> warn"),
])
def test_events_to_act_on_make_one_line(kind: str, data: dict[str, object], expected: str) -> None:
    assert journal.line(record(kind, data)) == expected


def test_routine_records_make_none_and_content_never_appears() -> None:
    secret = "the patient's diagnosis"
    assert journal.line(record("inference.begin", {"prompt": secret, "client": "uid:1"})) is None
    assert journal.line(record("inference.end", {"done_reason": "stop", "output": secret})) is None
    assert journal.line(record("ledger.seal", {"epoch": 3})) is None
    # A refused start ends the command, whose error says it once, with the evidence.
    assert journal.line(record("engine.refused", {"reason": "network reachable"})) is None


def test_text_others_control_cannot_forge_a_line_or_drive_the_terminal() -> None:
    said = journal.line(record("request.rejected", {"identity": "uid:1", "path": "/x\nanticloud: engine stopped",
                                                    "status": 404, "reason": "\x1b[2J" + "y" * 500}))
    assert said is not None and "\n" not in said and "\x1b" not in said and len(said) < 500


def test_attached_to_a_writer_it_prints_as_records_become_durable(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.conftest import genesis_for

    stream = io.StringIO()
    with LedgerWriter.create(tmp_path / "l.jsonl", genesis_for(Ed25519PrivateKey.generate())) as writer:
        journal.attach(writer, stream)
        writer.append("model.unload", {"name": "m", "reason": "idle"})
        writer.append("inference.begin", {"client": "uid:1"})
    assert stream.getvalue() == "anticloud: unloaded m (idle)\n"

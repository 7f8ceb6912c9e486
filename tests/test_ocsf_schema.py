"""The vendored OCSF 1.8.0 schema: rebuilt from its vendored sources, it is the committed file;
it holds only what it needs; and it refuses what API Activity forbids (so passing it means
something)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from anticloud.siem import Correlator, to_ocsf
from ledger.record import GENESIS_PREV, seal
from tests.siem_grammar import OCSF_SCHEMA, ocsf_errors
from tools.ocsf_jsonschema import class_schema

VENDORED = Path(__file__).parent / "ocsf"
SOURCES = VENDORED / "schema-1.8.0"
CLASS = "events/application/api_activity.json"


def test_the_schema_is_rebuilt_byte_for_byte_from_the_vendored_sources() -> None:
    schema, needed = class_schema(SOURCES, CLASS, ["ai_operation"])
    assert json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n" == OCSF_SCHEMA.read_text()
    vendored = {p for p in SOURCES.rglob("*.json")}
    assert vendored == needed, "exactly the files the class needs are vendored"
    assert json.loads((SOURCES / "version.json").read_text()) == {"version": "1.8.0"}
    assert (SOURCES / "LICENSE").read_text().lstrip().startswith("Apache License")
    size = sum(p.stat().st_size for p in VENDORED.rglob("*") if p.is_file())
    assert size < 2 << 20, f"{size} bytes vendored"
    assert "6fa6499a0f8c9f449d342816e90e5f687c224b0a" in (VENDORED / "README.md").read_text()


def test_the_schema_is_api_activity_with_its_ai_fields() -> None:
    schema = json.loads(OCSF_SCHEMA.read_text())
    assert schema["$id"] == "https://schema.ocsf.io/schema/classes/api_activity"
    assert schema["properties"]["class_uid"]["const"] == 6003
    assert schema["properties"]["category_uid"]["const"] == 6
    assert schema["properties"]["activity_id"]["enum"] == [0, 1, 2, 3, 4, 99]
    assert {"actor", "api", "src_endpoint", "metadata", "time", "severity_id", "type_uid"} <= set(schema["required"])
    assert {"ai_model", "message_context"} <= set(schema["properties"])
    assert "cloud" not in schema["properties"], "profiles not asked for are filtered out, as the server does"
    assert schema["$defs"]["ai_model"]["required"] == ["ai_provider"]


def good_event() -> dict[str, Any]:
    rec = seal(1, "inference.begin", {"id": "ab" * 8, "model": "tiny", "actor": {"token": "alice"}},
               GENESIS_PREV, "2026-01-15T09:00:01.250000Z")[0]
    return to_ocsf(Correlator().event(rec))


@pytest.mark.parametrize("spoil", [
    lambda e: e.pop("actor"),
    lambda e: e.update(class_uid=6002),
    lambda e: e.update(severity_id=7),
    lambda e: e.update(activity_id=5),
    lambda e: e.update(time="2026-01-15T09:00:01Z"),
    lambda e: e.update(surprise=1),
    lambda e: e["metadata"].pop("version"),
    lambda e: e["api"].pop("operation"),
    lambda e: e["ai_model"].pop("ai_provider"),
    lambda e: e["actor"].update(user={}),
    lambda e: e.update(src_endpoint={}),
])
def test_the_schema_refuses_what_api_activity_forbids(spoil: Any) -> None:
    event = good_event()
    assert ocsf_errors(event) == []
    spoiled = copy.deepcopy(event)
    spoil(spoiled)
    assert ocsf_errors(spoiled) != []

"""The structured-output rules (anticloud.structured), pure: which schemas become a grammar, which
are refused and with what named, what the grammar says, how an output is judged and hashed."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from anticloud.errors import SchemaRefused
from anticloud.structured import MAX_PROPERTIES, MAX_REPEAT, Verdict, any_json_object, from_schema, schema_hash
from ledger import canonical_bytes, sha3_tag


class Ward(StrEnum):
    surgery = "surgery"
    oncology = "oncology"


class Contact(BaseModel):
    kind: Literal["phone", "pager"]
    number: str = Field(max_length=20)


class Nurse(BaseModel):
    """What pydantic (and so LangChain and the OpenAI SDK) sends: $defs, $ref, anyOf, annotations."""

    name: str = Field(description="the nurse's name")
    age: int
    ward: Ward
    skills: list[str] = Field(min_length=1, max_length=3)
    contacts: list[Contact] = []
    nickname: str | None = None
    shift_hours: float = 7.5
    started: str = Field(json_schema_extra={"format": "date"})


PERSON = {"type": "object", "required": ["name", "age", "role", "tags"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "role": {"enum": ["doctor", "nurse", "patient"]},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}


def test_a_pydantic_models_schema_is_accepted_and_its_grammar_names_every_field() -> None:
    schema = Nurse.model_json_schema()
    assert "$defs" in schema and "$ref" in json.dumps(schema), "the model exercises $ref"
    output = from_schema(schema, "format")
    rules = dict(line.split(" ::= ", 1) for line in output.grammar.splitlines())
    assert rules["ward"] == r'"\"surgery\"" | "\"oncology\""', "the $ref'd enum is inlined as its literals"
    assert rules["root"].startswith(r'"{" space name-kv "," space age-kv "," space ward-kv "," space skills-kv')
    assert "date" in rules and "nickname" in rules and rules["nickname"] == "string | null"
    assert output.record() == {"kind": "json_schema", "schema_sha3_256": schema_hash(schema)}


def test_the_string_character_excludes_raw_control_characters_as_json_does() -> None:
    grammar = from_schema({"type": "string"}, "format").grammar
    char = next(line for line in grammar.splitlines() if line.startswith("char ::= "))
    assert r"\x00-\x1F" in char, "a raw newline inside a JSON string would not parse"


def _nested_items(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "boolean"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"type": "integer", "minimum": 0}, '"minimum" at / cannot be enforced'),
    ({"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}}, '"multipleOf" at /properties/n'),
    ({"type": "string", "pattern": "^a+$"}, '"pattern"'),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, '"oneOf"'),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, '"uniqueItems"'),
    ({"type": "array", "contains": {"type": "string"}}, '"contains"'),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1}, '"minProperties"'),
    ({"type": "object", "patternProperties": {"^x": {}}}, '"patternProperties"'),
    ({"type": "object", "required": ["a"]}, '"required" at /'),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, '"required": b'),
    ({"type": ["string", "null"], "maxLength": 3}, '"maxLength"'),
    ({"anyOf": [{"type": "string"}], "type": "string"}, '"type"'),
    ({"type": "string", "format": "email"}, '"format": email'),
    ({"type": "integer", "format": "int32"}, '"format": int32'),
    ({"type": "string", "format": "date", "maxLength": 10}, '"maxLength"'),
    ({"minLength": 2}, '"minLength" without a "type"'),
    ({"type": "string", "maxLength": MAX_REPEAT + 1}, f'"maxLength" over {MAX_REPEAT}'),
    ({"type": "array", "maxItems": 2, "minItems": 3}, '"maxItems" below "minItems"'),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}}, '"items" beside'),
    ({"type": "array", "prefixItems": [{"type": "string"}], "minItems": 2}, "the length of"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, '"allOf"'),
    ({"not": {"type": "string"}}, '"not"'),
    ({"if": {"type": "string"}, "then": {"maxLength": 2}}, '"if"'),
    ({"$ref": "https://example.org/s.json"}, "only references inside the schema"),
    ({"$ref": "#anchor"}, "only references inside the schema"),
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
     "a recursive schema"),
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 2}, '"$ref" beside'),
    ({"enum": ['say "hi"']}, "a quote, backslash"),
    ({"const": "tab\there"}, "a quote, backslash"),
    ({"type": "object", "properties": {"a\\b": {"type": "string"}}}, "a quote, backslash"),
    ({"enum": ["\U0001f600"]}, "non-BMP"),
    ({"enum": []}, "no values"),
    ({"enum": [[{"$ref": False}]]}, 'a "$ref" member in a constant'),  # the converter reads it as a reference
    ({"const": {"$ref": "#/$defs/x"}}, 'a "$ref" member in a constant'),
    ({"type": "object", "properties": {"$ref": {"type": "string"}}}, 'a property named "$ref"'),
    ({"const": 1, "type": "string"}, "the constant 1"),
    ({"type": "object", "properties": {"": {"type": "string"}}}, 'a property named ""'),
    ({"type": "object", "properties": {"*": {"type": "string"}}, "additionalProperties": True}, 'named ""'),
    ({"type": "array", "items": False}, "the schema false"),
    ({"type": "strng"}, "not a valid JSON Schema"),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}, "only JSON Schema 2020-12"),
    ({"type": "string", "title": "\ud800"}, "lone surrogate"),  # as json.loads reads "\ud800": no UTF-8 for it
    # bounds on the work and the grammar: the converter is quadratic in optional properties
    ({"type": "object", "properties": {f"p{i}": {"type": "boolean"} for i in range(MAX_PROPERTIES + 1)}},
     f'"properties" with over {MAX_PROPERTIES} names'),
    ({"type": "array", "prefixItems": [{"type": "string", "maxLength": MAX_REPEAT}] * 70}, "add up to 66000"),
    (_nested_items(40), "more than 1000 subschemas or 32 levels"),
    ({"$defs": {"s": {"anyOf": [{"type": "string"}] * 40}, "t": {"anyOf": [{"$ref": "#/$defs/s"}] * 40}},
      "$ref": "#/$defs/t"}, "too large once its $refs are inlined"),
]


@pytest.mark.parametrize(("schema", "named"), REFUSED, ids=[json.dumps(s)[:60] for s, _ in REFUSED])
def test_what_the_grammar_would_not_enforce_is_refused_by_name(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(SchemaRefused) as refused:
        from_schema(schema, "format")
    message = str(refused.value)
    assert message.startswith("format: ") and named in message and "\n" not in message


ACCEPTED: list[dict[str, Any]] = [
    PERSON,
    {},  # any value
    {"type": "string", "maxLength": MAX_REPEAT, "minLength": 1},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    {"type": "array", "minItems": 1},  # items left open: any value each
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
    {"type": ["string", "null"]},
    {"enum": ["a", 1, None, {"k": [1, "é"]}], "type": ["string", "integer", "null", "object"]},
    {"allOf": [{"$ref": "#/$defs/x"}], "description": "one subschema alone", "$defs": {"x": {"type": "boolean"}}},
    {"type": "string", "format": "uuid"},
    {"type": "string", "format": "date-time"},
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "null"},
    {"type": "array", "uniqueItems": False, "items": {"type": "number"}},
]


@pytest.mark.parametrize("schema", ACCEPTED, ids=[json.dumps(s)[:60] for s in ACCEPTED])
def test_what_the_grammar_enforces_is_accepted(schema: dict[str, Any]) -> None:
    output = from_schema(schema, "format")
    assert output.grammar.count("root ::= ") == 1 and output.kind == "json_schema" and output.schema == schema


def test_the_output_is_judged_against_the_schema_with_formats_and_the_detail_kept_apart() -> None:
    output = from_schema(PERSON, "format")
    assert output.check('{"name": "Ann", "age": 34, "role": "nurse", "tags": ["a"]} ') == Verdict(True)
    cut = output.check('{"name": "Ann", "age": 3')  # what a generation cut off by num_predict leaves
    assert (cut.valid, cut.failed) == (False, "json")
    wrong = output.check('{"name": "Secret Ann", "age": 34, "role": "janitor", "tags": []}')
    assert (wrong.valid, wrong.failed) == (False, "enum") and "janitor" in (wrong.detail or "")
    assert wrong.to_json(with_detail=False) == {"valid": False, "failed": "enum"}, "no output without content"
    assert "janitor" in wrong.to_json(with_detail=True)["detail"]
    dated = from_schema({"type": "string", "format": "date"}, "format")
    assert dated.check('"2024-02-29"').valid and dated.check('"2023-02-31"').failed == "format"
    stamped = from_schema({"type": "string", "format": "date-time"}, "format")
    assert stamped.check('"2024-02-29T10:00:00Z"').valid and not stamped.check('"2023-02-31T10:00:00Z"').valid
    assert any_json_object().check('{"a": [1]}').valid and any_json_object().check("[1]").failed == "type"
    assert output.check('{"name": "Ann", "age": NaN, "role": "nurse", "tags": []}').failed == "json"


def test_a_schema_is_identified_by_the_hash_of_its_canonical_json_floats_as_text() -> None:
    assert schema_hash(PERSON) == sha3_tag(canonical_bytes(PERSON))
    assert schema_hash({"b": 1, "a": 2}) == schema_hash({"a": 2, "b": 1})
    with_float = {"type": "number", "default": 0.5, "examples": [2**60]}
    assert schema_hash(with_float) == sha3_tag(b'{"default":"0.5","examples":["1152921504606846976"],"type":"number"}')
    assert schema_hash(with_float) != schema_hash({"type": "number", "default": 0.25})


def test_openai_labels_are_recorded_beside_the_hash() -> None:
    output = from_schema(PERSON, "response_format.json_schema.schema", "person", True)
    assert output.record() == {"kind": "json_schema", "schema_sha3_256": schema_hash(PERSON), "name": "person",
                               "strict": True}
    assert any_json_object().record() == {"kind": "json"}


KEYWORDS = st.sampled_from(["type", "properties", "required", "items", "prefixItems", "enum", "const", "anyOf",
                            "oneOf", "allOf", "minLength", "maxLength", "minItems", "maxItems", "format",
                            "additionalProperties", "$ref", "minimum", "pattern", "title", "uniqueItems"])
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 1200) | st.text(max_size=4)
                      | st.sampled_from(["string", "object", "array", "integer", "date", "#/$defs/a", "#"]),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYWORDS | st.text(max_size=3),
                                                                                   inner, max_size=4),
                      max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYWORDS, VALUES, max_size=5), st.dictionaries(st.text(max_size=3), VALUES, max_size=2))
def test_any_schema_is_either_a_grammar_or_a_named_refusal_never_a_crash(schema: dict[str, Any],
                                                                       defs: dict[str, Any]) -> None:
    schema = {**schema, "$defs": {"a": defs}} if defs else schema
    try:
        output = from_schema(schema, "format")
    except SchemaRefused as refused:
        assert str(refused).startswith("format: ") and "\n" not in str(refused)
    else:
        assert "root ::= " in output.grammar

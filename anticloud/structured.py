"""Structured output: a JSON Schema (or "any JSON object") as a grammar for llama.cpp, or a refusal.

The grammar is built by llama-cpp-python's own converter (``llama_cpp.llama_grammar``), which
honours only part of JSON Schema and silently drops the rest. This module decides, before any
generation, whether a schema is inside that part, and checks the output against the schema after.

Invariants:

* A schema is accepted only if every constraining keyword in it is enforced by the grammar.
  A keyword the converter would ignore, or translate wrongly, is refused (`SchemaRefused`, a
  400) naming the keyword and where it is, never dropped: ``minimum``, ``pattern``, ``oneOf``,
  ``uniqueItems`` and the like. Annotations (``title``, ``description``, ``default``, ...)
  constrain nothing and are accepted.
* The grammar may be stricter than the schema (properties in the order given, none beyond those
  named unless ``additionalProperties`` allows them, at most one space between tokens), never
  looser: whatever it lets the model write validates, except where a string ``format`` (a date
  such as 2023-02-31) or an interrupted generation says otherwise, which the check below reports.
* The output is checked against the schema as the client sent it (jsonschema, formats included).
  The verdict carries the failed keyword; the validator's message, which may quote the output,
  is kept only where content is kept (`Verdict.to_json`).
* A schema is identified in the ledger by ``sha3-256`` of its canonical JSON (`schema_hash`).
  Canonical JSON has no floating point numbers, so a float in a schema (a ``default`` of 0.5)
  is written there as its shortest decimal text, as `Params.to_json` records floats, and so is an
  integer beyond +-(2**53 - 1).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from anticloud.errors import SchemaRefused
from ledger import EncodingError, canonical_bytes, sha3_tag

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
                         "writeOnly"})
DEFINITIONS = ("$defs", "definitions")  # where $ref targets live; dropped once every $ref is inlined
DIALECT = "https://json-schema.org/draft/2020-12/schema"
FORMATS = frozenset({"date", "time", "date-time", "uuid"})  # the string formats the converter enforces
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength: llama.cpp's parser refuses 1001 nested optional items
MAX_PROPERTIES = 100  # in one object: the converter's work grows with the square of its optional properties
MAX_SUBSCHEMAS = 1000  # after every $ref is inlined
MAX_DEPTH = 32  # subschemas inside subschemas, after every $ref is inlined
MAX_GRAMMAR = 1 << 19  # characters of GBNF
_ANY = {"type": ["object", "array", "string", "number", "boolean", "null"]}  # "any value", as the converter can say it
# The converter's string character admits raw control characters, which JSON forbids inside a
# string; llama.cpp's own converter (and its JSON grammar) exclude them. Same rule, fixed.
_LOOSE_CHAR = r'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_SCHEMA_REF = {"$ref": "#/$defs/schema"}
_SCHEMA_LIST = {"type": "array", "minItems": 1, "items": _SCHEMA_REF}
_COUNT = {"type": "integer", "minimum": 0}
_TYPE_NAME = {"enum": ["string", "number", "integer", "boolean", "null", "object", "array"]}
# The shape of every keyword the walk below reads, as JSON Schema 2020-12's own metaschema has it.
# It stands in for that metaschema, whose $dynamicRefs cost jsonschema milliseconds a subschema:
# a keyword it does not name is refused by the walk, or (in a definition nothing refers to) unread.
_SUBSET_METASCHEMA = {"$ref": "#/$defs/schema", "$defs": {"schema": {"type": ["object", "boolean"], "properties": {
    "$schema": {"type": "string"}, "$ref": {"type": "string"},
    "$defs": {"type": "object", "additionalProperties": _SCHEMA_REF},
    "definitions": {"type": "object", "additionalProperties": _SCHEMA_REF},
    "type": {"anyOf": [_TYPE_NAME, {"type": "array", "items": _TYPE_NAME, "minItems": 1, "uniqueItems": True}]},
    "properties": {"type": "object", "additionalProperties": _SCHEMA_REF},
    "required": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    "additionalProperties": _SCHEMA_REF, "items": _SCHEMA_REF,
    "prefixItems": {"type": "array", "items": _SCHEMA_REF}, "anyOf": _SCHEMA_LIST, "allOf": _SCHEMA_LIST,
    "oneOf": _SCHEMA_LIST, "enum": {"type": "array"}, "format": {"type": "string"},
    "minItems": _COUNT, "maxItems": _COUNT, "minLength": _COUNT, "maxLength": _COUNT,
    "uniqueItems": {"type": "boolean"}}}}}
_SUBSET_CHECK = Draft202012Validator(_SUBSET_METASCHEMA)
_UNSAFE_TEXT = re.compile("[\"\\\\\x00-\x1f\ud800-\udfff\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an output is what was asked for: ``failed`` is "json" (it does not parse) or the JSON
    Schema keyword it breaks; ``detail`` is the validator's own message, which may quote the output."""

    valid: bool
    failed: str | None = None
    detail: str | None = None

    def to_json(self, with_detail: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": self.valid}
        if self.failed is not None:
            out["failed"] = self.failed
        if with_detail and self.detail is not None:
            out["detail"] = self.detail[:300]
        return out


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """A constraint on the output: ``kind`` "json" (any JSON object) or "json_schema" (``schema``);
    ``grammar`` is its GBNF, what the engine samples under."""

    kind: str
    grammar: str
    schema: dict[str, Any] | None = None
    name: str | None = None  # OpenAI's json_schema.name, the client's label
    strict: bool | None = None  # OpenAI's json_schema.strict: the output is constrained either way

    def record(self) -> dict[str, Any]:
        """What ``inference.begin`` records of it: the kind, and the schema's hash (never the schema)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.schema is not None:
            out["schema_sha3_256"] = schema_hash(self.schema)
        if self.name is not None:
            out["name"] = self.name
        if self.strict is not None:
            out["strict"] = self.strict
        return out

    def check(self, text: str) -> Verdict:
        """The output against what was asked for."""
        try:
            value = json.loads(text, parse_constant=_not_a_number)
        except ValueError as exc:
            return Verdict(False, "json", f"not JSON: {exc}")
        if self.schema is None:
            return Verdict(True) if isinstance(value, dict) else Verdict(False, "type", "not a JSON object")
        validator = Draft202012Validator(self.schema, format_checker=_FORMATS)
        try:
            error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
        except Exception as exc:  # noqa: BLE001 -- the verdict is built inside inference.end: it must not fail
            return Verdict(False, "check", f"the check itself failed: {type(exc).__name__}: {exc}")
        if error is None:
            return Verdict(True)
        where = "/".join(str(p) for p in error.absolute_path)
        return Verdict(False, str(error.validator), f"{where}: {error.message}" if where else error.message)


def any_json_object() -> OutputFormat:
    """Ollama's ``format: "json"`` and OpenAI's ``json_object``: a JSON object, nothing more said."""
    from llama_cpp.llama_grammar import JSON_GBNF  # loads llama.cpp: only once structured output is asked for

    return OutputFormat("json", JSON_GBNF)


def from_schema(schema: Any, field: str, name: str | None = None, strict: bool | None = None) -> OutputFormat:
    """The constraint for a client's JSON Schema, or `SchemaRefused` naming the construct (``field``
    says where the schema is in the request, for the message)."""
    if not isinstance(schema, dict):
        raise SchemaRefused(f"{field}: a JSON Schema must be an object")
    error = next(iter(sorted(_SUBSET_CHECK.iter_errors(schema), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise SchemaRefused(f"{field}: not a valid JSON Schema: {where + ': ' if where else ''}"
                            f"{_shorten(error.message)}")
    if schema.get("$schema", DIALECT).rstrip("#") != DIALECT:
        raise SchemaRefused(f"{field}: only JSON Schema 2020-12 is read; $schema names {_shorten(schema['$schema'])}")
    schema_hash(schema, field)  # refuses what the ledger cannot encode (a lone surrogate) before anything runs
    expanded = _Expander(schema, field).node(schema, "", 0, ())
    return OutputFormat("json_schema", _grammar(expanded, field), schema, name, strict)


def schema_hash(schema: Any, field: str = "schema") -> str:
    """``sha3-256`` of the schema's canonical JSON, floats (and integers past +-(2**53 - 1)) as text."""
    try:
        return sha3_tag(canonical_bytes(_as_canonical(schema)))
    except EncodingError as exc:  # a lone surrogate, which UTF-8 cannot hold
        raise SchemaRefused(f"{field}: {exc}") from None


def _as_canonical(value: Any) -> Any:
    if isinstance(value, float) or (type(value) is int and abs(value) > 2**53 - 1):
        return repr(value)
    if isinstance(value, dict):
        return {k: _as_canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_canonical(v) for v in value]
    return value


class _Expander:
    """Walks a schema as the converter will, refusing what it would not enforce, and returns the
    schema the converter is given: every $ref inlined, annotations dropped, "any value" spelled so
    the converter reads it as such."""

    def __init__(self, root: dict[str, Any], field: str) -> None:
        self.root, self.field, self.count, self.repeated = root, field, 0, 0

    def refuse(self, path: str, what: str) -> SchemaRefused:
        return SchemaRefused(f"{self.field}: {what} at {path or '/'} cannot be enforced while generating")

    def node(self, node: Any, path: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        self.count += 1
        if self.count > MAX_SUBSCHEMAS or depth > MAX_DEPTH:
            raise SchemaRefused(f"{self.field}: the schema is too large once its $refs are inlined "
                                f"(more than {MAX_SUBSCHEMAS} subschemas or {MAX_DEPTH} levels)")
        if node is True or node == {}:
            return dict(_ANY)
        if not isinstance(node, dict):
            raise self.refuse(path, "the schema false (nothing matches)")
        if "$ref" in node:
            return self._ref(node, path, depth, refs)
        if "allOf" in node:
            if len(node["allOf"]) != 1 or set(node) - ANNOTATIONS - {"allOf", *DEFINITIONS, "$schema"}:
                raise self.refuse(path, '"allOf" (other than one subschema alone)')
            return self.node(node["allOf"][0], f"{path}/allOf/0", depth + 1, refs)
        keys = set(node) - ANNOTATIONS - set(DEFINITIONS) - {"$schema"}
        if not keys:
            return dict(_ANY)
        if "oneOf" in keys:
            raise self.refuse(path, '"oneOf" (exclusive alternatives; "anyOf" is enforced)')
        if "anyOf" in keys:
            self._only(keys, {"anyOf"}, path)
            return {"anyOf": [self.node(s, f"{path}/anyOf/{i}", depth + 1, refs) for i, s in enumerate(node["anyOf"])]}
        if "const" in keys or "enum" in keys:  # before a list of types, which the converter would read first
            return self._literal(node, keys, path)
        return self._typed(node, keys, path, depth, refs)

    def _typed(self, node: dict[str, Any], keys: set[str], path: str, depth: int,
               refs: tuple[str, ...]) -> dict[str, Any]:
        """The converter's cases after a $ref, alternatives and constants, in its order."""
        kind = node.get("type")
        if isinstance(kind, list):
            self._only(keys, {"type"}, path)
            return {"type": kind}
        if kind in (None, "object") and ("properties" in keys or node.get("additionalProperties", True) is not True):
            return self._object(node, keys, path, depth, refs)
        if (kind in (None, "array") and keys & {"items", "prefixItems"}) or (kind == "array" and keys - {"type"}):
            return self._array(node, keys, path, depth, refs)
        if "pattern" in keys:
            raise self.refuse(path, '"pattern" (regular expressions are not translated reliably)')
        if "format" in keys:
            if node["format"] not in FORMATS or kind not in (None, "string"):
                raise self.refuse(path, f'"format": {_shorten(node["format"])} '
                                        f'(enforced: {", ".join(sorted(FORMATS))})')
            self._only(keys, {"type", "format"}, path)
            return {k: node[k] for k in keys}
        if kind == "string":
            self._only(keys, {"type", "minLength", "maxLength"}, path)
            self._bounds(node, "minLength", "maxLength", path)
            return {k: node[k] for k in keys}
        if kind is None:
            raise self.refuse(path, f'"{sorted(keys)[0]}" without a "type" it applies to')
        self._only(keys, {"type", "additionalProperties"} if kind == "object" else {"type"}, path)
        return {"type": kind}

    def _ref(self, node: dict[str, Any], path: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        ref = node["$ref"]
        if set(node) - ANNOTATIONS - {"$ref", *DEFINITIONS, "$schema"}:
            raise self.refuse(path, '"$ref" beside other constraining keywords')
        if ref != "#" and not ref.startswith("#/"):
            raise self.refuse(path, f'"$ref": {_shorten(ref)} (only references inside the schema are followed)')
        if ref in refs:
            raise self.refuse(path, f'"$ref": {_shorten(ref)} (a recursive schema)')
        target: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise self.refuse(path, f'"$ref": {_shorten(ref)} (it points at nothing)')
        return self.node(target, ref[1:], depth + 1, (*refs, ref))

    def _only(self, keys: set[str], allowed: set[str], path: str) -> None:
        extra = sorted(keys - allowed)
        if extra:
            raise self.refuse(path, f'"{extra[0]}"')

    def _literal(self, node: dict[str, Any], keys: set[str], path: str) -> dict[str, Any]:
        self._only(keys, {"const", "enum", "type"}, path)
        values = [node["const"]] if "const" in node else list(node["enum"])
        if not values:
            raise self.refuse(path, '"enum" with no values (nothing matches)')
        check = Draft202012Validator({k: node[k] for k in keys})
        for value in values:
            if not check.is_valid(value):
                raise self.refuse(path, f"the constant {_shorten(json.dumps(value))} (it breaks its own "
                                        f"{'enum' if 'const' in node and 'enum' in node else 'type'})")
            self._text(value, path)
        return {"const": values[0]} if "const" in node else {"enum": values}

    def _text(self, value: Any, path: str) -> None:
        """Strings the grammar holds as literals (constants and property names) must be written there
        as JSON writes them; quotes, backslashes, control and non-BMP characters are not. An object
        in a constant may not have a "$ref" member, which the converter would take for a reference."""
        strings = [value] if isinstance(value, str) else []
        if isinstance(value, dict):
            if "$ref" in value:  # llama.cpp's converter follows "$ref" wherever it finds one, data included
                raise self.refuse(path, 'a "$ref" member in a constant (the converter would read it as a reference)')
            strings = list(value)
            for item in value.values():
                self._text(item, path)
        elif isinstance(value, list):
            for item in value:
                self._text(item, path)
        if any(_UNSAFE_TEXT.search(s) for s in strings):
            raise self.refuse(path, "a quote, backslash, control or non-BMP character in a constant or "
                                    "property name")

    def _object(self, node: dict[str, Any], keys: set[str], path: str, depth: int,
                refs: tuple[str, ...]) -> dict[str, Any]:
        self._only(keys, {"type", "properties", "required", "additionalProperties"}, path)
        properties = node.get("properties", {})
        if len(properties) > MAX_PROPERTIES:
            raise self.refuse(path, f'"properties" with over {MAX_PROPERTIES} names')
        missing = sorted(set(node.get("required", ())) - set(properties))
        if missing:
            raise self.refuse(path, f'"required": {_shorten(missing[0])} (not among "properties")')
        extra = node.get("additionalProperties", False)
        if "" in properties or ("*" in properties and extra is not False):
            raise self.refuse(path, 'a property named "" (or "*" beside "additionalProperties")')
        if "$ref" in properties:  # the converter would take the properties for a reference
            raise self.refuse(path, 'a property named "$ref"')
        self._text(list(properties), path)
        out: dict[str, Any] = {"type": "object", "properties": {
            name: self.node(s, f"{path}/properties/{_escape(name)}", depth + 1, refs)
            for name, s in properties.items()}}
        if "required" in node:
            out["required"] = node["required"]
        if extra is not False:
            out["additionalProperties"] = True if extra is True else self.node(
                extra, f"{path}/additionalProperties", depth + 1, refs)
        return out

    def _array(self, node: dict[str, Any], keys: set[str], path: str, depth: int,
               refs: tuple[str, ...]) -> dict[str, Any]:
        self._only(keys, {"type", "items", "prefixItems", "minItems", "maxItems", "uniqueItems"}, path)
        if node.get("uniqueItems"):
            raise self.refuse(path, '"uniqueItems"')
        low, high = self._bounds(node, "minItems", "maxItems", path)
        if "prefixItems" in node:
            if "items" in node:
                raise self.refuse(path, '"items" beside "prefixItems"')
            size = len(node["prefixItems"])
            if low > size or (high is not None and high < size):
                raise self.refuse(path, '"minItems"/"maxItems" other than the length of "prefixItems"')
            return {"type": "array", "prefixItems": [self.node(s, f"{path}/prefixItems/{i}", depth + 1, refs)
                                                     for i, s in enumerate(node["prefixItems"])]}
        out = {"type": "array", "items": self.node(node.get("items", True), f"{path}/items", depth + 1, refs),
               "minItems": low}
        if high is not None:
            out["maxItems"] = high
        return out

    def _bounds(self, node: dict[str, Any], low_key: str, high_key: str, path: str) -> tuple[int, int | None]:
        low, high = int(node.get(low_key, 0)), node.get(high_key)
        if max(low, int(high or 0)) > MAX_REPEAT:
            raise self.refuse(path, f'"{low_key if low > MAX_REPEAT else high_key}" over {MAX_REPEAT}')
        if high is not None and int(high) < low:
            raise self.refuse(path, f'"{high_key}" below "{low_key}" (nothing matches)')
        self.repeated += max(low, int(high or 0))  # each repetition is written out in the grammar
        if self.repeated * 8 > MAX_GRAMMAR:
            raise SchemaRefused(f"{self.field}: the schema's grammar would be over {MAX_GRAMMAR} characters "
                                f"(its minimum and maximum lengths and counts add up to {self.repeated})")
        return low, None if high is None else int(high)


def _grammar(expanded: dict[str, Any], field: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # loads llama.cpp: only once a schema is given

    try:
        grammar = json_schema_to_gbnf(json.dumps(expanded))
    # A case the walk above missed: still a named refusal, never a crash.
    except (AssertionError, AttributeError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise SchemaRefused(f"{field}: the grammar converter failed on the schema: {_shorten(str(exc))}") from None
    lines = grammar.splitlines()
    if any(line.startswith("char ::= ") and line != _LOOSE_CHAR for line in lines):
        raise RuntimeError("llama-cpp-python's converter changed its string character rule: review _JSON_CHAR")
    grammar = "\n".join(_JSON_CHAR if line == _LOOSE_CHAR else line for line in lines)
    if len(grammar) > MAX_GRAMMAR:
        raise SchemaRefused(f"{field}: the schema's grammar is over {MAX_GRAMMAR} characters")
    return grammar


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _shorten(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_FORMATS = FormatChecker()


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339, as the grammar writes it; jsonschema checks it only with a package anticloud does not ship."""
    return not isinstance(value, str) or bool(datetime.fromisoformat(value).tzinfo)


@_FORMATS.checks("time", raises=ValueError)
def _time(value: object) -> bool:
    return not isinstance(value, str) or bool(time.fromisoformat(value).tzinfo)

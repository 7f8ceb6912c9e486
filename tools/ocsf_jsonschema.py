#!/usr/bin/env python3
"""Build the JSON Schema of one OCSF event class from the OCSF schema's source files.

OCSF publishes its schema as source files (github.com/ocsf/ocsf-schema: dictionary.json,
objects/, events/, profiles/); the JSON Schema that importers validate against is produced
from them by the OCSF schema server (`/schema/classes/<name>`). This script does the same,
standard library only, in two steps that follow the official code:

* compile: the rules of ocsf-schema-compiler (the Python compiler the server loads its schema
  from) for a core schema without extensions: attribute-level ``$include`` of profiles,
  ``extends`` (a child's attributes merged over its parent's), the dictionary's details under
  each attribute, the class's ``uid``/``class_uid``/``category_uid``/``type_uid``, and the
  ``<name>_dt`` siblings of timestamps that the ``datetime`` profile adds;
* encode: a port of the server's ``Schema.JsonSchema`` (lib/schema/json_schema.ex): draft-07,
  ``additionalProperties: false``, ``required`` from ``requirement``, closed enums for
  integer and string attributes, every object reachable from the class under ``$defs``, and
  the server's ``profiles`` filter, which drops attributes of profiles not asked for.

One known difference from the server: the ``observable`` object's ``type_id`` enum is built by
the compiler from every class and object of the schema; from a subset of the sources it holds
only what that subset names (events that carry no ``observables`` are not affected).

    python3 tools/ocsf_jsonschema.py SCHEMA_DIR CLASS [--profile NAME ...] > CLASS.schema.json
    python3 tools/ocsf_jsonschema.py SCHEMA_DIR CLASS --needed   # the source files it reads

tests/ocsf/ vendors the files this needs for ``api_activity`` and the schema it builds.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

JObject = dict[str, Any]
SCHEMA_BASE_URI = "https://schema.ocsf.io/schema/classes"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
_REQUIREMENT_RANK = {"optional": 0, "recommended": 1, "required": 2}


def _read(path: Path) -> JObject:
    with path.open(encoding="utf-8") as handle:
        value = json.load(handle)
    if not isinstance(value, dict):
        raise SystemExit(f"{path}: not a JSON object")
    return value


def deep_merge(dest: JObject, source: JObject) -> None:
    """ocsf-schema-compiler's ``deep_merge``: source wins, dicts merge, lists are replaced."""
    for key, value in source.items():
        if isinstance(dest.get(key), dict) and isinstance(value, dict):
            deep_merge(dest[key], value)
        else:
            dest[key] = value


def _merge_attribute(dest: JObject, source: JObject) -> None:
    """The compiler's ``_merge_attribute_detail`` (non-legacy mode, no extensions)."""
    for key, value in source.items():
        if key not in dest or dest[key] == value:
            dest[key] = value
        elif key == "profiles":
            dest[key] = None if value is None else sorted(set(dest[key] or ()) | set(value))
        elif key == "requirement" and source.get("profiles") is not None and "profiles" in dest:
            dest[key] = max(dest[key], value, key=_REQUIREMENT_RANK.__getitem__)
        elif isinstance(dest[key], dict) and isinstance(value, dict):
            deep_merge(dest[key], value)
        else:
            dest[key] = value


def _merge_attributes(dest: JObject, source: JObject) -> None:
    for name, attribute in source.items():
        if name in dest:
            _merge_attribute(dest[name], attribute)
        else:
            dest[name] = attribute


class Compiler:
    """The compiled core schema: dictionary, classes and objects with every attribute resolved."""

    def __init__(self, root: Path, class_files: list[Path]) -> None:
        self.root = root
        self.read: set[Path] = set()
        self.version = self._load("version.json")["version"]
        self.categories = self._load("categories.json").get("attributes", {})
        self.dictionary = self._load("dictionary.json")
        self.profiles = {p.stem: self._load(f"profiles/{p.name}") for p in sorted((root / "profiles").glob("*.json"))}
        self.classes = {c["name"]: c for c in (self._item(f) for f in class_files)}
        self.objects = {o["name"]: o for o in (self._item(f) for f in sorted((root / "objects").glob("*.json")))}
        self._compile()

    def _load(self, relative: str | Path) -> JObject:
        path = self.root / relative
        self.read.add(path)
        return _read(path)

    def _item(self, path: Path) -> JObject:
        item = self._load(path.relative_to(self.root))
        for attribute in item.get("attributes", {}).values():
            if isinstance(attribute, dict) and "profile" in attribute:  # the legacy spelling
                profile = attribute.pop("profile")
                attribute["profiles"] = None if profile is None else [profile]
        return item

    def _compile(self) -> None:
        types = self.dictionary.setdefault("types", {}).setdefault("attributes", {})
        attributes = self.dictionary.setdefault("attributes", {})
        for attribute in attributes.values():
            if attribute.get("type") not in types:
                attribute["object_type"], attribute["type"] = attribute.get("type"), "object_t"
        self._datetime = "datetime" in self.profiles and "datetime_t" in types and "timestamp_t" in types
        if self._datetime:
            attributes.update({f"{name}_dt": {**copy.deepcopy(a), "type": "datetime_t", "type_name": "Datetime"}
                               for name, a in list(attributes.items()) if a.get("type") == "timestamp_t"})
        for items in (self.classes, self.objects):
            for item in items.values():
                self._resolve_includes(item)
            for name in list(items):
                self._resolve_extends(items, name)
        self.classes = {n: c for n, c in self.classes.items() if n == "base_event" or "uid" in c}
        self.objects = {n: o for n, o in self.objects.items() if not n.startswith("_")}
        for name, cls in self.classes.items():
            self._enrich_class(name, cls)
        for items in (self.objects, self.classes):
            for item in items.values():
                self._finish(item)

    def _resolve_includes(self, item: JObject) -> None:
        attributes = item.setdefault("attributes", {})
        include = attributes.pop("$include", None)
        for path in [include] if isinstance(include, str) else include or []:
            included = self._load(path)
            merged = copy.deepcopy(included.get("attributes", {}))
            for attribute in merged.values():
                if included.get("meta") == "profile":
                    attribute["profiles"] = [included["name"]]
                for key, value in included.get("annotations", {}).items():
                    attribute.setdefault(key, value)
            _merge_attributes(merged, item["attributes"])
            item["attributes"] = merged

    def _resolve_extends(self, items: JObject, name: str) -> None:
        item = items[name]
        parent_name = item.get("extends")
        if not parent_name or item.get("_resolved"):
            return
        if parent_name not in items:
            raise SystemExit(f"{name} extends {parent_name}, which is not among the source files")
        self._resolve_extends(items, parent_name)
        merged = copy.deepcopy(items[parent_name])
        merged.pop("_resolved", None)
        for key, value in item.items():
            if key == "attributes":
                _merge_attributes(merged.setdefault("attributes", {}), value)
            elif key == "profiles":
                merged["profiles"] = sorted(set(merged.get("profiles", [])) | set(value))
            else:
                merged[key] = value
        merged["_resolved"] = True
        items[name] = merged

    def _enrich_class(self, name: str, cls: JObject) -> None:
        category = self.categories.get(cls.get("category"))
        category_uid = category.get("uid", 0) if category else 0
        cls["uid"] = uid = category_uid * 1000 + cls.get("uid", 0)
        caption = cls.get("caption", "UNKNOWN")
        attributes = cls.setdefault("attributes", {})
        activities = attributes.get("activity_id", {}).get("enum")
        if not activities:
            raise SystemExit(f'class {name} has no "activity_id" enum')
        type_enum = {str(uid * 100 + int(k)): {**v, "caption": f"{caption}: {v.get('caption', '<unknown>')}"}
                     for k, v in activities.items()}
        type_enum[str(uid * 100)] = {"caption": f"{caption}: Unknown"}
        attributes.setdefault("type_uid", {})["enum"] = type_enum
        attributes.setdefault("class_uid", {})["enum"] = {str(uid): {"caption": caption,
                                                                     "description": cls.get("description", "")}}
        attributes.setdefault("class_name", {})
        if category:
            cls["category_uid"] = category_uid
            attributes.setdefault("category_uid", {})["enum"] = {str(category_uid): copy.deepcopy(category)}
            attributes.setdefault("category_name", {})

    def _finish(self, item: JObject) -> None:
        dictionary = self.dictionary["attributes"]
        attributes = item.setdefault("attributes", {})
        if self._datetime:
            added = {}
            for name, attribute in attributes.items():
                if attribute.get("type", dictionary.get(name, {}).get("type")) == "timestamp_t":
                    added[f"{name}_dt"] = {**copy.deepcopy(attribute), "profiles": ["datetime"],
                                           "requirement": "optional"}
            attributes.update(added)
        finished = {}
        for name, attribute in attributes.items():
            if name not in dictionary:
                raise SystemExit(f"{item.get('name')}: attribute {name} is not in the dictionary")
            attribute.setdefault("requirement", "optional")
            detail = copy.deepcopy(dictionary[name])
            deep_merge(detail, attribute)
            finished[name] = detail
        item["attributes"] = finished


# -- the server's Schema.JsonSchema, ported ---------------------------------------------------


def _kept(attribute: JObject, profiles: set[str] | None) -> bool:
    listed = attribute.get("profiles")
    return profiles is None or listed is None or any(p in profiles for p in listed)


def _referenced(item: JObject, objects: JObject, found: dict[str, JObject]) -> dict[str, JObject]:
    for attribute in item["attributes"].values():
        name = attribute.get("object_type")
        if name and name not in found:
            found[name] = objects[name]
            _referenced(objects[name], objects, found)
    return found


class Encoder:
    def __init__(self, types: JObject) -> None:
        self.types = types

    def _is(self, type_name: str, base: str) -> bool:
        return type_name == base or self.types.get(type_name, {}).get("type") == base

    def _json_type(self, type_name: str) -> str:
        for base, json_type in (("string_t", "string"), ("integer_t", "integer"), ("long_t", "integer"),
                                ("float_t", "number"), ("boolean_t", "boolean")):
            if self._is(type_name, base):
                return json_type
        return type_name

    def attribute(self, attribute: JObject) -> JObject:
        schema: JObject = {"title": attribute.get("caption")}
        kind = attribute.get("type")
        if kind in ("integer_t", "string_t"):
            enum = attribute.get("enum")
            if enum is not None:
                values = sorted(int(k) if kind == "integer_t" else k for k in enum)
                schema.update({"const": values[0]} if len(values) == 1 else {"enum": values})
            schema["type"] = "integer" if kind == "integer_t" else "string"
        elif kind == "object_t":
            schema["$ref"] = "#/$defs/" + attribute["object_type"].replace("/", "_")
        elif kind != "json_t":
            schema["type"] = self._json_type(str(kind))
        if attribute.get("is_array") is True:
            if "type" not in schema:
                items: JObject = {"$ref": schema.pop("$ref")}
            else:
                items = {"type": schema["type"]}
                if "enum" in schema:
                    items["enum"] = schema.pop("enum")
            schema.update(type="array", items=items)
        return schema

    def item(self, item: JObject, objects: dict[str, JObject] | None = None) -> JObject:
        constraints = item.get("constraints", {})
        just_one, at_least_one = list(constraints.get("just_one", [])), list(constraints.get("at_least_one", []))
        properties: JObject = {}
        required: list[str] = []
        one: list[str] = []
        any_: list[str] = []
        for name in sorted(item["attributes"], reverse=True):  # the server's order, which its lists keep
            attribute = item["attributes"][name]
            if name in just_one:
                one.insert(0, name)
            elif name in at_least_one:
                any_.insert(0, name)
            elif attribute.get("requirement") == "required":
                required.insert(0, name)
            properties[name] = self.attribute(attribute)
        schema: JObject = {}
        if "uid" in item:
            schema.update({"$schema": DRAFT_07, "$id": f"{SCHEMA_BASE_URI}/{item['name']}"})
        schema.update(title=item.get("caption"), type="object", properties=dict(sorted(properties.items())),
                      additionalProperties=False)
        if required:
            schema["required"] = sorted(required)
        if one:
            schema["oneOf"] = [{"required": [n], "not": {"required": [o for o in one if o != n]}} for n in one]
        if any_:
            schema["anyOf"] = [{"required": [n]} for n in any_]
        if objects:
            schema["$defs"] = {k.replace("/", "_"): self.item(v) for k, v in sorted(objects.items())}
        if not properties:
            schema["additionalProperties"] = True
        return schema


def class_schema(root: Path, class_path: str, profiles: list[str] | None) -> tuple[JObject, set[Path]]:
    """The JSON Schema of the class in ``class_path`` (relative to ``root``), as the OCSF server
    serves it for ``?profiles=...`` (every profile when ``profiles`` is None), and the source
    files read to build it."""
    compiler = Compiler(root, [root / "events" / "base_event.json", *_ancestors(root, root / class_path)])
    name = _read(root / class_path)["name"]
    cls = compiler.classes[name]
    wanted = None if profiles is None else set(profiles)
    objects = _referenced(cls, compiler.objects, {})
    needed = {compiler.root / "version.json", root / "categories.json", root / "dictionary.json"}
    needed |= {root / "objects" / f"{o}.json" for o in _with_parents(root, objects)}
    needed |= {p for p in compiler.read if p.parent.name == "events" or p.parent.parent.name == "events"}
    needed |= {root / "profiles" / f"{p}.json" for p in compiler.profiles}

    def filtered(item: JObject) -> JObject:
        return {**item, "attributes": {k: a for k, a in item["attributes"].items() if _kept(a, wanted)}}

    encoder = Encoder(compiler.dictionary["types"]["attributes"])
    return encoder.item(filtered(cls), {k: filtered(v) for k, v in objects.items()}), needed


def _ancestors(root: Path, path: Path) -> list[Path]:
    """The class file and those of the classes it extends (found beside it or in events/)."""
    chain = [path]
    while (parent := _read(chain[-1]).get("extends")) and parent != "base_event":
        found = [p for p in (chain[-1].parent / f"{parent}.json", root / "events" / f"{parent}.json") if p.exists()]
        if not found:
            raise SystemExit(f"{chain[-1]} extends {parent}, which is not among the source files")
        chain.append(found[0])
    return chain


def _with_parents(root: Path, objects: dict[str, JObject]) -> set[str]:
    names = set(objects)
    for name in list(names):
        while parent := _read(root / "objects" / f"{name}.json").get("extends"):
            names.add(parent)
            name = parent
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schema_dir", type=Path)
    parser.add_argument("class_file", help="the class's file, relative to SCHEMA_DIR "
                                           "(events/application/api_activity.json)")
    parser.add_argument("--profile", action="append", help="keep this profile's attributes (repeat); default: all")
    parser.add_argument("--needed", action="store_true", help="list the source files read, relative to SCHEMA_DIR")
    args = parser.parse_args(argv)
    schema, needed = class_schema(args.schema_dir, args.class_file, args.profile)
    if args.needed:
        print("\n".join(sorted(str(p.relative_to(args.schema_dir)) for p in needed)))
    else:
        print(json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

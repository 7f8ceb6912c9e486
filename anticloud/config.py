"""The appliance's policy: a TOML file in the home, over the defaults of policies/default.toml.

A value's type must match its default's, and unknown sections or keys are refused, so a
misspelt setting fails loudly instead of silently leaving the default in force.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anticloud.errors import ConfigError
from anticloud.gguf import GgufLimits
from anticloud.home import Home

# Kept identical to policies/default.toml by a test.
DEFAULTS: dict[str, dict[str, Any]] = {
    "trust": {"min_signatures": 1},
    "import": {"max_file_bytes": 64 << 30},
    "gguf": {"max_tensors": 65_536, "max_metadata_kv": 65_536, "max_string_bytes": 1 << 20,
             "max_array_length": 1 << 24},
    "chat_templates": {"require_pinned": True, "pinned": []},
}


@dataclass(frozen=True, slots=True)
class Policy:
    min_signatures: int
    max_file_bytes: int
    gguf: GgufLimits
    require_pinned_templates: bool
    pinned_templates: frozenset[str]

    @classmethod
    def from_mapping(cls, doc: dict[str, dict[str, Any]]) -> Policy:
        t = doc["trust"]["min_signatures"]
        if t < 1:
            raise ConfigError("trust.min_signatures must be at least 1")
        pinned = doc["chat_templates"]["pinned"]
        if not all(isinstance(h, str) and h.startswith("sha3-256:") and len(h) == 73 for h in pinned):
            raise ConfigError("chat_templates.pinned must list hashes written sha3-256:<64 hex digits>")
        return cls(t, doc["import"]["max_file_bytes"], GgufLimits(**doc["gguf"]),
                   doc["chat_templates"]["require_pinned"], frozenset(pinned))


def config_path(home: Home) -> Path:
    return home.root / "config.toml"


def load_policy(home: Home) -> Policy:
    path = config_path(home)
    try:
        overrides = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Policy.from_mapping(merge(DEFAULTS, overrides, str(path)))


def merge(defaults: dict[str, dict[str, Any]], overrides: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    merged = {section: dict(values) for section, values in defaults.items()}
    for section, values in overrides.items():
        if section not in merged or not isinstance(values, dict):
            raise ConfigError(f"{where}: unknown section [{section}]")
        for key, value in values.items():
            if key not in merged[section]:
                raise ConfigError(f"{where}: unknown setting {section}.{key}")
            default = merged[section][key]
            if type(value) is not type(default):
                raise ConfigError(f"{where}: {section}.{key} must be a {type(default).__name__}")
            merged[section][key] = value
    return merged

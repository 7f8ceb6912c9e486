"""The policy: defaults are exactly policies/default.toml; mistakes in config.toml fail loudly."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from anticloud.config import DEFAULTS, config_path, load_policy
from anticloud.errors import ConfigError
from anticloud.home import Home

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_shipped_default_policy() -> None:
    assert tomllib.loads((ROOT / "policies" / "default.toml").read_text()) == DEFAULTS


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "policies" / "README.md").read_text()
    for section, values in DEFAULTS.items():
        for key in values:
            assert f"{section}.{key}" in readme, f"{section}.{key} is not documented in policies/README.md"


def test_overrides_apply(tmp_path: Path) -> None:
    home = Home(tmp_path)
    config_path(home).write_text("[trust]\nmin_signatures = 3\n[gguf]\nmax_tensors = 10\n")
    policy = load_policy(home)
    assert policy.min_signatures == 3 and policy.gguf.max_tensors == 10 and policy.max_file_bytes == 64 << 30


@pytest.mark.parametrize(("text", "message"), [
    ("[trust]\nmin_signature = 2\n", "unknown setting trust.min_signature"),
    ("[trusts]\nmin_signatures = 2\n", "unknown section"),
    ('[trust]\nmin_signatures = "2"\n', "must be a int"),
    ("[trust]\nmin_signatures = 0\n", "at least 1"),
    ('[chat_templates]\npinned = ["abc"]\n', "sha3-256:<64 hex digits>"),
    ("[trust\n", "config.toml"),
])
def test_mistakes_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    home = Home(tmp_path)
    config_path(home).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_policy(home)

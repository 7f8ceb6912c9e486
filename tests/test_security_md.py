"""SECURITY.md must match what the tests prove: every test it cites exists and is collected."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_cited_in_security_md_exists() -> None:
    cited = set(re.findall(r"`(test_[a-z0-9_]+)(?:\[[^\]]*\])?`", (ROOT / "SECURITY.md").read_text()))
    cited |= {name for name in re.findall(r"`([a-z_]+\.py)`", (ROOT / "SECURITY.md").read_text())
              if name.startswith("test_")}
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined.add(path.name)
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), re.MULTILINE))
    assert len(cited) > 20
    assert not cited - defined, f"SECURITY.md cites tests that do not exist: {sorted(cited - defined)}"

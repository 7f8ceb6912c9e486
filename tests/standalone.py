"""The auditors' standalone verifier, `tools/verify_ledger.py`, loaded as a module for the tests
that compare it with the `ledger` package (it is a script, not part of any package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parent.parent / "tools" / "verify_ledger.py"


def verifier(name: str) -> ModuleType:
    """A fresh copy of the tool, under its own module ``name``."""
    spec = importlib.util.spec_from_file_location(name, TOOL)
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool

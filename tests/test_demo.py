"""`make run`'s walk-through, end to end, with the real CLI and model in a throw-away home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def walkthrough(home: Path) -> str:
    env = dict(os.environ, ANTICLOUD_HOME=str(home),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_walkthrough_imports_the_default_model_and_shows_each_verdict(tmp_path: Path) -> None:
    out = walkthrough(tmp_path / "home")
    assert "SHA-256 matches upstream" in out
    assert "imported gemma3-270m" in out and "signed by  sha3-256:" in out
    assert out.count("INTACT:") >= 3
    assert "reason            hash_mismatch" in out
    assert "reason            truncated_below_checkpoint" in out
    assert "your checkpoint   seq 5 matched" in out  # genesis, config.init, trust.add, import, 2 checkpoints

    again = walkthrough(tmp_path / "home")  # a second `make run` reuses what the first one made
    assert "gemma3-270m is already imported" in again and "INTACT:" in again

"""`make run`'s walk-through, end to end, with the real CLI in a throw-away home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_walkthrough_runs_and_shows_each_verdict(tmp_path: Path) -> None:
    env = dict(os.environ, ANTICLOUD_HOME=str(tmp_path / "home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.count("INTACT:") >= 3
    assert "reason            hash_mismatch" in out
    assert "reason            truncated_below_checkpoint" in out
    assert "your checkpoint   seq 2 matched" in out
    assert (tmp_path / "home" / "auditor" / "checkpoint.json").exists()

"""`make run`'s main job, end to end, with the real CLI, model and namespaces in a throw-away home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anticloud.airgap import check

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def main_job(home: Path) -> str:
    env = dict(os.environ, ANTICLOUD_HOME=str(home),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_main_job_imports_refuses_answers_and_verifies(tmp_path: Path) -> None:
    out = main_job(tmp_path / "home")
    assert "SHA-256 matches upstream" in out and "SHA-256 matches its package's record" in out
    assert "imported gemma3-270m" in out and "imported smollm2-135m" in out and "signed by  sha3-256:" in out
    assert "(NOT pinned)" in out and "pinned 1 template(s)" in out, "the chat template is reviewed, then pinned"
    assert "inference.default_model: 'gemma3-270m' -> 'smollm2-135m'" in out
    if not check().isolated:
        assert "exit code 4:" in out and "refusing to start: a network is reachable" in out
        assert "engine.refused" in out
    answers = out.split("it answers, streaming")[1].split("== 8.")[0]
    continuation, chat = answers.split("answers a question through its pinned chat template:")
    assert "2." in continuation, "the base model's numbered continuation is missing"
    assert len(chat.split()) >= 5 and "<|im_" not in chat, "the chat model answers in words, its template unseen"
    assert "reason            hash_mismatch" in out
    assert "reason            truncated_below_checkpoint" in out
    final = out.split("== 13.")[1].split("== 14.")[0]
    assert "INTACT:" in final and "your checkpoint   seq" in final and "head              seq" in final
    assert "tags verified" in final and "sealed through    epoch" in final
    insider = out.split("== 14.")[1]
    chain_says, seals_say = insider.split("the seals, with the auditor's secret, say:")
    assert "INTACT:" in chain_says, "the insider's rewrite is self-consistent: the chain cannot tell"
    assert "BROKEN:" in seals_say and "seal_bad_tag" in seals_say

    again = main_job(tmp_path / "home")  # a second `make run` reuses what the first one made
    assert "gemma3-270m and smollm2-135m are already imported" in again
    assert again.split("== 13.")[1].split("== 14.")[0].count("INTACT:") == 1

"""The repository holds source, documentation and deliberate test data: nothing large rides along."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 5 * 1024 * 1024


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_is_over_5_mb() -> None:
    files = tracked_files()
    assert files, "git ls-files listed nothing"
    large = [f"{path.relative_to(ROOT)} ({path.stat().st_size} bytes)" for path in files
             if path.exists() and path.stat().st_size > LIMIT]
    assert not large, f"tracked files over 5 MB: {large}"


def test_no_scratch_ledger_is_tracked() -> None:
    """Benchmark and test ledgers live outside the repository; the only ledgers tracked are test data."""
    stray = [str(path.relative_to(ROOT)) for path in tracked_files()
             if path.suffix == ".jsonl" and path.relative_to(ROOT).parts[0] != "tests"]
    assert not stray, f"ledger files tracked outside tests/: {stray}"

"""Sealed in-memory copies: what the kernel refuses, and copies that cannot fit."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from anticloud.sealed import memory_room, room, sealed_copy, seals_of

MEMINFO = "MemTotal:       24000000 kB\nMemAvailable:    1000000 kB\n"


def test_room_is_the_least_of_available_memory_and_the_cgroups_headroom() -> None:
    assert room(MEMINFO, None, None) == 1_024_000_000
    assert room(MEMINFO, "max\n", "5\n") == 1_024_000_000  # cgroup v2 without a limit
    assert room(MEMINFO, "600000000\n", "100000000\n") == 500_000_000
    assert room(MEMINFO, "100\n", "200\n") == 0
    assert room("", None, None) is None


def test_this_process_has_a_room_it_can_read() -> None:
    free = memory_room()
    assert free is not None and 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_copy_larger_than_memory_is_refused_before_any_is_reserved(tmp_path: Path) -> None:
    free = memory_room()
    assert free is not None
    huge = tmp_path / "huge.gguf"
    with huge.open("wb") as handle:
        handle.truncate(free + (1 << 30))  # sparse: costs no disk
    fd = os.open(huge, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="do not fit") as refused:
            sealed_copy(fd, free + (1 << 30), "anticloud:test")
    finally:
        os.close(fd)
    assert refused.value.errno == errno.ENOMEM
    assert not [n for n in os.listdir("/proc/self/fd") if "memfd:anticloud:test" in _target(n)]


def test_a_copy_that_fits_is_sealed_against_every_change(tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights" * 1000)
    fd = os.open(src, os.O_RDONLY)
    try:
        copy = sealed_copy(fd, 7000, "anticloud:test")
    finally:
        os.close(fd)
    try:
        assert os.pread(copy, 7000, 0) == b"weights" * 1000
        assert seals_of(copy) == ["write", "shrink", "grow", "seal"]
        with pytest.raises(PermissionError):
            os.pwrite(copy, b"X", 0)
    finally:
        os.close(copy)


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""

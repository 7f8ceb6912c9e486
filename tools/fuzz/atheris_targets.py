#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read untrusted bytes.

    python tools/fuzz/atheris_targets.py TARGET [libFuzzer flags, e.g. -runs=20000 -max_total_time=30]

TARGET is ``gguf`` (the GGUF pre-parse), ``ledger`` (one ledger line) or ``manifest``. Each
input must be accepted or refused with the module's own error; anything else is a crash that
libFuzzer reports and saves. Seeds are valid documents, so the fuzzer starts from real shapes.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from anticloud.errors import AnticloudError, GgufError
    from anticloud.gguf import GgufLimits, inspect
    from anticloud.manifest import parse_manifest
    from ledger.record import RecordFault, parse_line

_SCRATCH = tempfile.TemporaryFile()  # noqa: SIM115 - one scratch file for the whole run


def gguf(data: bytes) -> None:
    _SCRATCH.seek(0)
    _SCRATCH.truncate()
    _SCRATCH.write(data)
    _SCRATCH.seek(0)
    try:
        inspect(_SCRATCH, GgufLimits(max_string_bytes=1 << 16, max_array_length=1 << 16))
    except GgufError as exc:
        assert "\n" not in str(exc)


def ledger(data: bytes) -> None:
    try:
        parse_line(data)
    except RecordFault as fault:
        assert "\n" not in fault.detail


def manifest(data: bytes) -> None:
    try:
        parse_manifest(data)
    except AnticloudError as exc:
        assert "\n" not in str(exc)


TARGETS: dict[str, Callable[[bytes], None]] = {"gguf": gguf, "ledger": ledger, "manifest": manifest}


def seeds(target: str) -> list[bytes]:
    from anticloud.manifest import FileEntry, Manifest
    from ledger.record import seal
    from tests.gguf_builder import STRING, build, kv

    if target == "gguf":
        return [build(), build([kv("tokenizer.chat_template", STRING, "{{ x }}")], [("a", [32, 2], 0)])]
    if target == "ledger":
        return [seal(1, "inference.begin", {"id": "x", "n": 1}, "ab" * 32)[1][:-1]]
    return [Manifest("m", (FileEntry("m.gguf", 4, "sha3-256:" + "ab" * 32),), (),
                     "2026-01-01T00:00:00.000000Z").to_bytes()]


def main() -> None:
    target = sys.argv[1]
    corpus = Path(tempfile.mkdtemp(prefix=f"atheris-{target}-"))
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Fuzzing the parsers that take untrusted bytes: no crash, no exception but the module's own, and
every refusal a clear single line. The GGUF pre-parse and the API bodies have their own fuzzers
(test_gguf.py, test_api_fuzz.py); what the fuzzers found stays here as a regression corpus."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anticloud.bundle import create_bundle
from anticloud.errors import AnticloudError
from anticloud.home import Home
from anticloud.manifest import parse_manifest, parse_signatures
from ledger.record import RecordFault, parse_line, seal
from tests.gguf_builder import build

GOOD_LINE = seal(3, "inference.begin", {"id": "a", "n": 1, "s": "é\n"}, "ab" * 32)[1][:-1]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "\r" not in message


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and a valid document with bytes flipped, inserted, deleted or truncated."""
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        blob = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, max(0, len(blob) - 1)))
            how = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
            if how == "flip" and blob:
                blob[at] ^= draw(st.integers(1, 255))
            elif how == "insert":
                blob[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif how == "delete" and blob:
                del blob[at]
            elif how == "cut":
                del blob[at:]
        return bytes(blob)
    return st.one_of(st.binary(max_size=300), mutate())


@FUZZ
@given(mutations(GOOD_LINE))
def test_ledger_line_parser(line: bytes) -> None:
    try:
        record = parse_line(line)
    except RecordFault as fault:
        assert fault.reason in {"unparseable_line", "invalid_record", "non_canonical", "hash_mismatch"}
        assert one_line(fault.detail)
    else:
        assert seal(record.seq, record.kind, record.data, record.prev, record.ts)[1][:-1] == line


def _manifest_seed() -> bytes:
    from anticloud.manifest import FileEntry, Manifest

    entry = FileEntry("m.gguf", 4, "sha3-256:" + "ab" * 32)
    return Manifest("m", (entry,), (), "2026-01-01T00:00:00.000000Z").to_bytes()


@FUZZ
@given(mutations(_manifest_seed()))
def test_manifest_parser(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except AnticloudError as exc:
        assert one_line(str(exc))


@FUZZ
@given(mutations(b'{"signatures":[{"key_id":"sha3-256:' + b"ab" * 32 + b'","signature":"' + b"A" * 86
                 + b'=="}],"type":"anticloud.model.signatures","v":1}'))
def test_signatures_parser(raw: bytes) -> None:
    try:
        parse_signatures(raw)
    except AnticloudError as exc:
        assert one_line(str(exc))


NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(NAMES, st.sampled_from(["file", "dir", "symlink", "fifo", "hardlink"])), max_size=4),
       st.booleans())
def test_bundle_importer_on_random_trees(imported_home: Callable[..., Home], tmp_path_factory: pytest.TempPathFactory,
                                         entries: list[tuple[str, str]], keep_manifest_file: bool) -> None:
    """A signed bundle, then random extra entries with odd names: refused with one line, nothing stored."""
    from anticloud.config import load_policy
    from anticloud.identity import read_private_key
    from anticloud.models import ModelStore
    from anticloud.trust import TrustStore
    from ledger import LedgerWriter

    base = tmp_path_factory.mktemp("tree")
    home = _home(imported_home)
    weights = base / "w.gguf"
    weights.write_bytes(build())
    bundle = base / "bundle"
    name = f"fuzzed{secrets.token_hex(4)}"
    create_bundle([weights], name, read_private_key(home.root.parent / "keys" / "publisher.key"), bundle)
    files = bundle / "files"
    if not keep_manifest_file:
        (files / "w.gguf").unlink()
    added = sum(_make(files / entry, kind, weights) for entry, kind in entries)
    with LedgerWriter.open(home.ledger) as writer:
        try:
            ModelStore(home).import_bundle(bundle, TrustStore.load(home), load_policy(home), writer)
            imported = True
        except AnticloudError as exc:
            imported = False
            assert one_line(str(exc)), str(exc)
    assert imported == (keep_manifest_file and added == 0), "a bundle imports if and only if it is untouched"
    if not imported:
        assert not (home.root / "models" / "manifests" / name).exists()
    assert not list((home.root / "models").glob(".staging-*"))


def _make(target: Path, kind: str, weights: Path) -> bool:
    """Add one odd entry to a bundle; False when it cannot exist (a name already taken, '.', ...)."""
    if target.name in (".", "..") or target.exists() or target.is_symlink():
        return False
    try:
        if kind == "file":
            target.write_bytes(b"x")
        elif kind == "dir":
            target.mkdir()
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "symlink":
            target.symlink_to(weights)
        else:
            os.link(weights, target)
    except OSError:
        return False
    return True


_HOME: dict[str, Home] = {}


def _home(imported_home: Callable[..., Home]) -> Home:
    """One imported home for all examples of a run (hypothesis reuses the function-scoped fixture)."""
    if "home" not in _HOME or not _HOME["home"].ledger.exists():
        _HOME["home"] = imported_home("tiny")
    return _HOME["home"]


# -- the regression corpus: inputs the fuzzers once broke the appliance with ------------------------

REGRESSIONS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize("case", sorted(p.name for p in REGRESSIONS.glob("*.json")))
def test_regression_corpus(case: str, tmp_path: Path) -> None:
    spec: dict[str, Any] = json.loads((REGRESSIONS / case).read_text())
    if spec["target"] == "gguf":
        from anticloud.errors import GgufError
        from anticloud.gguf import inspect

        path = tmp_path / "m.gguf"
        path.write_bytes(bytes.fromhex(spec["hex"]))
        with open(path, "rb") as handle, pytest.raises(GgufError) as info:
            inspect(handle)
        assert one_line(str(info.value)), str(info.value)
    else:
        raise AssertionError(f"unknown target {spec['target']}")


def test_the_corpus_is_not_empty() -> None:
    assert list(REGRESSIONS.glob("*.json")), secrets.token_hex(1)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["gguf", "ledger", "manifest"])
def test_atheris_coverage_guided_fuzzing_finds_no_crash(target: str, tmp_path: Path) -> None:
    import resource
    import subprocess
    import sys

    pytest.importorskip("atheris")
    script = Path(__file__).resolve().parent.parent / "tools" / "fuzz" / "atheris_targets.py"
    # libFuzzer reads its peak RSS with getrusage, and Linux carries the parent's resident size
    # into a child's peak across fork and exec: a child of this process starts with this
    # process's peak (over 1 GiB once a test has loaded models in it). The bound is 1 GiB more.
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10  # KiB -> MiB
    run = subprocess.run([sys.executable, str(script), target, "-max_total_time=15",
                          f"-rss_limit_mb={inherited + 1024}", f"-artifact_prefix={tmp_path}/"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr and not list(tmp_path.glob("crash-*"))


@FUZZ
@given(st.binary(min_size=64, max_size=64), st.binary(max_size=64))
def test_signature_checking_never_accepts_or_crashes_on_random_signatures(signature: bytes, message: bytes) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from anticloud.errors import SignatureError
    from anticloud.manifest import Signature, check_signatures
    from ledger.checkpoint import ed25519_valid, raw_public_key

    public = raw_public_key(Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key())
    with pytest.raises(SignatureError, match="does not verify"):
        check_signatures(message, [Signature("sha3-256:" + "00" * 32, signature)], lambda k: (public, False),
                         ed25519_valid, 1)

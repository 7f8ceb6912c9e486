"""End to end on the real Gemma 3 270M: sneakernet import through the CLI, refusal at import and at load."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.config import load_policy
from anticloud.errors import LoadRefused
from anticloud.home import Home
from anticloud.models import ModelStore
from anticloud.trust import TrustStore
from ledger import LedgerWriter, verify_file

pytestmark = pytest.mark.slow


def run(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    return result.exit_code, result.output


def flip_byte(path: Path, at: int) -> None:
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o200)
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture(scope="module")
def staged(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """On the staging machine: a publisher key and a signed bundle of the real model."""
    staging = tmp_path_factory.mktemp("staging")
    home = Home(staging / "unused-home")
    assert run(home, "keys", "generate", "--out", str(staging / "keys"))[0] == 0
    code, out = run(home, "bundle", "create", str(gemma_path), "--name", "gemma3-270m",
                    "--key", str(staging / "keys" / "publisher.key"), "--out", str(staging / "bundle"))
    assert code == 0, out
    return staging / "keys" / "publisher.pub", staging / "bundle"


@pytest.fixture
def home(tmp_path: Path, staged: tuple[Path, Path]) -> Home:
    home = Home(tmp_path / "home")
    assert run(home, "init")[0] == 0
    code, out = run(home, "keys", "trust", str(staged[0]), "--name", "staging")
    assert code == 0 and "trusted sha3-256:" in out
    return home


def test_sneakernet_import_of_the_real_model(home: Home, staged: tuple[Path, Path], gemma_path: Path) -> None:
    code, out = run(home, "import", str(staged[1]))
    assert code == 0, out
    assert "imported gemma3-270m" in out and "MB/s" in out
    code, out = run(home, "models", "list")
    assert "gemma3-270m" in out and "253.1 MB" in out
    store = ModelStore(home)
    entry = store.get("gemma3-270m").manifest.files[0]
    assert store.blob_path(entry.sha3_256).stat().st_size == gemma_path.stat().st_size
    kinds = [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]
    assert kinds == ["ledger.genesis", "config.init", "trust.add", "model.import"]
    assert verify_file(home.ledger).status == "intact"


def test_one_flipped_byte_is_refused_at_import(home: Home, staged: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(staged[1], bundle)
    flip_byte(bundle / "files" / "gemma-3-270m-q4_k_m.gguf", 123_456_789)
    code, out = run(home, "import", str(bundle))
    assert code == 1
    assert "has SHA3-256" in out and "the manifest says" in out and len(out.strip().splitlines()) == 1
    assert run(home, "models", "list")[1].startswith("no models")
    last = json.loads(home.ledger.read_bytes().splitlines()[-1])
    assert last["kind"] == "model.import.rejected"


def test_one_flipped_byte_after_import_is_refused_at_load(home: Home, staged: tuple[Path, Path]) -> None:
    assert run(home, "import", str(staged[1]))[0] == 0
    store = ModelStore(home)
    entry = store.get("gemma3-270m").manifest.files[0]
    with LedgerWriter.open(home.ledger) as writer:
        verified = store.open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer)
        assert verified.unchanged()
        verified.close()
        flip_byte(store.blob_path(entry.sha3_256), 200_000_000)
        with pytest.raises(LoadRefused) as info:
            store.open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer)
    assert info.value.evidence["expected"] == entry.sha3_256
    assert info.value.evidence["actual"] != entry.sha3_256
    refused = json.loads(home.ledger.read_bytes().splitlines()[-1])
    assert refused["kind"] == "model.load.refused"
    assert refused["data"]["file"] == "gemma-3-270m-q4_k_m.gguf"
    assert {refused["data"]["expected"], refused["data"]["actual"]} == {entry.sha3_256, info.value.evidence["actual"]}


def test_revoking_the_publisher_refuses_the_next_load(home: Home, staged: tuple[Path, Path]) -> None:
    assert run(home, "import", str(staged[1]))[0] == 0
    key_id = TrustStore.load(home).keys()[0].key_id
    assert run(home, "keys", "revoke", key_id)[0] == 0
    with LedgerWriter.open(home.ledger) as writer, pytest.raises(LoadRefused, match="revoked"):
        ModelStore(home).open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer)


def test_remove_records_and_deletes(home: Home, staged: tuple[Path, Path]) -> None:
    assert run(home, "import", str(staged[1]))[0] == 0
    assert run(home, "models", "remove", "gemma3-270m")[0] == 0
    assert not list((home.root / "models" / "blobs").iterdir())
    assert json.loads(home.ledger.read_bytes().splitlines()[-1])["kind"] == "model.remove"
    assert run(home, "models", "show", "gemma3-270m")[0] == 1


def test_llama_cpp_loads_the_very_descriptor_that_was_hashed(home: Home, staged: tuple[Path, Path]) -> None:
    from llama_cpp import Llama

    assert run(home, "import", str(staged[1]))[0] == 0
    with LedgerWriter.open(home.ledger) as writer:
        verified = ModelStore(home).open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer)
    try:
        assert verified.path == f"/proc/self/fd/{verified.fd}"
        llm = Llama(model_path=verified.path, n_ctx=128, n_threads=2, verbose=False)
        out = llm.create_completion("The capital of France is", max_tokens=6, temperature=0, seed=1)
        assert isinstance(out, dict)
        assert out["usage"]["completion_tokens"] > 0 and out["choices"][0]["text"].strip()
        assert verified.unchanged()
        del llm
    finally:
        verified.close()

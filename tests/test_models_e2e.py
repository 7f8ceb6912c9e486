"""End to end on the real Gemma 3 270M: sneakernet import through the CLI, refusal at import and at load."""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from anticloud.airgap import Interface, NetworkState, Route
from anticloud.cli import cli
from anticloud.config import load_policy
from anticloud.engines import LoadedModel, LoadSpec, Params
from anticloud.engines.llama import LlamaEngine
from anticloud.errors import LoadRefused
from anticloud.gguf import inspect
from anticloud.home import Home
from anticloud.models import ModelStore
from anticloud.runtime import Appliance
from anticloud.trust import TrustStore
from ledger import LedgerWriter, verify_file

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
ISOLATED = NetworkState((Interface(1, "lo", True, True, ("127.0.0.1/8",)),),
                        (Route(4, 255, "local", "127.0.0.0/8", "lo"),))


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
    assert kinds == ["ledger.genesis", "config.init", "content.key", "trust.add", "model.import"]
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
        store.open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer).close()
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
    assert run(home, "keys", "revoke", key_id, "--yes")[0] == 0
    with LedgerWriter.open(home.ledger) as writer, pytest.raises(LoadRefused, match="revoked"):
        ModelStore(home).open_verified("gemma3-270m", TrustStore.load(home), load_policy(home), writer)


def test_remove_records_and_deletes(home: Home, staged: tuple[Path, Path]) -> None:
    assert run(home, "import", str(staged[1]))[0] == 0
    assert run(home, "models", "remove", "gemma3-270m", "--yes")[0] == 0
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
        del llm
    finally:
        verified.close()


def greedy(model: LoadedModel, params: Params) -> str:
    pieces = model.generate(PROMPT, params, lambda: False)
    return "".join(p for p in pieces if isinstance(p, str))


def overwrite_tensor_data(path: Path) -> None:
    """What root can do to the store: zero every tensor, in place, on the inode llama.cpp was given."""
    with open(path, "rb") as handle:
        start = inspect(handle).data_offset
    os.chmod(path, 0o640)
    fd = os.open(path, os.O_WRONLY)
    try:
        zeros = bytes(1 << 22)
        for at in range(start, path.stat().st_size, len(zeros)):
            os.pwrite(fd, zeros[:path.stat().st_size - at], at)
    finally:
        os.close(fd)


def assert_sealed(path: str) -> None:
    """No write reaches the sealed copy, through any descriptor or mapping, root or not."""
    assert os.geteuid() == 0, "the guarantee is against root: run as root"
    fd = os.open(path, os.O_RDWR)  # a fresh descriptor on the memfd, as another root process would get
    try:
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                                                      | fcntl.F_SEAL_SEAL)
        for attempt in (lambda: os.pwrite(fd, b"\0", 4096), lambda: os.ftruncate(fd, 4096),
                        lambda: os.posix_fallocate(fd, 0, os.fstat(fd).st_size + 4096),
                        lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE),
                        lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)):
            with pytest.raises(PermissionError):
                attempt()
    finally:
        os.close(fd)


def held_weights() -> list[str]:
    """Paths of the sealed copies this process holds, found as another process would see them."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:anticloud:"):
                found.append(f"/proc/self/fd/{fd}")
    return found


def test_overwriting_the_blob_of_a_loaded_model_changes_none_of_its_answers(home: Home,
                                                                             staged: tuple[Path, Path]) -> None:
    assert run(home, "import", str(staged[1]))[0] == 0
    store = ModelStore(home)
    blob = store.blob_path(store.get("gemma3-270m").manifest.files[0].sha3_256)
    params = Params(temperature=0, num_predict=12, repeat_penalty=1.0)
    others = set(held_weights())  # copies held by appliances that earlier tests in this process left running
    with LedgerWriter.open(home.ledger) as writer:
        app = Appliance.start(home, writer, state=ISOLATED)
        try:
            before = "".join(p for p in app.infer("gemma3-270m", PROMPT, params, "test") if isinstance(p, str))
            overwrite_tensor_data(blob)
            after = "".join(p for p in app.infer("gemma3-270m", PROMPT, params, "test") if isinstance(p, str))
            assert after == before and before.strip()
            [held] = set(held_weights()) - others
            assert_sealed(held)
        finally:
            app.stop()
    assert set(held_weights()) <= others, "the sealed copy is released with the model"
    load = next(json.loads(x)["data"] for x in home.ledger.read_bytes().splitlines()
                if json.loads(x)["kind"] == "model.load")
    assert load["weights"] == "sealed-memfd" and load["seals"] == ["write", "shrink", "grow", "seal"]
    tampered = LlamaEngine().load(LoadSpec("tampered", str(blob), 256, 2, 0, {"general.architecture": "gemma3"}))
    try:
        assert greedy(tampered, params) != before, "the overwrite must matter to a model that reads the file"
    finally:
        tampered.unload()

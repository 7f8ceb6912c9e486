"""Importing bundles: the happy path, every hostile or broken bundle, thresholds and template pins;
then loading them: one read of the signed documents, and weights held sealed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import resource
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.bundle import create_bundle, seal, sign_bundle
from anticloud.config import load_policy
from anticloud.errors import AnticloudError, BundleError, GgufError, LoadRefused, SignatureError
from anticloud.hashing import hash_fd
from anticloud.home import Home
from anticloud.identity import initialise, read_private_key
from anticloud.manifest import FileEntry, Signature, new_manifest, parse_manifest, parse_signatures, signatures_bytes
from anticloud.models import ModelStore, VerifiedModel
from anticloud.trust import TrustStore, generate_publisher_key, revoke_key, trust_key
from ledger import LedgerWriter, canonical_bytes, verify_file
from tests.gguf_builder import STRING, build, key_of, kv, rewrite

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@dataclass
class Appliance:
    home: Home
    staging: Path
    key: Ed25519PrivateKey
    weights: Path

    def ledger_kinds(self) -> list[str]:
        return [json.loads(line)["kind"] for line in self.home.ledger.read_bytes().splitlines()]

    def last_record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.home.ledger.read_bytes().splitlines()[-1])
        return data

    def bundle(self, name: str = "tiny", files: list[Path] | None = None, **kw: object) -> Path:
        out = self.staging / f"bundle-{len(list(self.staging.iterdir()))}"
        create_bundle(files or [self.weights], name, self.key, out, **kw)  # type: ignore[arg-type]
        return out

    def import_(self, bundle: Path) -> object:
        with LedgerWriter.open(self.home.ledger) as writer:
            return ModelStore(self.home).import_bundle(bundle, TrustStore.load(self.home), load_policy(self.home),
                                                       writer)

    def trust(self, pub: Path) -> None:
        with LedgerWriter.open(self.home.ledger) as writer:
            trust_key(self.home, writer, pub.read_bytes(), str(pub), None)

    def store_is_empty(self) -> bool:
        root = self.home.root / "models"
        leftovers = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        return not leftovers and not list(root.glob(".staging-*")) if root.exists() else True


@pytest.fixture
def appliance(tmp_path: Path) -> Appliance:
    home = Home(tmp_path / "home")
    initialise(home)
    staging = tmp_path / "staging"
    generate_publisher_key(staging / "keys")
    key = read_private_key(staging / "keys" / "publisher.key")
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(build())
    app = Appliance(home, staging, key, weights)
    app.trust(staging / "keys" / "publisher.pub")
    return app


def test_import_stores_content_addressed_blobs_and_records_it(appliance: Appliance) -> None:
    bundle = appliance.bundle()
    appliance.import_(bundle)
    store = ModelStore(appliance.home)
    model = store.get("tiny")
    blob = store.blob_path(model.manifest.files[0].sha3_256)
    assert blob.read_bytes() == appliance.weights.read_bytes()
    assert oct(blob.stat().st_mode & 0o777) == "0o440"
    record = appliance.last_record()
    assert record["kind"] == "model.import"
    assert record["data"]["manifest"] == model.digest  # type: ignore[index]
    assert not list((appliance.home.root / "models").glob(".staging-*"))
    assert verify_file(appliance.home.ledger).status == "intact"


# -- hostile and broken bundles -------------------------------------------------------------

def _edit_manifest(bundle: Path, change: Callable[[dict[str, object]], None], key: Ed25519PrivateKey) -> None:
    """Rewrite the manifest and re-sign it with the trusted key: only the content is hostile."""
    doc = json.loads((bundle / "manifest.json").read_bytes())
    change(doc)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    (bundle / "manifest.json").write_bytes(raw)
    from ledger import key_id_of
    from ledger.checkpoint import raw_public_key

    sig = Signature(key_id_of(raw_public_key(key.public_key())), key.sign(raw))
    (bundle / "signatures.json").write_bytes(signatures_bytes([sig]))


def _set_path(path: str) -> Callable[[dict[str, object]], None]:
    return lambda doc: doc["files"][0].update(path=path)  # type: ignore[index]


def _symlink(b: Path) -> None:
    target = b / "files" / "tiny.gguf"
    shutil.move(target, b.parent / "elsewhere.gguf")
    target.symlink_to(b.parent / "elsewhere.gguf")


def _hardlink(b: Path) -> None:
    os.link(b / "files" / "tiny.gguf", b.parent / "second-name.gguf")


def _fifo(b: Path) -> None:
    (b / "files" / "tiny.gguf").unlink()
    os.mkfifo(b / "files" / "tiny.gguf")


def _device(b: Path) -> None:
    (b / "files" / "tiny.gguf").unlink()
    os.mknod(b / "files" / "tiny.gguf", 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null


def _flip(b: Path) -> None:
    data = bytearray((b / "files" / "tiny.gguf").read_bytes())
    data[-1] ^= 1
    (b / "files" / "tiny.gguf").write_bytes(bytes(data))


HOSTILE: dict[str, tuple[Callable[[Path, Appliance], object], str]] = {
    "traversal": (lambda b, a: _edit_manifest(b, _set_path("../../etc/passwd"), a.key), "plain file name"),
    "absolute path": (lambda b, a: _edit_manifest(b, _set_path("/etc/passwd"), a.key), "plain file name"),
    "dot-dot": (lambda b, a: _edit_manifest(b, _set_path(".."), a.key), "plain file name"),
    "subdirectory": (lambda b, a: _edit_manifest(b, _set_path("sub/tiny.gguf"), a.key), "plain file name"),
    "symlink": (lambda b, a: _symlink(b), "symbolic link"),
    "hardlink": (lambda b, a: _hardlink(b), "hard links"),
    "fifo": (lambda b, a: _fifo(b), "not a regular file"),
    "device": (lambda b, a: _device(b), "not a regular file"),
    "extra file": (lambda b, a: (b / "files" / "payload.sh").write_text("x"), "payload.sh is not in the manifest"),
    "control characters in a name": (lambda b, a: (b / "files" / "a\nb\x1b[31m").write_text("x"),
                                     "'a\\nb\\x1b[31m' is not in the manifest"),
    "missing file": (lambda b, a: (b / "files" / "tiny.gguf").unlink(), "tiny.gguf is missing"),
    "size mismatch": (lambda b, a: (b / "files" / "tiny.gguf").write_bytes(b"GGUF"), "the manifest says"),
    "hash mismatch": (lambda b, a: _flip(b), "has SHA3-256"),
    "duplicate entries": (lambda b, a: _edit_manifest(
        b, lambda d: d["files"].append(dict(d["files"][0])), a.key), "twice"),  # type: ignore[attr-defined,index]
    "malformed manifest": (lambda b, a: (b / "manifest.json").write_text('{"name": "x",'), "not valid JSON"),
    "malformed signatures": (lambda b, a: (b / "signatures.json").write_text("[1, 2"), "not valid JSON"),
    "non-canonical manifest": (lambda b, a: (b / "manifest.json").write_bytes(
        b" " + (b / "manifest.json").read_bytes()), "canonical"),
    "unexpected entry": (lambda b, a: (b / "README").write_text("hi"), "exactly manifest.json"),
    "nested directory": (lambda b, a: (b / "files" / "deeper").mkdir(), "deeper is not in the manifest"),
    "symlinked manifest": (lambda b, a: _replace_with_link(b / "manifest.json"), "symbolic link"),
    "not a gguf": (lambda b, a: _corrupt_header(b, a), "bad magic"),
}


def _replace_with_link(path: Path) -> None:
    moved = path.parent.parent / ("real-" + path.name)  # outside the bundle
    path.rename(moved)
    path.symlink_to(moved)


def _corrupt_header(bundle: Path, app: Appliance) -> None:
    """A hand-made bundle that correctly signs a file which is not GGUF: signed data can still be hostile."""
    import hashlib

    junk = b"GGUX" + app.weights.read_bytes()[4:]
    (bundle / "files" / "tiny.gguf").write_bytes(junk)
    sha = "sha3-256:" + hashlib.sha3_256(junk).hexdigest()
    _edit_manifest(bundle, lambda d: d["files"][0].update(sha3_256=sha, size=len(junk)), app.key)  # type: ignore[index]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundles_are_refused_with_a_clear_reason_and_leave_nothing(appliance: Appliance, case: str) -> None:
    if case == "device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    bundle = appliance.bundle()
    damage, message = HOSTILE[case]
    damage(bundle, appliance)
    with pytest.raises(AnticloudError) as info:
        appliance.import_(bundle)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert appliance.store_is_empty(), "a rejected import must leave the store as it was"
    record = appliance.last_record()
    assert record["kind"] == "model.import.rejected"
    assert message in str(record["data"]["reason"])  # type: ignore[index]
    assert verify_file(appliance.home.ledger).status == "intact"


def test_over_the_size_limit_is_refused_before_reading(appliance: Appliance) -> None:
    appliance.home.config.write_text("[import]\nmax_file_bytes = 100\n")
    with pytest.raises(BundleError, match="over the policy limit of 100"):
        appliance.import_(appliance.bundle())
    assert appliance.store_is_empty()


def test_expired_manifest_is_refused(appliance: Appliance) -> None:
    bundle = appliance.bundle()
    _edit_manifest(bundle, lambda d: d.update(expires="2020-01-01T00:00:00.000000Z"), appliance.key)
    with pytest.raises(BundleError, match="expired at 2020-01-01"):
        appliance.import_(bundle)
    assert appliance.store_is_empty()


# -- who signed --------------------------------------------------------------------------------

def test_untrusted_key_is_refused(appliance: Appliance, tmp_path: Path) -> None:
    generate_publisher_key(tmp_path / "stranger")
    stranger = read_private_key(tmp_path / "stranger" / "publisher.key")
    out = tmp_path / "stranger-bundle"
    create_bundle([appliance.weights], "tiny", stranger, out)
    with pytest.raises(SignatureError, match="not a trusted key"):
        appliance.import_(out)
    assert appliance.last_record()["data"]["rejected_signatures"][0][1] == "not a trusted key"  # type: ignore[index]


def test_revoked_key_is_refused_and_cannot_be_trusted_again(appliance: Appliance) -> None:
    key_id = TrustStore.load(appliance.home).keys()[0].key_id
    with LedgerWriter.open(appliance.home.ledger) as writer:
        revoke_key(appliance.home, writer, key_id)
    with pytest.raises(SignatureError, match="revoked"):
        appliance.import_(appliance.bundle())
    with pytest.raises(AnticloudError, match="cannot be trusted again"):
        appliance.trust(appliance.staging / "keys" / "publisher.pub")
    assert appliance.ledger_kinds().count("trust.revoke") == 1


def test_forged_signature_is_refused(appliance: Appliance) -> None:
    bundle = appliance.bundle()
    sig = parse_signatures((bundle / "signatures.json").read_bytes())[0]
    forged = Signature(sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    (bundle / "signatures.json").write_bytes(signatures_bytes([forged]))
    with pytest.raises(SignatureError, match="does not verify"):
        appliance.import_(bundle)


def test_threshold_needs_distinct_trusted_keys(appliance: Appliance, tmp_path: Path) -> None:
    appliance.home.config.write_text("[trust]\nmin_signatures = 2\n")
    bundle = appliance.bundle()
    with pytest.raises(SignatureError, match="1 valid signature"):
        appliance.import_(bundle)
    with pytest.raises(BundleError, match="already signed"):
        sign_bundle(bundle, appliance.key)  # the same key twice does not count twice
    generate_publisher_key(tmp_path / "second")
    second = read_private_key(tmp_path / "second" / "publisher.key")
    sign_bundle(bundle, second)
    with pytest.raises(SignatureError, match="not a trusted key"):
        appliance.import_(bundle)  # signed twice, but the second key is not trusted yet
    appliance.trust(tmp_path / "second" / "publisher.pub")
    appliance.import_(bundle)
    assert len(appliance.last_record()["data"]["signers"]) == 2  # type: ignore[index]


# -- chat templates -------------------------------------------------------------------------------

def test_unpinned_chat_template_is_refused_then_accepted_once_pinned(appliance: Appliance, tmp_path: Path) -> None:
    weights = tmp_path / "templated.gguf"
    weights.write_bytes(build([kv("tokenizer.chat_template", STRING, TEMPLATE)]))
    bundle = appliance.bundle("templated", [weights])
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    sha = manifest["chat_templates"][0]["sha3_256"]
    with pytest.raises(BundleError, match=f"not pinned by the policy.*{sha}|{sha}.*not pinned"):
        appliance.import_(bundle)
    appliance.home.config.write_text(f'[chat_templates]\npinned = ["{sha}"]\n')
    appliance.import_(bundle)
    assert appliance.last_record()["data"]["chat_templates"] == [sha]  # type: ignore[index]


def test_a_template_is_reviewed_then_pinned_by_one_recorded_command(appliance: Appliance, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from anticloud.cli import cli

    weights = tmp_path / "templated.gguf"
    weights.write_bytes(build([kv("tokenizer.chat_template", STRING, TEMPLATE)]))
    bundle = str(appliance.bundle("templated", [weights]))
    sha = json.loads((Path(bundle) / "manifest.json").read_bytes())["chat_templates"][0]["sha3_256"]

    def anticloud(*args: str, answer: str | None = None) -> Any:
        return CliRunner().invoke(cli, ["--home", str(appliance.home.root), *args], input=answer)

    shown = anticloud("models", "template", bundle)
    assert shown.exit_code == 0 and f"{sha}  (NOT pinned)" in shown.output and TEMPLATE in shown.output
    before = appliance.home.ledger.read_bytes()
    declined = anticloud("models", "pin", bundle, answer="n\n")
    assert declined.exit_code == 1 and appliance.home.ledger.read_bytes() == before  # nothing pinned, nothing recorded
    assert anticloud("models", "pin", bundle, answer="y\n").exit_code == 0
    change = appliance.last_record()
    assert change["kind"] == "config.change" and change["data"]["key"] == "chat_templates.pinned"  # type: ignore[index]
    assert change["data"]["new"] == [sha] and change["data"]["why"] == {  # type: ignore[index]
        "pinned_from": bundle, "templates": [{"file": "templated.gguf", "key": "tokenizer.chat_template",
                                              "sha3_256": sha}]}
    appliance.import_(Path(bundle))
    assert f"{sha}  (pinned)" in anticloud("models", "template", "templated").output
    assert "nothing to pin" in anticloud("models", "pin", "templated", "--yes").output

    # A template the signed manifest does not declare is never pinned: its import would be refused.
    undeclared = appliance.bundle("undeclared", [weights])
    manifest = json.loads((undeclared / "manifest.json").read_bytes())
    (undeclared / "manifest.json").write_bytes(canonical_bytes({**manifest, "chat_templates": []}))
    refused = anticloud("models", "pin", str(undeclared), "--yes")
    assert refused.exit_code != 0 and "not declared by the signed manifest" in refused.output


def test_bundle_files_must_be_the_ones_the_staging_machine_hashed(appliance: Appliance) -> None:
    bundle = appliance.bundle(expires=datetime.now(UTC) + timedelta(days=30))
    manifest = json.loads((bundle / "manifest.json").read_bytes())
    assert manifest["expires"] is not None and manifest["files"][0]["size"] == appliance.weights.stat().st_size


def test_a_full_store_disk_is_refused_recorded_and_cleaned_up(appliance: Appliance,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import anticloud.models as models

    def no_space(src: int, dst: int | None, progress: object = None) -> tuple[str, int]:
        raise OSError(errno.ENOSPC, "No space left on device", "staging")

    monkeypatch.setattr(models, "copy_and_hash", no_space)
    with pytest.raises(AnticloudError, match="import failed: No space left on device"):
        appliance.import_(appliance.bundle())
    assert appliance.store_is_empty()
    assert appliance.last_record()["kind"] == "model.import.rejected"


# -- loading: the bytes checked are the bytes used ----------------------------------------------


def test_the_stored_manifest_is_read_once_and_the_bytes_checked_are_the_bytes_used(appliance: Appliance) -> None:
    appliance.import_(appliance.bundle())
    documents = appliance.home.root / "models" / "manifests" / "tiny"
    genuine = (documents / "manifest.json").read_bytes()
    # Root plants other weights in the store and a manifest naming them, and puts the signed
    # manifest back as soon as the forged one has been read.
    foreign = build(tensors=[("weight", [8, 8], 0)])
    sha = "sha3-256:" + hashlib.sha3_256(foreign).hexdigest()
    (appliance.home.root / "models" / "blobs" / sha.replace(":", "-")).write_bytes(foreign)
    manifest = parse_manifest(genuine)
    forged = replace(manifest, files=(FileEntry(manifest.files[0].path, len(foreign), sha),)).to_bytes()
    (documents / "manifest.json").write_bytes(forged)
    reads: list[str] = []

    def read_then_restore(path: Path) -> bytes:
        data = path.read_bytes()
        reads.append(path.name)
        if path.name == "manifest.json":
            path.write_bytes(genuine)
        return data

    store = ModelStore(appliance.home, read=read_then_restore)
    with LedgerWriter.open(appliance.home.ledger) as writer, pytest.raises(LoadRefused, match="signature"):
        store.open_verified("tiny", TrustStore.load(appliance.home), load_policy(appliance.home), writer).close()
    assert sorted(reads) == ["manifest.json", "signatures.json"]
    refused = appliance.last_record()
    assert refused["kind"] == "model.load.refused"
    assert refused["data"]["manifest"] == "sha3-256:" + hashlib.sha3_256(forged).hexdigest()  # type: ignore[index]


def open_tiny(appliance: Appliance) -> VerifiedModel:
    with LedgerWriter.open(appliance.home.ledger) as writer:
        return ModelStore(appliance.home).open_verified("tiny", TrustStore.load(appliance.home),
                                                        load_policy(appliance.home), writer)


def test_the_weights_are_held_in_a_sealed_copy_that_refuses_every_write(appliance: Appliance) -> None:
    appliance.import_(appliance.bundle())
    verified = open_tiny(appliance)
    try:
        assert os.readlink(verified.path) == "/memfd:anticloud:tiny (deleted)"
        assert verified.holding() == {"weights": "sealed-memfd", "seals": ["write", "shrink", "grow", "seal"]}
        assert os.pread(verified.fd, 1 << 20, 0) == appliance.weights.read_bytes()
        assert verified.info.data_offset > 0 and verified.info.metadata["general.architecture"] == "test"
        for attempt in (lambda: os.write(verified.fd, b"x"), lambda: os.ftruncate(verified.fd, 0),
                        lambda: mmap.mmap(verified.fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)):
            with pytest.raises(PermissionError):
                attempt()
        assert os.pread(verified.fd, 1 << 20, 0) == appliance.weights.read_bytes()
    finally:
        verified.close()


def test_a_truncated_blob_is_refused_at_load_and_recorded(appliance: Appliance) -> None:
    appliance.import_(appliance.bundle())
    entry = ModelStore(appliance.home).get("tiny").manifest.files[0]
    blob = ModelStore(appliance.home).blob_path(entry.sha3_256)
    os.truncate(blob, entry.size - 1)
    with pytest.raises(LoadRefused, match=f"is {entry.size - 1} bytes, the signed manifest says {entry.size}"):
        open_tiny(appliance)
    refused = appliance.last_record()
    assert refused["kind"] == "model.load.refused" and refused["data"]["size"] == entry.size - 1  # type: ignore[index]


def test_weights_that_cannot_be_held_in_memory_are_refused_in_one_line_and_recorded(appliance: Appliance) -> None:
    weights = appliance.staging.parent / "big.gguf"
    weights.write_bytes(build(tensors=[("weight", [256, 960], 0)]))  # ~960 KiB, over the limit set below
    appliance.import_(appliance.bundle(files=[weights], name="tiny"))
    held = sealed_copies()  # those of appliances that earlier tests in this process left running
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # The kernel refuses to reserve the copy's memory, as it would on a host short of memory;
    # the ledger, well under the limit, still takes the refusal.
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, hard))
    try:
        assert appliance.home.ledger.stat().st_size < 256 << 10
        with pytest.raises(LoadRefused) as info:
            open_tiny(appliance)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(info.value)
    assert "\n" not in message and "cannot hold big.gguf of tiny" in message and "in sealed memory" in message
    refused = appliance.last_record()
    assert refused["kind"] == "model.load.refused" and "sealed memory" in refused["data"]["reason"]  # type: ignore[index]
    assert sealed_copies() <= held, "the refused load left its copy open"


def sealed_copies() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:anticloud:"):
                found.add(fd)
    return found

# -- keys that llama.cpp reads differently, in the real model --------------------------------------

UNPINNED = '{{ raise_exception("an unpinned chat template ran") }}'


def _nul_keys(entries: list[bytes]) -> list[bytes]:
    """general.architecture and tokenizer.chat_template, each followed by a NUL byte: other keys
    to Python's strings, the very keys to llama.cpp's C strings."""
    out = [kv("general.architecture\0", STRING, "gemma3") if key_of(e) == b"general.architecture" else e
           for e in entries]
    return [*out, kv("tokenizer.chat_template\0", STRING, UNPINNED)]


@pytest.fixture(scope="module")
def nul_keyed_gemma(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("crafted") / "gemma-3-270m-q4_k_m.gguf"
    rewrite(gemma_path, path, _nul_keys)
    return path


def _bundle_by_hand(app: Appliance, files: list[Path], name: str) -> Path:
    """A correctly signed bundle made without `create_bundle`, whose own checks would refuse it:
    a hostile publisher does not use our tools."""
    out = app.staging / f"by-hand-{name}"
    (out / "files").mkdir(parents=True)
    entries = []
    for source in files:
        shutil.copyfile(source, out / "files" / source.name)
        with open(out / "files" / source.name, "rb") as handle:
            sha, size = hash_fd(handle.fileno())
        entries.append(FileEntry(source.name, size, sha))
    seal(out, new_manifest(name, entries, []), app.key)
    return out


def _as_an_earlier_version_imported(app: Appliance, bundle: Path, name: str) -> None:
    """Put a bundle into the store as an import without today's checks would have."""
    store = ModelStore(app.home)
    for src in (bundle / "files").iterdir():
        with open(src, "rb") as handle:
            blob = store.blob_path(hash_fd(handle.fileno())[0])
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        blob.chmod(0o440)
    (store.manifests / name).mkdir(parents=True)
    for document in ("manifest.json", "signatures.json"):
        shutil.copyfile(bundle / document, store.manifests / name / document)


@pytest.mark.slow
def test_llama_cpp_reads_a_key_only_up_to_a_nul_byte(nul_keyed_gemma: Path) -> None:
    """The attack this guards against, on llama.cpp itself: it takes the crafted keys for the real
    ones, and its chat formatter runs the template."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(nul_keyed_gemma), n_ctx=64, n_threads=2, verbose=False)
    try:
        assert llm.metadata["general.architecture"] == "gemma3"
        assert llm.metadata["tokenizer.chat_template"] == UNPINNED
        with pytest.raises(ValueError, match="an unpinned chat template ran"):
            llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    finally:
        llm.close()


@pytest.mark.slow
def test_keys_llama_cpp_reads_differently_are_refused_at_import_and_at_load(
        appliance: Appliance, nul_keyed_gemma: Path) -> None:
    bundle = _bundle_by_hand(appliance, [nul_keyed_gemma], "crafted")
    with pytest.raises(GgufError) as refused:
        appliance.import_(bundle)
    message = str(refused.value)
    assert "'general.architecture\\x00'" in message and "NUL" in message and "\n" not in message
    assert appliance.store_is_empty()
    assert appliance.last_record()["kind"] == "model.import.rejected"
    assert "NUL" in str(appliance.last_record()["data"]["reason"])  # type: ignore[index]

    _as_an_earlier_version_imported(appliance, bundle, "crafted")
    with LedgerWriter.open(appliance.home.ledger) as writer, pytest.raises(LoadRefused, match="NUL") as at_load:
        ModelStore(appliance.home).open_verified("crafted", TrustStore.load(appliance.home),
                                                 load_policy(appliance.home), writer)
    assert "\n" not in str(at_load.value)
    record = appliance.last_record()
    assert record["kind"] == "model.load.refused" and "NUL" in str(record["data"]["reason"])  # type: ignore[index]
    assert verify_file(appliance.home.ledger).status == "intact"


# -- one model, one GGUF file ----------------------------------------------------------------------

def test_a_bundle_of_two_gguf_files_is_refused_before_a_byte_is_copied(
        appliance: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anticloud.models as models
    from anticloud.hashing import copy_and_hash as real_copy_and_hash

    second = tmp_path / "second.gguf"
    second.write_bytes(build([kv("general.architecture", STRING, "other")]))
    bundle = _bundle_by_hand(appliance, [appliance.weights, second], "two")
    copied: list[int] = []

    def copy_and_hash(src: int, dst: int | None, progress: object = None) -> tuple[str, int]:
        copied.append(src)
        return real_copy_and_hash(src, dst)

    monkeypatch.setattr(models, "copy_and_hash", copy_and_hash)
    with pytest.raises(BundleError) as info:
        appliance.import_(bundle)
    assert str(info.value) == ("a model is exactly one .gguf file (a split model must be merged first); "
                               "the bundle holds 2: second.gguf, tiny.gguf")
    assert not copied, "the manifest alone says the bundle can never load: nothing is to be copied"
    assert appliance.store_is_empty()
    record = appliance.last_record()
    assert record["kind"] == "model.import.rejected" and record["data"]["reason"] == str(info.value)  # type: ignore[index]


def test_a_bundle_without_a_gguf_file_is_refused_before_a_byte_is_copied(appliance: Appliance, tmp_path: Path) -> None:
    readme = tmp_path / "README.txt"
    readme.write_text("no weights here")
    with pytest.raises(BundleError, match="the bundle holds none"):
        appliance.import_(_bundle_by_hand(appliance, [readme], "none"))
    assert appliance.store_is_empty()
    assert appliance.last_record()["kind"] == "model.import.rejected"


def test_the_staging_machine_refuses_to_bundle_two_gguf_files(appliance: Appliance, tmp_path: Path) -> None:
    second = tmp_path / "second.gguf"
    second.write_bytes(build())
    out = tmp_path / "two"
    with pytest.raises(BundleError, match=r"the bundle holds 2: second\.gguf, tiny\.gguf"):
        create_bundle([appliance.weights, second], "two", appliance.key, out)
    assert not out.exists()


# -- the layout, from the signed manifest alone, before a byte is copied -----------------------------

def _declare_template(file: str) -> Callable[[dict[str, object]], None]:
    """A manifest declaring a chat template, unpinned, for ``file``."""
    sha = "sha3-256:" + hashlib.sha3_256(TEMPLATE.encode()).hexdigest()
    return lambda doc: doc.update(chat_templates=[{"file": file, "key": "tokenizer.chat_template", "sha3_256": sha}])


def _by_hand_with_readme(app: Appliance, tmp_path: Path, change: Callable[[dict[str, object]], None]) -> Path:
    readme = tmp_path / "README.txt"
    readme.write_text("the weights, and a note")
    bundle = _bundle_by_hand(app, [app.weights, readme], "noted")
    _edit_manifest(bundle, change, app.key)
    return bundle


LAYOUT: dict[str, tuple[Callable[[dict[str, object]], None], str]] = {
    "a template declared for a file that is not the weights": (
        _declare_template("README.txt"), "is declared for README.txt, which is not the model's .gguf file"),
    "an unpinned template": (_declare_template("tiny.gguf"), "is not pinned by the policy"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT))
def test_a_manifest_that_breaks_the_layout_is_refused_before_a_byte_is_copied(
        appliance: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    import anticloud.models as models
    from anticloud.hashing import copy_and_hash as real_copy_and_hash

    change, message = LAYOUT[case]
    bundle = _by_hand_with_readme(appliance, tmp_path, change)
    copied: list[int] = []

    def copy_and_hash(src: int, dst: int | None, progress: object = None) -> tuple[str, int]:
        copied.append(src)
        return real_copy_and_hash(src, dst)

    monkeypatch.setattr(models, "copy_and_hash", copy_and_hash)
    with pytest.raises(BundleError, match=message) as info:
        appliance.import_(bundle)
    assert not copied, "the signed manifest alone refuses the bundle: nothing is to be copied"
    assert appliance.store_is_empty() and not (appliance.home.root / "models").exists()
    record = appliance.last_record()
    assert record["kind"] == "model.import.rejected" and record["data"]["reason"] == str(info.value)  # type: ignore[index]
    assert verify_file(appliance.home.ledger).status == "intact"


def test_the_layout_rules_refuse_at_load_what_they_refuse_at_import(appliance: Appliance, tmp_path: Path) -> None:
    """A model stored by an import without today's checks is refused at load by the same rule, in the same words."""
    bundle = _by_hand_with_readme(appliance, tmp_path, _declare_template("README.txt"))
    with pytest.raises(BundleError) as at_import:
        appliance.import_(bundle)
    _as_an_earlier_version_imported(appliance, bundle, "noted")
    with LedgerWriter.open(appliance.home.ledger) as writer, pytest.raises(LoadRefused) as at_load:
        ModelStore(appliance.home).open_verified("noted", TrustStore.load(appliance.home),
                                                 load_policy(appliance.home), writer)
    assert str(at_load.value) == f"refusing to load noted: {at_import.value}"
    record = appliance.last_record()
    assert record["kind"] == "model.load.refused" and record["data"]["reason"] == str(at_import.value)  # type: ignore[index]

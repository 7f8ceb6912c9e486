"""Evidence packages: made by `anticloud audit package` on a ledger the CLI wrote, verified by the
standard-library tool in an isolated interpreter, and by `ledger.verify_package`; both give the same
verdict on good and tampered packages, naming the first bad item."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.cli import cli
from anticloud.home import Home
from ledger import (
    Checkpoint,
    LedgerWriter,
    ed25519_valid,
    load_public_key,
    raw_public_key,
    records_forward,
    sign_checkpoint,
    verify_package,
)
from ledger.errors import LedgerReadError
from ledger.record import parse_line, seal
from tests.conftest import genesis_for
from tests.standalone import TOOL, verifier

ROOT = Path(__file__).resolve().parent.parent
tool = verifier("verify_ledger_package_tool")

FAULT_COMPARED = ("reason", "file", "seq", "line", "offset")


def run(home: Home, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home.root), *args])


def inference(writer: LedgerWriter, person: str, n: int) -> None:
    """What the server records for one request of ``person``'s token (hashes, not text)."""
    ident = f"{person}-{n}"
    writer.append("inference.begin", {"id": ident, "model": "tiny", "client": f"token:{person}",
                                      "prompt_sha3_256": "sha3-256:" + hashlib.sha3_256(ident.encode()).hexdigest(),
                                      "kind": "completion", "airgap": "isolated", "params": {}})
    writer.append("inference.end", {"id": ident, "done_reason": "stop", "output_chars": 3,
                                    "output_sha3_256": "sha3-256:" + "0" * 64, "airgap": "isolated"})


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A home initialised by the CLI, with tokens made by the CLI, requests by alice and bob
    interleaved, and a checkpoint taken by the CLI after alice's last request."""
    home = Home(tmp_path / "home")
    assert run(home, "init").exit_code == 0
    for person in ("alice", "bob"):
        assert run(home, "tokens", "create", person).exit_code == 0
    with LedgerWriter.open(home.ledger) as writer:
        for n in range(3):
            inference(writer, "bob", n)
            inference(writer, "alice", n)
        inference(writer, "bob", 9)
    assert run(home, "ledger", "checkpoint").exit_code == 0
    with LedgerWriter.open(home.ledger) as writer:
        inference(writer, "bob", 10)
    return home


def records(home: Home) -> list[Any]:
    return [located.record for located in records_forward(home.ledger)]


def package(home: Home, out: Path, *args: str) -> Path:
    result = run(home, "audit", "package", *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/")[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def isolated(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The tool as a recipient runs it: isolated mode (no user site, no PYTHON* variables), a bare environment."""
    return subprocess.run([sys.executable, "-I", *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, cwd="/")


def both(path: Path, pubkey: bytes | None = None, signatures: bool = True) -> dict[str, Any]:
    """Both verifiers' verdicts on ``path``; they must agree. Returns the package's."""
    ours = verify_package(path, pubkey, ed25519_valid if signatures else None).to_json()
    theirs = tool.verify_package(str(path), pubkey, tool.signature_checker() if signatures else None)
    assert ours == theirs
    return ours


# -- made by the CLI, verified by the tool ----------------------------------------------------------------


def test_a_persons_package_holds_the_span_to_the_next_checkpoint_and_verifies_in_isolation(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--person", "alice")
    all_records = records(home)
    alice = [r.seq for r in all_records if r.data.get("client") == "token:alice"
             or r.data.get("id", "").startswith("alice-")]
    checkpoint_record = next(r for r in all_records if r.kind == "ledger.checkpoint")
    files = members(out)
    manifest = json.loads(files["manifest.json"])
    assert manifest["in_scope"]["count"] == len(alice) == 6
    assert [seq for a, b in manifest["in_scope"]["runs"] for seq in range(a, b + 1)] == alice
    assert manifest["segment"] == {"first_seq": alice[0], "last_seq": checkpoint_record.seq - 1,
                                   "records": checkpoint_record.seq - alice[0]}
    assert manifest["checkpoint"]["source"] == "ledger record"
    assert manifest["checkpoint"]["record_seq"] == checkpoint_record.seq
    assert manifest["context"] and "included for that reason alone" in files["README.txt"].decode()
    assert "No record in this package holds prompt, input or output text" in files["README.txt"].decode()
    assert files["verify_ledger.py"] == TOOL.read_bytes()
    segment = files["segment.jsonl"].splitlines()
    assert [parse_line(line).seq for line in segment] == list(range(alice[0], checkpoint_record.seq))
    assert all(b'"prompt":' not in line for line in segment)  # hashes, not the prompt

    export = all_records[-1]
    assert export.kind == "ledger.export"
    assert export.data["actor"]["uid"] == os.getuid()
    assert export.data["records"] == 6
    assert export.data["filter"]["persons"] == ["alice"]
    assert export.data["package"]["manifest_sha3_256"] == "sha3-256:" + hashlib.sha3_256(
        files["manifest.json"]).hexdigest()
    assert export.data["package"]["sha3_256"] == "sha3-256:" + hashlib.sha3_256(out.read_bytes()).hexdigest()

    done = isolated(TOOL, "--package", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"INTACT: {out}")
    assert f"pinned            seq {alice[0]}..{checkpoint_record.seq - 1}" in done.stdout
    # The copy inside, on the unpacked directory, as the README says.
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    inside = tmp_path / "unpacked" / "alice"
    done = isolated(inside / "verify_ledger.py", "--package", inside, "--pubkey", home.identity_pub, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["in_scope"] == 6 and verdict["unpinned"] == 0 and verdict["key_id"] == manifest["key_id"]
    both(out)


def test_a_range_with_no_checkpoint_after_it_gets_a_fresh_one_recorded(home, tmp_path):
    before = records(home)
    out = package(home, tmp_path / "today.tar", "--since", before[-1].ts[:10])
    after = records(home)
    assert [r.kind for r in after[len(before):]] == ["ledger.checkpoint", "ledger.export"]
    manifest = json.loads(members(out)["manifest.json"])
    assert manifest["checkpoint"]["source"] == "appended for this package"
    assert manifest["segment"]["first_seq"] == 0 and manifest["segment"]["last_seq"] == before[-1].seq
    assert manifest["in_scope"] == {"count": len(before), "runs": [[0, before[-1].seq]]}
    assert manifest["context"] is None
    assert isolated(TOOL, "--package", out).returncode == 0


def test_refusals_are_one_line_and_leave_nothing(home, tmp_path):
    out = package(home, tmp_path / "a.tar", "--person", "alice")
    size = len(records(home))
    again = run(home, "audit", "package", "--person", "alice", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.output and len(records(home)) == size
    nobody = run(home, "audit", "package", "--person", "carol", "--out", str(tmp_path / "c.tar"))
    assert nobody.exit_code == 1 and "no record matches" in nobody.output
    assert not (tmp_path / "c.tar").exists()
    not_tar = run(home, "audit", "package", "--person", "alice", "--out", str(tmp_path / "a.zip"))
    assert not_tar.exit_code == 1 and "tar archive" in not_tar.output
    nothing_asked = run(home, "audit", "package", "--out", str(tmp_path / "d.tar"))
    assert nothing_asked.exit_code == 2 and "--person" in nothing_asked.output
    assert len(records(home)) == size
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


# -- tampering: both verifiers, the same first bad item -------------------------------------------------


def unpack(out: Path, where: Path) -> Path:
    with tarfile.open(out) as tar:
        tar.extractall(where, filter="data")
    return where / out.name.removesuffix(".tar")


def rehash(pkg: Path) -> None:
    """Make the manifest's file hashes match again, as a forger would."""
    manifest = json.loads((pkg / "manifest.json").read_bytes())
    manifest["files"] = {name: "sha3-256:" + hashlib.sha3_256((pkg / name).read_bytes()).hexdigest()
                         for name in manifest["files"]}
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def edit_lines(pkg: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    path = pkg / "segment.jsonl"
    path.write_bytes(b"".join(edit(path.read_bytes().splitlines(keepends=True))))


def flip_in_record(lines: list[bytes]) -> list[bytes]:
    line = lines[2]
    at = line.index(b'"id":"') + 7
    return [*lines[:2], line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1:], *lines[3:]]


def reseal_from(lines: list[bytes], at: int, change: Callable[[dict[str, Any]], dict[str, Any]]) -> list[bytes]:
    """Change record ``at`` and recompute every hash after it: only the checkpoint can tell."""
    out, prev = list(lines[:at]), parse_line(lines[at - 1][:-1]).hash if at else None
    for line in lines[at:]:
        r = parse_line(line[:-1])
        sealed, raw = seal(r.seq, r.kind, change(r.data) if not out[at:] else r.data, prev or r.prev, r.ts)
        out.append(raw)
        prev = sealed.hash
    return out


def other_checkpoint(tmp_path: Path) -> Callable[[Path], None]:
    def swap(pkg: Path) -> None:
        key = Ed25519PrivateKey.generate()
        with LedgerWriter.create(tmp_path / "other.jsonl", genesis_for(key)) as writer:
            head = writer.append("test.event", {})
            genesis = writer.genesis.data
        cp = Checkpoint(genesis["ledger_id"], head.seq, head.hash, head.ts, genesis["key_id"])
        (pkg / "checkpoint.json").write_bytes(sign_checkpoint(cp, key).to_bytes())
    return swap


def forged_signature(pkg: Path) -> None:
    doc = json.loads((pkg / "checkpoint.json").read_bytes())
    cp = Checkpoint(**{k: doc["checkpoint"][k] for k in ("ledger_id", "seq", "hash", "ts", "key_id")})
    signed = sign_checkpoint(cp, Ed25519PrivateKey.generate())
    (pkg / "checkpoint.json").write_bytes(signed.to_bytes())


def swapped_genesis(tmp_path: Path) -> Callable[[Path], None]:
    def swap(pkg: Path) -> None:
        with LedgerWriter.create(tmp_path / "third.jsonl", genesis_for(Ed25519PrivateKey.generate())):
            pass
        (pkg / "genesis.jsonl").write_bytes((tmp_path / "third.jsonl").read_bytes())
    return swap


def manifest_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(pkg: Path) -> None:
        manifest = json.loads((pkg / "manifest.json").read_bytes())
        change(manifest)
        (pkg / "manifest.json").write_text(json.dumps(manifest))
    return edit


def resealed(pkg: Path) -> None:
    edit_lines(pkg, lambda ls: reseal_from(ls, 2, lambda d: {**d, "x": 1}))
    rehash(pkg)


def dropped_last(pkg: Path) -> None:
    edit_lines(pkg, lambda ls: ls[:-1])
    rehash(pkg)


def linked_readme(pkg: Path) -> None:
    (pkg / "README.txt").unlink()
    (pkg / "README.txt").symlink_to("/etc/hostname")


def tampers(tmp_path: Path) -> dict[str, tuple[Callable[[Path], object], str, str, int | None]]:
    """name -> (change to the unpacked package, reason, file, seq offset from the first record or None)."""
    return {
        "edited_record": (lambda p: edit_lines(p, flip_in_record), "hash_mismatch", "segment.jsonl", 2),
        "edited_and_resealed": (resealed, "checkpoint_mismatch", "segment.jsonl", -1),
        "dropped_record": (lambda p: edit_lines(p, lambda ls: ls[:3] + ls[4:]), "seq_mismatch", "segment.jsonl", 3),
        "dropped_first": (lambda p: edit_lines(p, lambda ls: ls[1:]), "seq_mismatch", "segment.jsonl", 0),
        "dropped_last": (dropped_last, "truncated_below_checkpoint", "segment.jsonl", -1),
        "reordered": (lambda p: edit_lines(p, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]]), "seq_mismatch",
                      "segment.jsonl", 1),
        "checkpoint_of_another_ledger": (other_checkpoint(tmp_path), "checkpoint_mismatch", "checkpoint.json", None),
        "checkpoint_forged": (forged_signature, "bad_signature", "checkpoint.json", None),
        "swapped_genesis": (swapped_genesis(tmp_path), "checkpoint_mismatch", "checkpoint.json", None),
        "manifest_count": (manifest_edit(lambda m: m["in_scope"].update(count=1)), "manifest_mismatch",
                           "manifest.json", None),
        "manifest_first_seq": (manifest_edit(lambda m: m["segment"].update(first_seq=m["segment"]["first_seq"] + 1)),
                               "seq_mismatch", "segment.jsonl", 1),
        "manifest_scope_outside": (manifest_edit(lambda m: m["in_scope"].update(
            runs=[[m["segment"]["first_seq"] - 1, m["segment"]["first_seq"] - 1]], count=1)),
            "manifest_mismatch", "manifest.json", None),
        "manifest_file_hash": (manifest_edit(lambda m: m["files"].update({"README.txt": "sha3-256:" + "0" * 64})),
                               "file_mismatch", "README.txt", None),
        "manifest_not_json": (lambda p: (p / "manifest.json").write_bytes(b"{\"v\": 1.5}"), "manifest_invalid",
                              "manifest.json", None),
        "readme_edited": (lambda p: (p / "README.txt").write_text("all fine, no need to check"), "file_mismatch",
                          "README.txt", None),
        "verifier_edited": (lambda p: (p / "verify_ledger.py").write_text("print('INTACT')"), "file_mismatch",
                            "verify_ledger.py", None),
        "file_added": (lambda p: (p / "notes.txt").write_text("x"), "file_extra", "notes.txt", None),
        "genesis_removed": (lambda p: (p / "genesis.jsonl").unlink(), "file_missing", "genesis.jsonl", None),
        "symlink": (linked_readme, "package_invalid", "README.txt", None),
    }


def retar(pkg: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        tar.add(pkg, arcname=pkg.name)
    return out


@pytest.fixture
def alice_package(home: Home, tmp_path: Path) -> Path:
    return package(home, tmp_path / "alice.tar", "--person", "alice")


@pytest.mark.parametrize("name", sorted(tampers(Path("/unused"))))
def test_a_tampered_package_fails_at_its_first_bad_item_in_both_verifiers(alice_package, tmp_path, name):
    change, reason, file, seq_from_first = tampers(tmp_path)[name]
    pkg = unpack(alice_package, tmp_path / "unpacked")
    first = json.loads((pkg / "manifest.json").read_bytes())["segment"]["first_seq"]
    last = json.loads((pkg / "manifest.json").read_bytes())["checkpoint"]["seq"]
    change(pkg)
    verdict = both(pkg)
    assert verdict["verdict"] == "broken" and verdict["exit_code"] == 1
    fault = verdict["fault"]
    assert (fault["reason"], fault["file"]) == (reason, file), fault
    if seq_from_first is not None:
        assert fault["seq"] == (last if seq_from_first == -1 else first + seq_from_first)
    if name != "symlink":  # a tar keeps a link as a link: package_invalid there too
        tarred = retar(pkg, tmp_path / "tampered.tar")
        assert {k: both(tarred)["fault"][k] for k in FAULT_COMPARED} == {k: fault[k] for k in FAULT_COMPARED}
        done = isolated(TOOL, "--package", tarred)
        assert done.returncode == 1 and done.stdout.startswith("BROKEN:")
        assert f"{reason}:" in done.stdout and file in done.stdout


def test_a_forger_with_their_own_key_is_caught_only_by_the_key_the_recipient_holds(alice_package, tmp_path, home):
    """Swap the genesis for one naming a forger's key, re-sign the checkpoint, fix the manifest: every
    rule holds, and the key id differs. The README's out-of-band comparison (or --pubkey) catches it."""
    pkg = unpack(alice_package, tmp_path / "unpacked")
    key = Ed25519PrivateKey.generate()
    genesis = parse_line((pkg / "genesis.jsonl").read_bytes()[:-1])
    raw = raw_public_key(key.public_key())
    data = {**genesis.data, "public_key": raw.hex(), "key_id": "sha3-256:" + hashlib.sha3_256(raw).hexdigest()}
    (pkg / "genesis.jsonl").write_bytes(seal(0, genesis.kind, data, genesis.prev, genesis.ts)[1])
    doc = json.loads((pkg / "checkpoint.json").read_bytes())["checkpoint"]
    cp = Checkpoint(doc["ledger_id"], doc["seq"], doc["hash"], doc["ts"], data["key_id"])
    (pkg / "checkpoint.json").write_bytes(sign_checkpoint(cp, key).to_bytes())
    manifest_edit(lambda m: m.update(key_id=data["key_id"]))(pkg)
    rehash(pkg)
    assert both(pkg)["verdict"] == "intact"
    assert both(pkg)["key_id"] != json.loads(members(alice_package)["manifest.json"])["key_id"]
    held = load_public_key(home.identity_pub)
    verdict = both(pkg, pubkey=held)
    assert verdict["fault"]["reason"] == "key_mismatch" and verdict["fault"]["file"] == "genesis.jsonl"
    done = isolated(TOOL, "--package", pkg, "--pubkey", home.identity_pub)
    assert done.returncode == 1 and "key_mismatch" in done.stdout


def test_without_signatures_checked_a_package_is_never_a_pass(alice_package):
    verdict = both(alice_package, signatures=False)
    assert verdict["verdict"] == "unchecked" and verdict["exit_code"] == 5
    assert tool.render_package(verdict).startswith("SIGNATURES NOT CHECKED:")


def test_a_checkpoint_record_inside_the_segment_is_checked_too(home, tmp_path):
    """A range that spans a checkpoint record: the record is verified like any other (rule 9)."""
    out = package(home, tmp_path / "all.tar", "--since", "2000-01-01")
    verdict = both(out)
    assert verdict["verdict"] == "intact" and verdict["checkpoints_in_segment"] == 1
    pkg = unpack(out, tmp_path / "unpacked")
    at = next(i for i, line in enumerate((pkg / "segment.jsonl").read_bytes().splitlines())
              if b'"kind":"ledger.checkpoint"' in line)
    edit_lines(pkg, lambda ls: reseal_from(ls, at, lambda d: {**d, "signature": "A" * 86 + "=="}))
    assert both(pkg)["fault"]["reason"] == "bad_signature"
    assert both(pkg)["fault"]["seq"] == at


def test_usage_and_unreadable_packages_exit_2(tmp_path, alice_package):
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    junk = isolated(TOOL, "--package", tmp_path / "junk.tar")
    assert junk.returncode == 2 and junk.stderr.count("\n") == 1 and "neither a directory nor a tar" in junk.stderr
    with pytest.raises(LedgerReadError, match="neither a directory nor a tar archive") as raised:
        verify_package(tmp_path / "junk.tar")
    assert "\n" not in str(raised.value)
    assert isolated(TOOL, "--package", tmp_path / "missing.tar").returncode == 2
    assert isolated(TOOL, "--package", alice_package, "--checkpoint", alice_package).returncode == 2
    assert isolated(TOOL, "ledger.jsonl", "--package", alice_package).returncode == 2
    shutil.copy(alice_package, tmp_path / "copy.tar")
    assert isolated(TOOL, "--package", tmp_path / "copy.tar").returncode == 0

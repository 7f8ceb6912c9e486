"""Evidence packages that disclose sealed content (`audit package --with-content`): what is in
content.jsonl, that both verifiers check every line against the segment, and that each tamper
is a fault in both, at the line, with its reason."""

from __future__ import annotations

import base64
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.home import Home
from anticloud.vault import ContentStore, Keyring
from anticloud.vault.sealer import pinned_sealer
from ledger import LedgerWriter, aesgcm_open, records_forward, verify_package
from tests.standalone import verifier
from tests.test_evidence_package import isolated, rehash, unpack

tool = verifier("verify_ledger_content_tool")
TOOL = Path(__file__).resolve().parent.parent / "tools" / "verify_ledger.py"

ASKED: dict[str, tuple[str, dict[str, Any], str]] = {
    "a000000000000001": ("alice", {"prompt": "Is patient Zebediah Quill diabetic?"}, "I cannot tell from this."),
    "b000000000000001": ("bob", {"prompt": "Bob's question"}, "Bob's answer"),
    "a000000000000002": ("alice", {"messages": [{"content": "Name the ward.", "role": "user"}]}, "Ward 7."),
    "b000000000000002": ("bob", {"prompt": "Bob again"}, "again"),
}


def run(home: Home, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home.root), *args])


def infer(home: Home, writer: LedgerWriter, ident: str) -> None:
    """One inference as the engine records it under record_content = "sealed", through its own sealer."""
    person, asked, answer = ASKED[ident]
    ledger_id = str(writer.genesis.data["ledger_id"])
    sealer = pinned_sealer(Keyring(home.keyring), ContentStore(home.content), home.ledger, ledger_id)
    kind = "chat" if "messages" in asked else "completion"
    writer.append("inference.begin", {"id": ident, "model": "tiny", "client": f"token:{person}", "kind": kind,
                                      "airgap": "isolated", "params": {}, "sealed": sealer.seal(ident, person, asked)})
    writer.append("inference.end", {"id": ident, "done_reason": "stop", "airgap": "isolated",
                                    "sealed": sealer.seal(ident, person, {"output": answer})})
    sealer.forget(ident)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """A CLI-initialised home (which seals), alice's and bob's inferences interleaved, then a checkpoint."""
    home = Home(tmp_path / "home")
    assert run(home, "init").exit_code == 0
    with LedgerWriter.open(home.ledger) as writer:
        for ident in ASKED:
            infer(home, writer, ident)
    assert run(home, "ledger", "checkpoint").exit_code == 0
    return home


def package(home: Home, out: Path, *args: str) -> Path:
    result = run(home, "audit", "package", "--person", "alice", *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/")[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def lines_of(pkg: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (pkg / "content.jsonl").read_bytes().splitlines()]


def both(path: Path, plaintext: bool = True) -> dict[str, Any]:
    """Both verifiers' verdicts; they must agree."""
    ours = verify_package(path, open_sealed=aesgcm_open if plaintext else None).to_json()
    theirs = tool.verify_package(str(path), None, tool.signature_checker(),
                                 tool.content_opener() if plaintext else None)
    assert ours == theirs
    return ours


def test_a_package_with_content_discloses_what_was_asked_and_answered_and_verifies(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--with-content")
    files = members(out)
    manifest = json.loads(files["manifest.json"])
    assert manifest["content"] == {"records_with_text": 0, "included": True, "disclosed": 4, "erased": 0}
    assert "content.jsonl" in manifest["files"]
    assert "content.jsonl holds 4 field(s)" in files["README.txt"].decode()
    lines = [json.loads(line) for line in files["content.jsonl"].splitlines()]
    values = {(line["id"]): line["value"] for line in lines}
    assert values == {"a000000000000001.prompt": "Is patient Zebediah Quill diabetic?",
                      "a000000000000001.output": "I cannot tell from this.",
                      "a000000000000002.messages": [{"content": "Name the ward.", "role": "user"}],
                      "a000000000000002.output": "Ward 7."}
    assert b"Bob" not in files["content.jsonl"]  # bob's records are in the segment for the chain, not disclosed
    in_scope = {seq for a, b in manifest["in_scope"]["runs"] for seq in range(a, b + 1)}
    assert {line["seq"] for line in lines} <= in_scope
    assert all(len(bytes.fromhex(line["data_key"])) == 32 for line in lines)
    # one key per field, never an inference's data key nor a group's: four fields, four keys
    assert len({line["data_key"] for line in lines}) == 4
    group_keys = Keyring(home.keyring).groups.glob("*.key")
    assert all(line["data_key"].encode() not in path.read_bytes() for path in group_keys for line in lines)
    verdict = both(out)
    assert verdict["verdict"] == "intact"
    assert verdict["content"] == {"disclosed": 4, "erased": 0, "plaintext_checked": True}
    export = [r.record for r in records_forward(home.ledger, ["ledger.export"])][-1]
    assert export.data["content"] == {"included": True, "disclosed": 4, "erased": 0}
    done = isolated(TOOL, "--package", out)
    assert done.returncode == 0 and "4 sealed field(s) disclosed, 0 erased" in done.stdout


def test_without_the_choice_a_package_holds_no_content(home, tmp_path):
    out = package(home, tmp_path / "plain.tar")
    files = members(out)
    assert "content.jsonl" not in files
    assert b"Zebediah" not in b"".join(files.values())
    assert json.loads(files["manifest.json"])["content"] == {"records_with_text": 0, "included": False}
    assert "this package does not include it" in files["README.txt"].decode()
    verdict = both(out)
    assert verdict["verdict"] == "intact" and verdict["content"] is None
    export = [r.record for r in records_forward(home.ledger, ["ledger.export"])][-1]
    assert export.data["content"] == {"included": False}


def test_without_aes_gcm_the_plaintext_is_never_a_pass(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--with-content")
    verdict = both(out, plaintext=False)
    assert verdict["verdict"] == "unchecked" and verdict["exit_code"] == 5
    assert verdict["content"]["plaintext_checked"] is False
    assert tool.render_package(verdict).startswith("PLAINTEXT NOT CHECKED:")


def test_an_erased_record_is_disclosed_as_erased_and_the_segment_reaches_its_erasure(home, tmp_path):
    first = next(r.record.seq for r in records_forward(home.ledger, ["inference.begin"])
                 if r.record.data["id"] == "a000000000000001")
    assert run(home, "content", "erase", "--seq", str(first), "--request", "ticket 9", "--yes").exit_code == 0
    erasure = [r.record for r in records_forward(home.ledger, ["content.erased"])][-1]
    out = package(home, tmp_path / "alice.tar", "--with-content")
    files = members(out)
    lines = [json.loads(line) for line in files["content.jsonl"].splitlines()]
    erased = [line for line in lines if "state" in line]
    assert [(line["id"], line["erased_at"]) for line in erased] == [
        ("a000000000000001.prompt", erasure.seq), ("a000000000000001.output", erasure.seq)]
    assert b"Zebediah" not in files["content.jsonl"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["content"]["erased"] == 2 and manifest["content"]["disclosed"] == 2
    assert manifest["segment"]["last_seq"] >= erasure.seq  # the recipient can see the erasure
    verdict = both(out)
    assert verdict["verdict"] == "intact" and verdict["content"]["erased"] == 2


def test_a_field_that_fails_its_checks_refuses_the_package_and_writes_nothing(home, tmp_path):
    store = ContentStore(home.content)
    store.path("a000000000000002.output").write_bytes(b"\0" * 40)
    before = home.ledger.read_bytes()
    result = run(home, "audit", "package", "--person", "alice", "--with-content", "--out", str(tmp_path / "x.tar"))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "record" in result.output and "output failed its checks" in result.output
    assert not (tmp_path / "x.tar").exists() and home.ledger.read_bytes() == before
    assert run(home, "audit", "package", "--person", "alice", "--key", str(tmp_path / "x.tar"),
               "--out", str(tmp_path / "y.tar")).exit_code == 2


# -- tampers ------------------------------------------------------------------------------------------------


def rewrite(pkg: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Change content.jsonl and, as a forger would, the manifest's digest and counts."""
    lines = edit(lines_of(pkg))
    (pkg / "content.jsonl").write_bytes(b"".join(json.dumps(line, sort_keys=True, separators=(",", ":")).encode()
                                                 + b"\n" for line in lines))
    rehash(pkg)


def changed_value(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines[0]["value"] = "I can tell: yes."
    return lines


def changed_key(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines[1]["data_key"] = lines[3]["data_key"]
    return lines


def swapped_ciphertext(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines[0]["ciphertext"], lines[2]["ciphertext"] = lines[2]["ciphertext"], lines[0]["ciphertext"]
    return lines


def out_of_scope(bob: int) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        forged = {**lines[1], "seq": bob, "field": "prompt", "id": "b000000000000001.prompt"}
        return sorted([*lines, forged], key=lambda line: (line["seq"], line["field"]))
    return edit


def unbacked_erasure(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines[0] = {key: lines[0][key] for key in ("seq", "field", "id")} | {"state": "erased",
                                                                          "erased_at": lines[0]["seq"] + 1}
    return lines


def test_each_tamper_is_a_fault_at_its_line_in_both_verifiers(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--with-content")
    seqs = {r.record.data["id"]: r.record.seq for r in records_forward(home.ledger, ["inference.begin"])}
    cases: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], str, int, str]] = {
        "changed value": (changed_value, "content_mismatch", 1, "value is not what the ciphertext holds"),
        "changed data key": (changed_key, "content_mismatch", 2, "the data key is not the one"),
        "swapped ciphertext": (swapped_ciphertext, "content_mismatch", 1, "the ciphertext is not the one"),
        "out of scope": (out_of_scope(seqs["b000000000000001"]), "content_mismatch", 3, "is not in scope"),
        "unbacked erasure": (unbacked_erasure, "content_mismatch", 1, "no content.erased record"),
    }
    for n, (name, (edit, reason, line, detail)) in enumerate(cases.items()):
        pkg = unpack(out, tmp_path / f"case{n}")
        rewrite(pkg, edit)
        verdict = both(pkg)
        fault = verdict["fault"]
        assert verdict["verdict"] == "broken", name
        assert (fault["reason"], fault["file"], fault["line"]) == (reason, "content.jsonl", line), (name, fault)
        assert detail in fault["detail"], (name, fault)
        assert fault["seq"] == lines_of(pkg)[line - 1]["seq"], name
        assert both(pkg, plaintext=False)["verdict"] == "broken" or name == "changed value", name
        done = isolated(TOOL, "--package", pkg)
        assert done.returncode == 1 and reason in done.stdout, name


def test_a_withheld_field_or_a_miscounted_manifest_is_a_fault(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--with-content")
    pkg = unpack(out, tmp_path / "withheld")
    rewrite(pkg, lambda lines: lines[:-1])
    fault = both(pkg)["fault"]
    assert (fault["reason"], fault["line"]) == ("content_mismatch", 4) and "no line discloses it" in fault["detail"]
    pkg = unpack(out, tmp_path / "counted")
    manifest = json.loads((pkg / "manifest.json").read_bytes())
    manifest["content"]["disclosed"] = 3
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    fault = both(pkg)["fault"]
    assert (fault["reason"], fault["file"]) == ("manifest_mismatch", "manifest.json")
    pkg = unpack(out, tmp_path / "garbled")
    (pkg / "content.jsonl").write_bytes(b'{"seq": 1}\n')
    rehash(pkg)
    fault = both(pkg)["fault"]
    assert (fault["reason"], fault["line"]) == ("content_invalid", 1)


def test_a_plain_ciphertext_edit_without_rehashing_is_a_file_mismatch_first(home, tmp_path):
    out = package(home, tmp_path / "alice.tar", "--with-content")
    pkg = unpack(out, tmp_path / "raw")
    lines = lines_of(pkg)
    blob = bytearray(base64.b64decode(lines[0]["ciphertext"]))
    blob[-1] ^= 1
    lines[0]["ciphertext"] = base64.b64encode(bytes(blob)).decode()
    (pkg / "content.jsonl").write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    fault = both(pkg)["fault"]
    assert (fault["reason"], fault["file"]) == ("file_mismatch", "content.jsonl")


def test_the_content_key_can_be_given_from_separate_media(home, tmp_path):
    kept = tmp_path / "media" / "operator.key"
    kept.parent.mkdir()
    Keyring(home.keyring).private_path.rename(kept)
    refused = run(home, "audit", "package", "--person", "alice", "--with-content", "--out", str(tmp_path / "a.tar"))
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "--key" in refused.output
    assert not (tmp_path / "a.tar").exists()
    out = package(home, tmp_path / "b.tar", "--with-content", "--key", str(kept))
    assert both(out)["content"] == {"disclosed": 4, "erased": 0, "plaintext_checked": True}

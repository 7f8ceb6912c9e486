"""docs/records.md stays complete: every kind the source writes is documented, every member a
ledger written end to end (real CLI, real server) holds is named, and every such record says who
acted. Its worked example of content hashes is recomputed."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

import ledger
from anticloud.actor import local
from anticloud.cli import cli, open_ledger
from anticloud.content import completion_prompt, prompt_hash, text_hash
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import FORMAT_KINDS, verify_file
from ledger.record import KIND_RE
from tests.gguf_builder import build
from tests.test_api import CONNECTED, ISOLATED, running

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "records.md"
COMMON = "## Members every record carries"


def documented() -> tuple[dict[str, set[str]], set[str]]:
    """Each kind's documented members, and the members every record carries."""
    kinds: dict[str, set[str]] = {}
    common: set[str] = set()
    current: set[str] | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            kind = re.fullmatch(r"### `([a-z0-9_.]+)`", line)
            current = kinds.setdefault(kind.group(1), set()) if kind else common if line == COMMON else None
        elif current is not None and line.startswith("| `"):
            first = line.split("|")[1]
            current.update(name.split(".")[0] for name in re.findall(r"`([^`]+)`", first))
    return kinds, common


def written_kinds() -> dict[str, str]:
    """Every kind the source hands a ledger writer, by where: a literal (or a module's constant)
    given to an append (the writer's, the governor's, the air-gap watch's queue, the backlog held
    through an outage) or to record_accepted, and the kinds the ledger format writes itself."""
    found = {kind: "ledger format" for kind in FORMAT_KINDS}
    for path in sorted((ROOT / "anticloud").rglob("*.py")):
        tree = ast.parse(path.read_text())
        named = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute | ast.Name):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            receiver = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
            if (name in ("append", "append_derived", "_append", "_queue") and re.search(
                    r"writer|governor|self$", receiver)) or (name == "hold" and "backlog" in receiver):
                arg = node.args[0] if node.args else None
            elif name == "record_accepted" and len(node.args) == 3:
                arg = node.args[2]
            else:
                continue
            kind = arg.value if isinstance(arg, ast.Constant) else None
            if isinstance(arg, ast.Name):  # a module's constant, or one the ledger package exports
                kind = named.get(arg.id, getattr(ledger, arg.id, None))
            if isinstance(kind, str) and KIND_RE.match(kind):
                found.setdefault(kind, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_kind_the_source_writes_is_documented_and_nothing_else_is() -> None:
    kinds, common = documented()
    written = written_kinds()
    assert common == {"actor"}
    assert len(written) >= 30 and {"engine.start", "inference.end", "config.accept", "request.rejected",
                                   "airgap.breach", "token.create", "appliance.upgrade", "ledger.seal"} <= set(written)
    missing = {kind: where for kind, where in written.items() if kind not in kinds}
    assert not missing, f"written but not in docs/records.md: {missing}"
    assert not set(kinds) - set(written), "documented but written nowhere"
    assert all(kinds.values()), "every kind's table names its members"


def test_the_worked_example_of_content_hashes() -> None:
    text = DOC.read_text()
    system, question = "Answer in one sentence.", "Why is the sky blue?"
    for expected in (prompt_hash(completion_prompt(question, system)),
                     prompt_hash([{"role": "system", "content": system}, {"role": "user", "content": question}]),
                     text_hash("Rayleigh scattering.")):
        assert f"`{expected}`" in text


# -- a ledger written end to end ------------------------------------------------------------------------------


def anticloud(home: Home, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    assert result.exit_code == code, (args, result.output)
    return result.output


def requests(sock: Path, secret: str) -> Iterator[int]:
    def client(token: str | None = None) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://appliance", timeout=30,
                            headers={"authorization": f"Bearer {token}"} if token else {})

    with client() as c:
        yield c.post("/api/generate", json={"model": "tiny", "prompt": "one two", "system": "s", "stream": False,
                                            "options": {"num_ctx": 1 << 20, "num_thread": 2}}).status_code
        yield c.post("/api/embed", json={"model": "tiny", "input": ["one", "two"], "dimensions": 4}).status_code
        yield c.get("/api/nothing").status_code
    with client(secret) as c:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "three four", "name": "x"}],
                "response_format": {"type": "json_object"}, "user": "ward-7"}
        yield c.post("/v1/chat/completions", json=body).status_code
    with client("not-a-token") as c:
        yield c.post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code


def test_a_ledger_written_end_to_end_names_only_documented_members_and_every_record_says_who(
        tmp_path: Path) -> None:
    from tests.fake_engine import FakeModel  # registers the "fake" engine

    FakeModel.gate = None
    home = Home(tmp_path / "home")
    keys, bundle = tmp_path / "keys", tmp_path / "bundle"
    (tmp_path / "tiny.gguf").write_bytes(build())
    anticloud(home, "init")
    anticloud(home, "keys", "generate", "--out", str(keys))
    anticloud(home, "keys", "trust", str(keys / "publisher.pub"))
    anticloud(home, "bundle", "create", str(tmp_path / "tiny.gguf"), "--name", "tiny", "--key",
              str(keys / "publisher.key"), "--out", str(bundle))
    anticloud(home, "import", str(bundle))
    anticloud(home, "keys", "generate", "--out", str(tmp_path / "stranger"))
    anticloud(home, "bundle", "create", str(tmp_path / "tiny.gguf"), "--name", "other", "--key",
              str(tmp_path / "stranger" / "publisher.key"), "--out", str(tmp_path / "unsigned"))
    anticloud(home, "import", str(tmp_path / "unsigned"), code=1)  # signed by a key nobody trusts
    for key, value in (("engine.name", "fake"), ("inference.default_model", "tiny"), ("engine.keep_alive", "600")):
        anticloud(home, "config", "set", key, value)
    secret = anticloud(home, "tokens", "create", "alice").split()[0]
    anticloud(home, "audit", "enroll", "--auditor", "ann", "--out", str(tmp_path / "seal.secret"))
    anticloud(home, "ledger", "checkpoint")

    with open_ledger(home) as writer:
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        with running(app, tmp_path / "api.sock"):
            answered = list(requests(tmp_path / "api.sock", secret))
            anticloud(home, "config", "set", "inference.record_content", "plaintext")
            answered += list(requests(tmp_path / "api.sock", secret))[:1]
            app.observe(CONNECTED)
            app.observe(ISOLATED)
        app.stop()
    assert answered == [200, 200, 404, 200, 401, 200], answered

    anticloud(home, "tokens", "revoke", "alice")
    home.config.write_text(home.config.read_text() + "\n[api]\nmax_body_bytes = 1234\n")
    anticloud(home, "run", "tiny", "hello", code=4)  # drift: recorded, and refused
    anticloud(home, "config", "accept")
    anticloud(home, "models", "remove", "tiny", "--yes")
    key_id = next(r for r in map(json.loads, home.ledger.read_bytes().splitlines())
                  if r["kind"] == "trust.add")["data"]["key_id"]
    anticloud(home, "keys", "revoke", key_id, "--yes")

    assert verify_file(home.ledger).status == "intact"
    kinds, common = documented()
    records = [json.loads(line) for line in home.ledger.read_bytes().splitlines()]
    seen = {r["kind"] for r in records}
    assert seen >= {"ledger.genesis", "config.init", "trust.add", "model.import", "model.import.rejected",
                    "config.change", "token.create", "seal.enroll", "ledger.seal", "ledger.checkpoint",
                    "engine.start", "model.load", "inference.begin", "inference.end", "request.rejected",
                    "airgap.breach", "airgap.restored", "model.unload", "engine.stop", "token.revoke",
                    "config.drift", "engine.refused", "config.accept", "model.remove", "trust.revoke"}, seen
    undocumented: dict[str, set[str]] = {}
    for r in records:
        extra = set(r["data"]) - kinds.get(r["kind"], set()) - common
        if r["kind"] not in kinds or extra:
            undocumented.setdefault(r["kind"], set()).update(extra)
    assert not undocumented, f"members not in docs/records.md: {undocumented}"

    def who(r: dict[str, Any]) -> Any:
        return r["data"].get("actor")

    assert all(who(r) is None for r in records if r["kind"] in FORMAT_KINDS)
    assert all(isinstance(who(r), dict) for r in records if r["kind"] not in FORMAT_KINDS), [
        r["kind"] for r in records if r["kind"] not in FORMAT_KINDS and who(r) is None]
    by_token = [r for r in records if r["kind"].startswith("inference.") and r["data"].get("client") == "token:alice"]
    assert by_token and all(who(r) == {"token": "alice", **local()} for r in by_token)
    assert [who(r) for r in records if r["kind"] in ("config.change", "config.accept", "token.create",
                                                     "trust.revoke", "engine.start", "engine.stop")] == [
        local()] * len([r for r in records if r["kind"] in ("config.change", "config.accept", "token.create",
                                                            "trust.revoke", "engine.start", "engine.stop")])

"""Writers in several processes at once: the isolated server under load, `config set`, `import` and
`ledger checkpoint` from the command line. The result must be one valid chain with nothing lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anticloud.bundle import create_bundle
from anticloud.identity import read_private_key
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.gguf_builder import build

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent

CONCURRENTLY = textwrap.dedent("""
    import json, os, subprocess, sys, threading
    import httpx
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import join, wait_for_socket
    home, bundles = sys.argv[1], sys.argv[2:]
    bring_loopback_up()
    sock = os.path.join(home, "anticloud.sock")
    done = {"inferences": 0, "config": 0, "checkpoints": 0, "imports": 0}
    lock = threading.Lock()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "anticloud", "--home", home, *args],
                              capture_output=True).returncode == 0

    def count(what):
        with lock:
            done[what] += 1

    def infer():
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=60) as c:
            for _ in range(6):
                r = c.post("http://appliance/api/generate",
                           json={"prompt": "Hello", "stream": False, "options": {"num_predict": 4}})
                if r.status_code == 200:
                    count("inferences")

    def configure():
        for i in range(6):
            if cli("config", "set", "engine.keep_alive", str(300 + i)):
                count("config")

    def checkpoint():
        for _ in range(6):
            if cli("ledger", "checkpoint"):
                count("checkpoints")

    def bring_in():
        for bundle in bundles:
            if cli("import", bundle):
                count("imports")

    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", home, "serve", "--uds", sock],
                              env=dict(os.environ, ANTICLOUD_NAMESPACE="1"), stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(sock, 60, server)
        # Daemons: a worker stuck past its deadline must not keep this script from failing.
        workers = [threading.Thread(target=f, name=f.__name__, daemon=True)
                   for f in (infer, infer, configure, checkpoint, bring_in)]
        for w in workers:
            w.start()
        for w in workers:
            join(w, 300, f"the {w.name} worker to finish")
    finally:
        server.terminate()
        code = server.wait(60)
    if code:
        sys.exit(f"the server exited with {code} on SIGTERM")
    print(json.dumps(done))
""")


def test_server_config_import_and_checkpoint_processes_make_one_chain(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    key = read_private_key(tmp_path / "keys" / "publisher.key")
    bundles = []
    for i in range(4):
        weights = tmp_path / f"extra{i}.gguf"
        weights.write_bytes(build(tensors=[("w", [32, i + 1], 0)]))
        create_bundle([weights], f"extra{i}", key, tmp_path / f"bundle-extra{i}")
        bundles.append(str(tmp_path / f"bundle-extra{i}"))
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", CONCURRENTLY,
                          str(home.root), *bundles], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    done = json.loads(run.stdout)
    assert done == {"inferences": 12, "config": 6, "checkpoints": 6, "imports": 4}, done

    verdict = verify_file(home.ledger)
    assert verdict.status == "intact", verdict.fault
    kinds = [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]
    assert kinds.count("inference.begin") == kinds.count("inference.end") == done["inferences"]
    assert kinds.count("config.change") == done["config"]
    assert kinds.count("ledger.checkpoint") == verdict.checkpoints_in_ledger == done["checkpoints"]
    assert kinds.count("model.import") == done["imports"] + 1  # and the model the operator imported first

"""The crash campaign: the isolated server under real concurrent streaming load on the Gemma model,
its generations batched together (compute.parallel, 4 by default, for 4 clients), with
configuration changes from the CLI, killed with SIGKILL at random moments, round after round.

After the kills and a final restart, the ledger must verify; every inference whose full response
a client received must have its inference.begin and inference.end; every begin left without an
end must be closed by inference.interrupted; and the torn tail of a kill in the middle of an
append must have been recovered and recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anticloud.home import Home
from tests.conftest import operator_imports_real_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 20

# The server the campaign kills: the real CLI, with the ledger's write function replaced so that
# every append is written in two halves, PAUSE seconds apart (a kill -9 cannot tear one write()).
LAUNCHER = textwrap.dedent("""
    import sys, time
    from ledger import LedgerWriter, write_all
    pause = float(sys.argv.pop(1))

    def torn(fd, data):
        write_all(fd, data[: len(data) // 2])
        time.sleep(pause)
        write_all(fd, data[len(data) // 2:])

    LedgerWriter.write_bytes = staticmethod(torn)
    from anticloud.cli import cli
    cli(prog_name="anticloud")
""")

CAMPAIGN = textwrap.dedent("""
    import json, os, random, signal, subprocess, sys, threading, time
    import httpx
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import join, wait_for_socket
    home, rounds, seed, launcher = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    bring_loopback_up()
    sock = os.path.join(home, "anticloud.sock")
    completed, stats, lock = [], {"kills": 0, "completed": 0, "config_changes": 0}, threading.Lock()

    def serve(pause, wait=True):
        if os.path.exists(sock):
            os.unlink(sock)
        env = dict(os.environ, ANTICLOUD_NAMESPACE="1")
        server = subprocess.Popen([sys.executable, "-c", launcher, str(pause), "--home", home, "serve", "--uds", sock],
                                  env=env, stderr=subprocess.DEVNULL)
        try:
            if wait:
                wait_for_socket(sock, 60, server)
        except AssertionError:
            server.kill()
            raise
        return server

    def client(stop, serving):
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=30) as c:
            while not stop.is_set():
                try:
                    body = {"prompt": "Once upon a time", "options": {"num_predict": 12}}
                    with c.stream("POST", "http://appliance/api/generate", json=body) as reply:
                        if reply.status_code != 200:
                            time.sleep(0.05)
                            continue
                        serving.set()
                        ident = reply.headers["x-anticloud-inference"]
                        if any(json.loads(line).get("done") for line in reply.iter_lines()):
                            with lock:
                                completed.append(ident)
                except (httpx.HTTPError, OSError, ValueError, KeyError):
                    time.sleep(0.05)

    def configure(stop):
        values = ["plaintext", "sealed", "hash", "sealed"]  # a new home starts sealed
        while not stop.is_set():
            run = subprocess.run([sys.executable, "-m", "anticloud", "--home", home, "config", "set",
                                  "inference.record_content", values[stats["config_changes"] % len(values)]],
                                 capture_output=True)
            stats["config_changes"] += run.returncode == 0
            stop.wait(0.4)

    for round_ in range(rounds):
        # Round 0 kills in the middle of an append for certain: its first record (engine.start) is
        # written in two halves ten seconds apart, and the kill lands between them (the server has
        # no socket yet, so the kill does not wait for one).
        # Even rounds count the lifetime from the socket, so kills land during the model's load too;
        # odd rounds from the first generation that began, so that kills land mid-stream however
        # long the load takes on a busy machine.
        pause, lifetime = (10.0, 3.0) if round_ == 0 else (0.01, rng.uniform(1.5, 4.0))
        server = serve(pause, wait=round_ != 0)
        stop, serving = threading.Event(), threading.Event()
        # Daemons: a worker stuck past its deadline must not keep this script from failing.
        workers = [threading.Thread(target=client, args=(stop, serving), daemon=True) for _ in range(4)]
        workers.append(threading.Thread(target=configure, args=(stop,), daemon=True))
        for w in workers:
            w.start()
        if round_ % 2 and not serving.wait(60):
            server.kill()
            sys.exit(f"round {round_}: no generation began within 60 s")
        time.sleep(lifetime)  # not a wait: how long the server lives before this round's kill
        os.kill(server.pid, signal.SIGKILL)
        server.wait(60)
        stats["kills"] += 1
        stop.set()
        for w in workers:
            join(w, 60, f"round {round_}'s {w.name} to stop after the kill")
    final = serve(0)  # the restart that closes what the last kill left open
    final.send_signal(signal.SIGTERM)
    if code := final.wait(60):
        sys.exit(f"the final restart exited with {code} on SIGTERM")
    stats["completed"] = len(completed)
    print(json.dumps({"stats": stats, "completed": completed}))
""")


def test_kill_nine_at_random_moments_under_load(gemma_path: Path, tmp_path: Path) -> None:
    home: Home = operator_imports_real_model(tmp_path, gemma_path)
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", CAMPAIGN,
                          str(home.root), str(ROUNDS), "20261121", LAUNCHER], cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    verify = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "verify", "ledger"],
                            cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout

    records = [json.loads(x) for x in home.ledger.read_bytes().splitlines()]
    kinds = [r["kind"] for r in records]
    begins = {r["data"]["id"] for r in records if r["kind"] == "inference.begin"}
    ends = {r["data"]["id"] for r in records if r["kind"] == "inference.end"}
    interrupted = {r["data"]["id"] for r in records if r["kind"] == "inference.interrupted"}
    batched = [r for r in records if r["kind"] == "inference.end" and r["data"].get("batch", {}).get("batched")]
    counts = {**out["stats"], "begins": len(begins), "ends": len(ends), "interrupted": len(interrupted),
              "recovered": kinds.count("ledger.recovered"), "starts": kinds.count("engine.start"),
              "config_changes_recorded": kinds.count("config.change"), "batched": len(batched)}
    print("crash campaign:", json.dumps(counts))  # reported with -s, and in the assertion messages below

    assert out["stats"]["kills"] == ROUNDS
    assert out["completed"], f"no inference completed in the campaign: {counts}"
    assert batched, f"no generation of the campaign shared a batch: batching was not under test ({counts})"
    missing = [i for i in out["completed"] if i not in begins or i not in ends]
    assert not missing, f"responses received in full without both records: {missing} ({counts})"
    assert begins <= ends | interrupted, f"begins left open: {begins - ends - interrupted} ({counts})"
    assert not ends & interrupted, "an inference cannot both end and be interrupted"
    assert counts["recovered"] >= 1, f"the kill in the middle of an append left nothing to recover: {counts}"
    assert counts["config_changes_recorded"] == out["stats"]["config_changes"] >= ROUNDS // 2
    sealed = [r for r in records if "sealed" in r.get("data", {})]
    assert sealed, f"nothing was sealed in the campaign: sealing was not under test ({counts})"
    shown = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), "content", "show",
                            *(str(r["seq"]) for r in sealed), "--json"], cwd=ROOT, capture_output=True, text=True)
    fields = [f for line in shown.stdout.splitlines() for f in json.loads(line)["fields"]]
    assert shown.returncode == 0 and {f["state"] for f in fields} == {"open"}, shown.stderr[-2000:]

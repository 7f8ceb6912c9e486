"""The engine for real: refusal on this connected host, inference inside a fresh network namespace,
a breach while serving, and fail-closed refusals, on the real Gemma model and real llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from anticloud.airgap import check
from anticloud.home import Home
from ledger import verify_file
from tests.conftest import operator_imports_real_model
from tests.waiting import wait_for_socket

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")]
ROOT = Path(__file__).resolve().parent.parent


def anticloud(home: Home, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home.root), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def kinds(home: Home) -> list[str]:
    return [json.loads(x)["kind"] for x in home.ledger.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def appliance(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with the real model imported through a signed bundle."""
    return operator_imports_real_model(tmp_path_factory.mktemp("engine"), gemma_path)


@pytest.mark.skipif(check().isolated, reason="this machine has no network to refuse")
def test_the_engine_refuses_to_start_on_this_connected_host(appliance: Home) -> None:
    run = anticloud(appliance, "run", "Hello")
    assert run.returncode == 4
    assert "refusing to start: a network is reachable" in run.stderr and "--isolate" in run.stderr
    assert run.stdout == ""
    assert kinds(appliance)[-1] == "engine.refused"


def test_a_real_inference_inside_a_fresh_network_namespace(appliance: Home) -> None:
    run = anticloud(appliance, "run", "--isolate", "--temperature", "0", "--num-predict", "16",
                    "The capital of France is")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), "the model answered nothing"
    assert "tokens/s" in run.stderr
    tail = [json.loads(x) for x in appliance.ledger.read_bytes().splitlines()][-6:]
    assert [r["kind"] for r in tail] == ["engine.start", "model.load", "inference.begin", "inference.end",
                                         "model.unload", "engine.stop"]
    assert tail[0]["data"]["namespace"] is True and tail[0]["data"]["airgap"] == "isolated"
    assert tail[1]["data"]["hash_verified"] is True and tail[1]["data"]["engine"] == "llama_cpp"
    assert tail[3]["data"]["completion_tokens"] == 16 and tail[3]["data"]["done_reason"] == "length"
    assert verify_file(appliance.ledger).status == "intact"


BREACH = textwrap.dedent("""
    import json, os, subprocess, sys
    import httpx
    from pyroute2 import IPRoute
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import poll, wait_for_socket
    home, sock = sys.argv[1], sys.argv[1] + "/anticloud.sock"
    bring_loopback_up()
    env = dict(os.environ, ANTICLOUD_NAMESPACE="1")
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", home, "serve", "--uds", sock,
                               "--watch-interval", "0.2"], env=env, stderr=subprocess.PIPE, text=True)
    out = {}
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=120)
        wait_for_socket(sock, 60, server)
        def generate():
            r = client.post("http://appliance/api/generate", json={"model": "gemma3-270m", "prompt": "Hi",
                            "stream": False, "options": {"num_predict": 4, "temperature": 0}})
            return r.status_code, r.json()
        def airgap():
            return client.get("http://appliance/api/status").json()["airgap"]
        out["before"] = generate()
        # A network appears: an interface, up, with an address. This kernel has no dummy driver, so
        # it is a veth pair with both ends in this namespace; nothing is sent anywhere.
        with IPRoute() as ipr:
            ipr.link("add", ifname="breach0", kind="veth", peer="breach1")
            index = ipr.link_lookup(ifname="breach0")[0]
            ipr.addr("add", index=index, address="198.51.100.7", mask=24)
            ipr.link("set", index=index, state="up")
            poll(lambda: airgap() != "isolated", 30, "the watch (every 0.2 s) to see the network come up")
            out["during"] = generate()
            out["status"] = airgap()
            ipr.link("del", index=index)
        poll(lambda: airgap() == "isolated", 30, "the watch (every 0.2 s) to see the network gone")
        out["after"] = generate()
    finally:
        server.terminate()
        out["journal"] = server.communicate(timeout=60)[1]
    if server.returncode:
        sys.exit(f"the server exited with {server.returncode} on SIGTERM")
    print(json.dumps(out))
""")


def test_a_breach_while_serving_is_detected_refused_and_recorded(appliance: Home) -> None:
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", BREACH,
                          str(appliance.root)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["before"][0] == 200 and out["before"][1]["eval_count"] == 4
    assert out["during"][0] == 503 and "breach0" in out["during"][1]["error"]
    assert out["status"] == "breached"
    assert out["after"][0] == 200
    tail = kinds(appliance)
    assert tail.index("airgap.breach") < tail.index("airgap.restored")
    # The clock behind every ts, as the real kernel reports it; and no jump in a run whose clocks
    # were compared every 0.2 s (this test cannot step the host's clock: jumps are tested in test_runtime).
    start = [json.loads(x) for x in appliance.ledger.read_bytes().splitlines() if b'"kind":"engine.start"' in x][-1]
    source = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    assert start["data"]["clock"]["source"] == (source.read_text().strip() if source.exists() else None)
    assert start["data"]["clock"]["timezone"] == "UTC" and start["data"]["clock"]["kernel"]["synchronised"] in (
        True, False, None)
    assert "clock.jump" not in tail
    assert tail[-1] == "engine.stop"
    # What the ledger proves, the operator reads on stderr (journald under systemd), in order.
    said = [line for line in out["journal"].splitlines() if line.startswith("anticloud: ")]
    expected = ["engine started", "loaded gemma3-270m", "AIR GAP BREACHED", "refused /api/generate (503)",
                "air gap restored", "engine stopped"]
    where = [next(i for i, line in enumerate(said) if part in line) for part in expected]
    assert where == sorted(where), said
    assert "breach0 up" in next(line for line in said if "AIR GAP BREACHED" in line)
    assert verify_file(appliance.ledger).status == "intact"


# Run in a mount namespace: the appliance's home moved onto a small tmpfs, which can then be filled.
TMPFS_HOME = textwrap.dedent("""
    import json, os, shutil, subprocess, sys, time
    from pathlib import Path

    def tmpfs_home(home, mnt, size):
        # mode=0700: a home others can write is refused, and a fresh tmpfs is 1777.
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
        for name in ("ledger.jsonl", "config.toml", "trust.json"):
            if (home / name).exists():
                shutil.copy(home / name, mnt / name)
        shutil.copytree(home / "keys", mnt / "keys")
        if (home / "keyring").exists():  # sealed content's keys: its store is made on the tmpfs too
            shutil.copytree(home / "keyring", mnt / "keyring")
        (mnt / "models").symlink_to(home / "models")  # the weights stay where they are; the ledger is on the tmpfs

    from tests.disk import fill
""")

FAIL_CLOSED = TMPFS_HOME + textwrap.dedent("""
    home, mnt, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    tmpfs_home(home, mnt, "2m")
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    else:
        fill(mnt / "filler")
    env = dict(os.environ, ANTICLOUD_NAMESPACE="1")
    def begins():
        return (mnt / "ledger.jsonl").read_bytes().count(b'"kind":"inference.begin"')
    attempts = []
    for _ in range(6):  # a full disk may still hold a few records in the ledger's last page
        before = begins()
        run = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(mnt), "run", "Hello"], env=env,
                             capture_output=True, text=True)
        attempts.append({"rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr,
                         "new_begins": begins() - before})
        if not run.stdout:
            break
    if how != "read-only":
        os.unlink(mnt / "filler")
    verify = subprocess.run([sys.executable, "-m", "anticloud", "verify", "ledger", str(mnt / "ledger.jsonl"),
                             "--json"], capture_output=True, text=True)
    print(json.dumps({"attempts": attempts, "verdict": json.loads(verify.stdout)["verdict"]}))
""")


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_an_unwritable_ledger_refuses_the_inference_and_leaves_the_chain_intact(appliance: Home, tmp_path: Path,
                                                                              how: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--mount", sys.executable, "-c",
                          FAIL_CLOSED, str(appliance.root), str(mnt), how], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    for attempt in out["attempts"]:
        errors = [line for line in attempt["stderr"].splitlines() if line.startswith("anticloud: error:")]
        assert attempt["rc"] != 0 and len(errors) == 1, attempt
        assert "Read-only file system" in errors[0] or "No space left on device" in errors[0]
        assert "llama_" not in attempt["stderr"], "llama.cpp's notices must not leak to the user"
        if attempt["stdout"]:  # tokens reached the user: their begin record must be durable
            assert attempt["new_begins"] == 1, "no token may reach the user without its inference.begin"
    assert out["attempts"][-1]["stdout"] == "", "the unwritable ledger must end up refusing the inference"
    assert out["verdict"] in ("intact", "torn")


def test_serve_isolate_then_status_and_stop_from_the_host(appliance: Home) -> None:
    import httpx

    from tests.test_listen import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(appliance.root), "serve", "--isolate",
                               "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = appliance.root / "anticloud.sock"
    try:
        wait_for_socket(sock)
        status = anticloud(appliance, "status")
        assert status.returncode == 0, status.stderr
        assert f"on unix socket {sock}, http://127.0.0.1:{port}" in status.stdout, "however it listens"
        assert "air gap     isolated (in its own network namespace)" in status.stdout
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client:
            reply = client.post("http://appliance/api/generate",
                                json={"prompt": "Hello", "stream": False, "options": {"num_predict": 3}})
        assert reply.status_code == 200 and reply.json()["eval_count"] == 3
        stop = anticloud(appliance, "stop")
        assert stop.returncode == 0 and "stopped the server" in stop.stdout
        assert server.wait(60) == 0
    finally:
        server.kill()
    assert not sock.exists() and not appliance.listening.exists()
    assert kinds(appliance)[-2:] == ["model.unload", "engine.stop"]
    nothing = anticloud(appliance, "stop")  # nothing left to stop: its own error, not "engine refused" (4)
    assert nothing.returncode == 1 and "no server is running" in nothing.stderr


def wait_until_answering(sock: Path, seconds: float = 120) -> None:
    """Wait until a server accepts connections on ``sock`` (a stale socket may be there before it)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nothing answered on {sock} within {seconds} s") from None
        time.sleep(0.05)


def test_a_second_isolated_server_is_refused_and_the_first_ones_inference_runs_on(appliance: Home) -> None:
    import httpx

    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(appliance.root), "serve", "--isolate"],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = appliance.root / "anticloud.sock"
    try:
        wait_until_answering(sock)
        engine = int((appliance.root / "anticloud.pid").read_text())
        assert engine != server.pid, "the engine is the namespaced child; the launcher stays outside"
        body = {"prompt": "Count from one to fifty:", "options": {"num_predict": 48, "temperature": 0}}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client, \
                client.stream("POST", "http://appliance/api/generate", json=body) as reply:
            lines = reply.iter_lines()
            assert json.loads(next(lines))["done"] is False  # generating now
            ident = reply.headers["x-anticloud-inference"]
            second = anticloud(appliance, "serve", "--isolate", timeout=120)
            rest = [json.loads(line) for line in lines if line]
        assert second.returncode == 4, second.stderr
        errors = second.stderr.strip().splitlines()
        assert len(errors) == 1 and f"another engine (pid {engine}) is running on {appliance.root}" in errors[0]
        assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 48
        records = [json.loads(x) for x in appliance.ledger.read_bytes().splitlines()]
        assert not [r for r in records if r["kind"] == "inference.interrupted" and r["data"]["id"] == ident]
        assert [r for r in records if r["kind"] == "inference.end" and r["data"]["id"] == ident]
        refused = [r for r in records if r["kind"] == "engine.refused"][-1]["data"]
        assert refused.pop("actor")["uid"] == os.getuid()  # the operator, translated out of the namespace
        assert refused == {"reason": "another engine is running on this home", "pid": engine, "namespace": True}
        stop = anticloud(appliance, "stop")
        assert stop.returncode == 0 and f"stopped the server (pid {engine})" in stop.stdout
        assert server.wait(60) == 0
    finally:
        server.kill()
        server.wait(60)
    assert kinds(appliance)[-1] == "engine.stop"
    assert verify_file(appliance.ledger).status == "intact"


OTHER_UID = 1234


def _request(sock: Path) -> dict[str, Any]:
    """One generation over ``sock`` with nothing but the standard library."""
    import socket

    body = json.dumps({"prompt": "Hi", "stream": False, "options": {"num_predict": 2}}).encode()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(b"POST /api/generate HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return {"status": int(lines[0].split()[1]), "inference": headers.get("x-anticloud-inference"),
            "body": payload.decode(errors="replace")}


def _as_other_user(sock: Path) -> dict[str, Any]:
    """``_request`` from a forked child that has dropped to another uid and gid, with no groups."""
    import os

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            os.write(write_end, json.dumps(_request(sock)).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 -- the forked child reports whatever it was
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        out = reader.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(out)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


def test_an_isolated_server_records_each_callers_real_uid_and_fails_closed_without_its_oracle(
        appliance: Home) -> None:
    import os
    import socket
    import stat
    import tempfile

    import httpx

    # The documented way to share the socket: a directory of the group, setgid, and the socket 0660 in it.
    shared = Path(tempfile.mkdtemp(prefix="anticloud-socket-"))  # under /tmp: the other uid can reach it
    os.chown(shared, 0, OTHER_UID)
    shared.chmod(0o2750)
    sock = shared / "api.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # left behind by a crash: the only file serve may remove
        stale.bind(str(sock))
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(appliance.root), "serve", "--isolate",
                               "--uds", str(sock)], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        wait_until_answering(sock)
        mode = sock.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == OTHER_UID
        other = _as_other_user(sock)
        assert other["status"] == 200, other
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client:
            mine = client.post("http://appliance/api/generate",
                               json={"prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
        assert mine.status_code == 200
        begins = {r["data"]["id"]: r["data"]["client"] for r in
                  (json.loads(x) for x in appliance.ledger.read_bytes().splitlines()) if r["kind"] == "inference.begin"}
        assert begins[other["inference"]] == f"uid:{OTHER_UID}"  # not the namespace's 65534
        assert begins[mine.headers["x-anticloud-inference"]] == f"uid:{os.getuid()}"

        # Without the launcher, no connection's uid can be established: refused and recorded, never guessed.
        server.kill()
        server.wait(60)
        refused = _as_other_user(sock)
        assert refused["status"] == 503 and "the caller's uid cannot be established" in refused["body"]
        rejected = [json.loads(x) for x in appliance.ledger.read_bytes().splitlines()][-1]
        assert rejected["kind"] == "request.rejected" and rejected["data"]["status"] == 503
        stop = anticloud(appliance, "stop")  # the engine, not the launcher, holds the lock and the pid file
        assert stop.returncode == 0, stop.stderr
    finally:
        server.kill()
        server.wait(60)
        subprocess.run([sys.executable, "-m", "anticloud", "--home", str(appliance.root), "stop"], cwd=ROOT,
                       capture_output=True)
    assert not sock.exists()
    shared.rmdir()
    assert kinds(appliance)[-1] == "engine.stop"
    assert verify_file(appliance.ledger).status == "intact"


FULL_THEN_FREE = TMPFS_HOME + textwrap.dedent("""
    import httpx
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import wait_for_socket
    home, mnt = Path(sys.argv[1]), Path(sys.argv[2])
    bring_loopback_up()
    tmpfs_home(home, mnt, "1m")
    sock = mnt / "anticloud.sock"
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(mnt), "serve", "--uds", str(sock)],
                              env=dict(os.environ, ANTICLOUD_NAMESPACE="1"), stderr=subprocess.DEVNULL)
    out = {}
    try:
        wait_for_socket(sock, 60, server)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120)
        def generate():
            r = client.post("http://a/api/generate", json={"prompt": "Hi", "stream": False,
                                                            "options": {"num_predict": 2}})
            return [r.status_code, r.json().get("error")]
        out["before"] = generate()
        fill(mnt / "filler")
        out["full"] = [generate() for _ in range(8)]  # the ledger's last page may hold a few records
        os.unlink(mnt / "filler")
        out["after"] = generate()
    finally:
        server.terminate()
        code = server.wait(60)
    if code:
        sys.exit(f"the server exited with {code} on SIGTERM")
    raw = (mnt / "ledger.jsonl").read_bytes()
    out["kinds"] = [json.loads(x)["kind"] for x in raw.split(b"\\n")[:-1]]
    out["outages"] = [json.loads(x)["data"] for x in raw.split(b"\\n")[:-1] if b'"kind":"ledger.outage"' in x]
    out["tail"] = raw[raw.rfind(b"\\n") + 1:].decode(errors="replace")[:200]
    verify = subprocess.run([sys.executable, "-m", "anticloud", "verify", "ledger", str(mnt / "ledger.jsonl")],
                            capture_output=True, text=True)
    out["verify"] = verify.returncode
    out["verify_out"] = verify.stdout[-600:]
    print(json.dumps(out))
""")


def test_a_full_disk_under_a_running_server_refuses_then_resumes_without_restart(appliance: Home,
                                                                                tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--mount", sys.executable, "-c",
                          FULL_THEN_FREE, str(appliance.root), str(mnt)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["before"][0] == 200
    refused = [r for r in out["full"] if r[0] != 200]
    assert refused, "a full ledger must refuse inference"
    assert all(code == 503 and "No space left on device" in error for code, error in refused), out
    assert out["after"][0] == 200, ("once space returns, the same server must serve again", out)
    assert out["verify"] == 0 and out["kinds"][-1] == "engine.stop"
    # The logging failure itself is recorded once the ledger takes records again: every refused
    # request counted (in one outage record, or several if a small record fitted in between).
    assert out["outages"] and sum(o["refused"] for o in out["outages"]) == len(refused), out["outages"]
    assert all("No space left on device" in o["error"] for o in out["outages"])
    last_outage = len(out["kinds"]) - 1 - out["kinds"][::-1].index("ledger.outage")
    assert "inference.begin" in out["kinds"][last_outage:], "the outage is recorded before the next inference"


def _immutable_supported(path: Path) -> bool:
    probe = path / "probe"
    probe.write_bytes(b"x")
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    probe.unlink()
    return ok


def test_a_ledger_made_read_only_under_a_running_server_refuses_then_resumes(appliance: Home,
                                                                           tmp_path: Path) -> None:
    import httpx

    if shutil.which("chattr") is None or not _immutable_supported(appliance.root):
        pytest.skip("needs chattr +i (CAP_LINUX_IMMUTABLE and a file system that supports it)")
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", str(appliance.root), "serve",
                               "--isolate"], cwd=ROOT, stderr=subprocess.DEVNULL)
    sock = appliance.root / "anticloud.sock"
    body = {"prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    try:
        wait_for_socket(sock, 30, server)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=120) as client:
            assert client.post("http://appliance/api/generate", json=body).status_code == 200
            # The immutable flag refuses writes even through the descriptor the server already holds.
            subprocess.run(["chattr", "+i", str(appliance.ledger)], check=True)
            try:
                refused = client.post("http://appliance/api/generate", json=body)
            finally:
                subprocess.run(["chattr", "-i", str(appliance.ledger)], check=True)
            assert refused.status_code == 503 and "Operation not permitted" in refused.json()["error"]
            assert client.post("http://appliance/api/generate", json=body).status_code == 200
    finally:
        subprocess.run(["chattr", "-i", str(appliance.ledger)], capture_output=True)
        server.terminate()
        code = server.wait(60)
    assert code == 0, f"the server exited with {code} on SIGTERM"
    assert verify_file(appliance.ledger).status == "intact"
    assert kinds(appliance)[-1] == "engine.stop"


# Many idle connections against a server whose descriptors are few: the bound keeps some in
# reserve, so the watch still opens its netlink socket and the server still answers.
FLOOD = textwrap.dedent("""
    import json, os, resource, socket, subprocess, sys, time
    import httpx
    from pyroute2 import IPRoute
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import wait_for_socket
    home, sock = sys.argv[1], sys.argv[1] + "/anticloud.sock"
    bring_loopback_up()

    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    def kinds():
        with open(home + "/ledger.jsonl", "rb") as handle:
            return [json.loads(line)["kind"] for line in handle]

    def until(condition, seconds=60):  # False at the deadline: what timed out is asserted on by name
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", home, "serve", "--uds", sock,
                               "--watch-interval", "0.2"], env=dict(os.environ, ANTICLOUD_NAMESPACE="1"),
                              preexec_fn=few_descriptors, stderr=subprocess.DEVNULL)
    out = {}
    try:
        wait_for_socket(sock, 60, server)
        before = len(kinds())
        idle = []
        for _ in range(400):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect(sock)
            except OSError:
                s.close()
                continue
            idle.append(s)
        def still_open():
            count = 0
            for s in idle:
                s.setblocking(False)
                try:
                    count += s.recv(1) != b""
                except BlockingIOError:
                    count += 1
                except OSError:
                    pass
            return count
        with IPRoute() as ipr:  # a network appears while the flood holds its connections
            ipr.link("add", ifname="breach0", kind="veth", peer="breach1")
            index = ipr.link_lookup(ifname="breach0")[0]
            ipr.addr("add", index=index, address="198.51.100.7", mask=24)
            ipr.link("set", index=index, state="up")
            out["breach_recorded"] = until(lambda: "airgap.breach" in kinds()[before:])
            out["open_during_flood"] = still_open()
            client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=120)
            body = {"prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
            answers = []
            def answered():
                try:
                    r = client.post("http://appliance/api/generate", json=body)
                except httpx.TransportError:
                    return False
                answers.append([r.status_code, r.text[:300]])
                return True
            out["answered"] = until(answered)
            out["during"] = answers[-1:]
            ipr.link("del", index=index)
        served = []
        def serves():
            r = client.post("http://appliance/api/generate", json=body)
            served.append(r.status_code)
            return r.status_code == 200
        out["served_after"] = until(serves)
        out["last"] = served[-1:]
    finally:
        server.terminate()
        code = server.wait(60)
    if code:
        sys.exit(f"the server exited with {code} on SIGTERM")
    out["kinds"] = kinds()[before:]
    print(json.dumps(out))
""")


def test_idle_connections_cannot_starve_the_watch_or_the_server(appliance: Home) -> None:
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", FLOOD,
                          str(appliance.root)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["breach_recorded"], "the watch stopped while the connections were held"
    assert out["open_during_flood"] <= 256 - 128, "connections past the limit must be closed at once"
    assert out["answered"] and out["during"][0][0] == 503 and "breach0" in out["during"][0][1], out
    assert out["served_after"], f"the server never served again: {out['last']}"
    assert "airgap.unobserved" not in out["kinds"], "the reserve must keep the watch's descriptors"
    assert out["kinds"].index("airgap.breach") < out["kinds"].index("airgap.restored")
    assert out["kinds"][-1] == "engine.stop"
    assert verify_file(appliance.ledger).status == "intact"


# A client that starts a long stream and stops reading: once the buffers between it and the
# generation are full, the generation waits on it; past api.stall_timeout it is stopped.
STALL = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    import httpx
    from anticloud.airgap import bring_loopback_up
    from tests.waiting import poll, wait_for_socket
    home, sock = sys.argv[1], sys.argv[1] + "/anticloud.sock"
    bring_loopback_up()
    server = subprocess.Popen([sys.executable, "-m", "anticloud", "--home", home, "serve", "--uds", sock],
                              env=dict(os.environ, ANTICLOUD_NAMESPACE="1"), stderr=subprocess.DEVNULL)
    def begins():
        with open(home + "/ledger.jsonl", "rb") as handle:
            return handle.read().count(b'"kind":"inference.begin"')
    out = {}
    try:
        wait_for_socket(sock, 60, server)
        body = json.dumps({"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "stream": True,
                           "options": {"num_predict": 1900, "temperature": 0}}).encode()
        before = begins()
        staller = socket.socket(socket.AF_UNIX)
        staller.connect(sock)
        staller.sendall(b"POST /api/generate HTTP/1.1\\r\\nhost: appliance\\r\\ncontent-type: application/json\\r\\n"
                        + b"content-length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
        # Its generation must have begun before the second request queues behind it.
        poll(lambda: begins() > before, 60, "the stalling client's inference.begin")
        started = time.monotonic()
        with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=300) as client:
            reply = client.post("http://appliance/api/generate", json={"prompt": "Hi", "stream": False,
                                "options": {"num_predict": 2}})
        out["second"] = [reply.status_code, round(time.monotonic() - started, 1)]
        staller.settimeout(30)
        received = b""
        try:
            while chunk := staller.recv(1 << 16):
                received += chunk
        except OSError as exc:
            out["cut_off"] = type(exc).__name__
        out["staller_done"] = b'"done": true' in received or b'"done":true' in received
        out["staller_bytes"] = len(received)
    finally:
        server.terminate()
        out["journal"] = server.communicate(timeout=60)[1]
    if server.returncode:
        sys.exit(f"the server exited with {server.returncode} on SIGTERM")
    print(json.dumps(out))
""")


def test_a_client_that_stops_reading_is_cut_off_and_frees_the_model(gemma_path: Path, tmp_path: Path) -> None:
    home = operator_imports_real_model(tmp_path, gemma_path)
    assert anticloud(home, "config", "set", "api.stall_timeout", "2").returncode == 0
    # One place, so that the second request waits for the one the stalled client holds (with more,
    # it would run beside it: tests/test_batching_e2e.py).
    assert anticloud(home, "config", "set", "compute.parallel", "1").returncode == 0
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", STALL,
                          str(home.root)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["second"][0] == 200, out
    assert not out["staller_done"], "the stalled stream ran to its end: it never stalled"
    ends = [r["data"] for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == "inference.end"]
    assert [e["done_reason"] for e in ends] == ["client_stalled", "length"], ends
    assert ends[0]["output_chars"] > 0
    assert verify_file(home.ledger).status == "intact"

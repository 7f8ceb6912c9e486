"""The worker's rules without a cable: what it records, when it refuses, how a breach stops its
gate; and the cluster commands' one-line refusals. The real worker runs in tests/test_cluster_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from anticloud import airgap
from anticloud.airgap import ClusterLink, Interface, Neighbour, NetworkState, Route
from anticloud.backlog import Backlog
from anticloud.cli import cli, open_ledger
from anticloud.cluster import tls
from anticloud.cluster.sockets import listening
from anticloud.cluster.worker import Worker, recorder
from anticloud.errors import ClusterError
from anticloud.home import Home
from anticloud.watch import AirGapWatch
from ledger import LedgerWriteError

LINK = ClusterLink("clu0", IPv4Interface("10.77.0.2/30"), (IPv4Address("10.77.0.1"),))
LO = Interface(1, "lo", True, True, ("127.0.0.1/8",))
CABLE = Interface(3, "clu0", True, False, ("10.77.0.2/30",))
ROUTES = (Route(4, 254, "unicast", "10.77.0.0/30", "clu0"), Route(4, 255, "local", "10.77.0.2/32", "clu0"))
CLEAN = NetworkState((LO, CABLE), ROUTES, (Neighbour(4, "10.77.0.1", "clu0", "02:00:00:00:00:01", "reachable"),))
STRANGER = NetworkState((LO, CABLE), ROUTES, (Neighbour(4, "10.77.0.3", "clu0", "02:00:00:00:00:03", "stale"),))


class Gate:
    """Stands in for the relay's gate: what the worker told it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def pause(self, reason: str) -> None:
        self.calls.append(("pause", reason))

    def resume(self) -> None:
        self.calls.append(("resume", ""))

    def close_sessions(self, reason: str) -> None:
        self.calls.append(("close_sessions", reason))


class Writer:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def append(self, kind: str, data: dict[str, Any]) -> None:
        if self.fail:
            raise LedgerWriteError(Path("ledger.jsonl"), "disk full")
        self.records.append((kind, data))


def test_a_breach_ends_the_sessions_and_turns_new_ones_away_until_it_is_over() -> None:
    writer = Writer()
    watch = AirGapWatch(airgap.assess(CLEAN, LINK), "enforce", Backlog(writer.append), link=LINK)
    gate = Gate()
    worker = Worker(Home(Path("/nonexistent")), writer, watch, gate)  # type: ignore[arg-type]
    worker.enforce()
    assert gate.calls == []
    watch.observed(STRANGER)
    worker.enforce()
    worker.enforce()  # once per breach, not once per look
    assert [call for call, _ in gate.calls] == ["pause", "close_sessions"]
    assert "unknown neighbour 10.77.0.3" in gate.calls[0][1]
    watch.observed(CLEAN)
    worker.enforce()
    assert gate.calls[-1] == ("resume", "")
    watch.tell()
    assert [kind for kind, _ in writer.records] == ["airgap.breach", "airgap.restored"]


def test_no_recorded_begin_no_session_and_a_lost_end_waits_for_the_ledger() -> None:
    failing, held = Writer(fail=True), Writer()
    backlog = Backlog(held.append)
    record = recorder(failing, backlog)  # type: ignore[arg-type]
    with pytest.raises(LedgerWriteError):
        record("begin", {"peer": "10.77.0.1", "certificate": "sha256:" + "0" * 64})
    record("end", {"peer": "10.77.0.1", "bytes_in": 5})
    record("rejected", {"peer": "10.77.0.3", "reason": "address not allowed"})
    backlog.tell()
    assert [kind for kind, _ in held.records] == ["worker.session.end", "worker.rejected"]


def test_listening_reads_the_kernels_socket_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text("  sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode\n"
                     "   0: 0100007F:C3D5 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 41 1\n"
                     "   1: 0100007F:C3D6 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 0 0 42 1\n")
    assert listening(50133, table) and not listening(50134, table) and not listening(50135, table)


def cli_in(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    return result.exit_code, result.output


@pytest.fixture
def home(imported_home: Callable[..., Home]) -> Home:
    return imported_home()


def records(home: Home, kind: str) -> list[dict[str, Any]]:
    return [r["data"] for r in map(json.loads, home.ledger.read_bytes().splitlines()) if r["kind"] == kind]


def test_a_worker_with_no_cluster_configured_refuses_in_one_line_and_records_it(home: Home) -> None:
    code, out = cli_in(home, "worker")
    assert code == 1 and out.count("\n") == 1 and "no cluster is configured" in out
    assert records(home, "worker.refused")[-1]["reason"] == "no cluster configured"


def configure(home: Home) -> None:
    for key, value in (("cluster.address", "10.77.0.2/30"), ("cluster.peers", '["10.77.0.1"]'),
                       ("cluster.interface", "clu0")):
        assert cli_in(home, "config", "set", key, value)[0] == 0


def test_a_worker_without_its_keys_refuses_in_one_line_and_records_it(home: Home) -> None:
    configure(home)
    with open_ledger(home) as writer, pytest.raises(ClusterError, match="cluster identity") as refused:
        Worker.start(home, writer, state=CLEAN)
    assert "\n" not in str(refused.value)
    assert records(home, "worker.refused")[-1]["reason"] == "cluster link"
    code, out = cli_in(home, "worker")  # on this machine's own network: refused before any key is read
    assert code == 4 and out.startswith("anticloud: error: refusing to start: a network is reachable")
    assert records(home, "worker.refused")[-1]["reason"] == "network reachable"


def test_a_cluster_needs_the_air_gap_enforced(home: Home) -> None:
    configure(home)
    code, out = cli_in(home, "config", "set", "airgap.mode", "warn")
    assert code == 2 and "needs airgap.mode" in out and out.count("\n") == 1


def test_trust_refuses_a_certificate_whose_fingerprint_was_not_the_one_read_out(home: Home, tmp_path: Path) -> None:
    fingerprint = tls.make_identity(tmp_path / "peer", "peer")
    certificate = tmp_path / "peer" / tls.CERT_FILE
    code, out = cli_in(home, "cluster", "trust", str(certificate), "--fingerprint", "sha256:" + "0" * 64)
    assert code == 2 and out.count("\n") == 1 and fingerprint in out
    assert not (home.cluster / tls.PEERS_DIR).exists() or not any((home.cluster / tls.PEERS_DIR).iterdir())
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    code, out = cli_in(home, "cluster", "trust", str(junk))
    assert code == 2 and out.count("\n") == 1
    code, out = cli_in(home, "cluster", "trust", str(certificate), "--fingerprint", fingerprint)
    assert code == 0 and fingerprint in out
    change = records(home, "config.change")[-1]
    assert change["key"] == "cluster.certificates" and change["new"] == [fingerprint]
    assert (home.cluster / tls.PEERS_DIR / f"{fingerprint.removeprefix('sha256:')}.crt").read_bytes() == \
        certificate.read_bytes()


def test_cluster_init_makes_a_key_once_and_records_its_fingerprint(home: Home) -> None:
    code, out = cli_in(home, "cluster", "init")
    assert code == 0
    (fingerprint,) = [line.split()[1] for line in out.splitlines() if line.startswith("fingerprint")]
    assert records(home, "cluster.keys")[-1]["certificate"] == fingerprint
    assert (home.cluster / tls.KEY_FILE).stat().st_mode & 0o777 == 0o600
    code, out = cli_in(home, "cluster", "init")
    assert code == 1 and "refusing to overwrite" in out and out.count("\n") == 1
    code, out = cli_in(home, "cluster", "show", "--json")
    assert code == 0 and json.loads(out)["certificate"] == fingerprint

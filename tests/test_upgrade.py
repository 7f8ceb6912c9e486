"""Which way an install goes, and its record in the ledger (anticloud.upgrade)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

from anticloud.cli import cli
from anticloud.errors import InstallError
from anticloud.home import Home
from anticloud.upgrade import DOWNGRADE, REINSTALL, UPGRADE, Receipt, direction, record_install, version_key
from ledger import LedgerWriter, records_forward

ORDERED = ["0.9.9", "1.0.dev1", "1.0a1.dev2", "1.0a1", "1.0a2", "1.0b1", "1.0rc1", "1.0", "1.0.post1.dev1",
           "1.0.post1", "1.0.1", "1.1", "10.0"]


def test_versions_order_as_pep_440_says() -> None:
    shuffled = ORDERED[:]
    random.Random(14).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ORDERED
    assert version_key("1.0") == version_key("1.0.0") and direction("1.0", "1.0.0") == REINSTALL


versions = st.builds(
    lambda release, pre, post, dev: ".".join(map(str, release)) + pre + post + dev,
    st.lists(st.integers(0, 12), min_size=1, max_size=4),
    st.sampled_from(["", "a1", "a2", "b1", "rc1", "rc3"]), st.sampled_from(["", ".post1", ".post2"]),
    st.sampled_from(["", ".dev0", ".dev3"]))


@given(versions, versions)
def test_direction_agrees_with_pypa_packaging(old: str, new: str) -> None:
    expected = UPGRADE if Version(new) > Version(old) else REINSTALL if Version(new) == Version(old) else DOWNGRADE
    assert direction(old, new) == expected


@pytest.mark.parametrize("bad", ["", "1.0-beta", "v1.0", "1.0+local", "latest"])
def test_a_version_that_cannot_be_ordered_is_refused(bad: str) -> None:
    with pytest.raises(InstallError, match="cannot compare version"):
        direction("1.0", bad)


RECEIPT = Receipt("0.2.0", "sha3-256:" + "ab" * 32, "sha3-256:" + "cd" * 32, "portable")


def _home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    assert CliRunner().invoke(cli, ["--home", str(home.root), "init"]).exit_code == 0
    return home


def _records(home: Home, kind: str) -> list[dict[str, object]]:
    return [x.record.data for x in records_forward(home.ledger) if x.record.kind == kind]


def test_an_upgrade_a_forced_downgrade_and_a_first_install_are_recorded_as_such(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with LedgerWriter.open(home.ledger) as writer:
        assert record_install(writer, RECEIPT, None, None, forced=False) == "install"
        assert record_install(writer, RECEIPT, "0.1.0", "sha3-256:" + "ef" * 32, forced=False) == UPGRADE
        assert record_install(writer, RECEIPT, "0.3.0", None, forced=True) == DOWNGRADE
        assert record_install(writer, RECEIPT, "0.1.0", None, forced=True) == UPGRADE
    assert _records(home, "appliance.install") == [{"to": {"version": "0.2.0", "manifest": RECEIPT.manifest,
                                                           "signed_by": RECEIPT.signed_by, "cpu_build": "portable"}}]
    upgrade, downgrade, not_forced = _records(home, "appliance.upgrade")
    assert upgrade["direction"] == UPGRADE and upgrade["forced"] is False
    assert upgrade["from"] == {"version": "0.1.0", "manifest": "sha3-256:" + "ef" * 32}
    assert downgrade["direction"] == DOWNGRADE and downgrade["forced"] is True
    assert not_forced["forced"] is False  # --force-downgrade on an upgrade forces nothing


def test_a_downgrade_that_was_not_forced_is_never_recorded(tmp_path: Path) -> None:
    home = _home(tmp_path)
    before = home.ledger.read_bytes()
    with LedgerWriter.open(home.ledger) as writer, pytest.raises(InstallError, match="must be forced"):
        record_install(writer, RECEIPT, "1.0.0", None, forced=False)
    assert home.ledger.read_bytes() == before


def test_the_command_records_only_an_installation_that_a_kit_made(tmp_path: Path) -> None:
    home = _home(tmp_path)  # this venv was made by the Makefile, not by a kit's install.sh
    result = CliRunner().invoke(cli, ["--home", str(home.root), "kit", "record-install", "--from", "0.1.0"])
    assert result.exit_code == 1 and "was not installed from a kit" in result.output
    assert len(result.output.strip().splitlines()) == 1 and _records(home, "appliance.upgrade") == []


def test_the_receipt_is_read_as_install_sh_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "installed.json"
    path.write_text(json.dumps({"kit": "anticloud-kit-0.2.0", "version": "0.2.0", "manifest": RECEIPT.manifest,
                                "signed_by": RECEIPT.signed_by, "commit": "0" * 40,
                                "cpu": {"build": "portable", "requires": ["sse2"], "variants": ["x64"]}}))
    assert Receipt.read(path) == RECEIPT

"""A crash at every step of sealing and of erasure leaves the old state or the new one: never a
record that commits to content or a key that was not kept, never keys destroyed unrecorded.

Each case runs the operation in a forked child whose file-system calls (write, pwrite, fsync,
rename, replace, unlink) are counted; the child dies with os._exit just before call N, for every
N until the operation completes. The parent then does what the next start does (the ledger
writer recovers a torn tail; `Eraser.finish` completes or drops an interrupted erasure) and
checks the state."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from anticloud.vault.erasure import Eraser
from ledger import LedgerWriter, records_forward, verify_file
from tests.conftest import Made
from tests.test_vault import Vault, all_bytes_under, states

STEPS = ("write", "pwrite", "fsync", "rename", "replace", "unlink")


def crash_at(step: int, operation: Callable[[], None]) -> bool:
    """Run ``operation`` in a child that dies before its ``step``-th file-system call; whether it
    completed before reaching that step."""
    pid = os.fork()
    if pid == 0:  # the child: count, and die at the step
        calls = [0]

        def counted(name: str) -> Callable[..., object]:
            real = getattr(os, name)

            def call(*args: object, **kwargs: object) -> object:
                calls[0] += 1
                if calls[0] == step:
                    os._exit(86)
                return real(*args, **kwargs)
            return call

        for name in STEPS:
            setattr(os, name, counted(name))
        try:
            operation()
        except BaseException:  # noqa: BLE001 - any failure is a failure of the case
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 86), f"the operation failed (exit {code}) before step {step}"
    return code == 0


def every_step(make: Callable[[Path], Vault], tmp_path: Path, operation: Callable[[Vault], None],
               check: Callable[[Vault, int], None]) -> int:
    step = 1
    while True:
        vault = make(tmp_path / f"step{step}")
        done = crash_at(step, functools.partial(operation, vault))
        with LedgerWriter.open(vault.ledger):  # the next start: a torn tail is recovered
            pass
        check(vault, step)
        if done:
            return step
        step += 1


@pytest.fixture
def make(make_ledger: Callable[..., Made]) -> Callable[[Path], Vault]:
    def build(root: Path) -> Vault:
        root.mkdir()
        vault = Vault(root, make_ledger(1, name=f"{root.name}.jsonl"))
        vault.infer("b0b0b0b0b0b0b0b0", "bob", "bob's earlier prompt", "bob's earlier answer")
        return vault
    return build


def test_a_crash_at_any_step_of_sealing_leaves_no_record_committing_to_content_that_was_not_kept(
        make: Callable[[Path], Vault], tmp_path: Path) -> None:
    def check(vault: Vault, step: int) -> None:
        assert verify_file(vault.ledger).status == "intact", step
        for located in records_forward(vault.ledger, ["inference.begin", "inference.end"]):
            opened = states(vault, located.record)
            assert all(v not in ("failed", "erased") for v in opened.values()), (step, located.record.seq, opened)
        ends = [r.record.data["id"] for r in records_forward(vault.ledger, ["inference.end"])]
        assert ends[0] == "b0b0b0b0b0b0b0b0"

    steps = every_step(make, tmp_path, lambda v: (v.infer("a1a1a1a1a1a1a1a1", "alice", "new prompt", "new answer"),
                                                  None)[1], check)
    assert steps > 15  # group key, data key, two content files, two records: each several calls


def test_a_crash_at_any_step_of_erasure_leaves_it_undone_or_recorded_and_then_finished(
        make: Callable[[Path], Vault], tmp_path: Path) -> None:
    def prepare(vault: Vault) -> None:
        vault.infer("a1a1a1a1a1a1a1a1", "alice", "alice's prompt", "alice's answer")

    outcomes = set()

    def check(vault: Vault, step: int) -> None:
        with LedgerWriter.open(vault.ledger) as writer:
            Eraser(vault.keyring, vault.store, vault.ledger, writer).finish()  # what the next start does
        assert verify_file(vault.ledger).status == "intact", step
        alice = next(r.record for r in records_forward(vault.ledger, ["inference.begin"])
                     if r.record.data["id"] == "a1a1a1a1a1a1a1a1")
        bob = next(r.record for r in records_forward(vault.ledger, ["inference.begin"])
                   if r.record.data["id"] == "b0b0b0b0b0b0b0b0")
        recorded = list(records_forward(vault.ledger, ["content.erased"]))
        state = states(vault, alice)["prompt"]
        if recorded:
            assert state == "erased", step
            assert not (vault.store.root / "a1").exists() or not any((vault.store.root / "a1").iterdir())
        else:
            assert state == "alice's prompt", step
        assert states(vault, bob) == {"prompt": "bob's earlier prompt"}
        assert not (vault.keyring.root / "erasing.json").exists()
        outcomes.add(bool(recorded))

    def make_with_alice(root: Path) -> Vault:
        vault = make(root)
        prepare(vault)
        secrets_of[root] = [(vault.keyring.groups / f"{g.group}.key").read_bytes()
                            for g in vault.keyring.all_groups() if g.person == "alice"]
        return vault

    secrets_of: dict[Path, list[bytes]] = {}
    steps = every_step(make_with_alice, tmp_path, lambda v: v.erase({"person": "alice"}, delete=True), check)
    assert outcomes == {False, True} and steps > 8
    for root, secrets in secrets_of.items():  # wherever the erasure was recorded, the key is gone
        if list(records_forward(tmp_path / f"{root.name}.jsonl", ["content.erased"])):
            assert not [s for s in secrets if s in all_bytes_under(root)], root

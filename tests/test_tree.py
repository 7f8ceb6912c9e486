"""The Merkle tree kept beside the ledger (ledger.tree): in step with every append, rebuilt when it
does not fit, never trusted over the ledger, and answering proofs from disk."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

import ledger.tree
from ledger import LedgerWriter, consistency_proof, inclusion_proof, leaf_hash, merkle_root, verify_inclusion
from ledger.merkle import from_leaves
from ledger.store import TREE_LAG
from ledger.tree import HEADER_SIZE, TreeFile, node_count, node_index, tree_path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def leaf_hashes(path: Path) -> list[bytes]:
    return [leaf_hash(line) for line in lines(path)]


def opened(path: Path) -> tuple[TreeFile, int]:
    tree = TreeFile.open(path)
    fd = os.open(path, os.O_RDONLY)
    return tree, fd


def test_the_tree_follows_appends_within_a_bounded_lag_and_in_full_at_close(make_ledger: Any) -> None:
    made = make_ledger(0)
    sizes, behind = [], []
    with LedgerWriter.open(made.path) as writer:
        for i in range(200):
            writer.append("test.event", {"i": i})
            header = tree_path(made.path).read_bytes()[:HEADER_SIZE]
            leaves = int.from_bytes(header[24:32], "big")
            behind.append(i + 2 - leaves)  # genesis and i + 1 events
            sizes.append(tree_path(made.path).stat().st_size)
    assert sizes == sorted(sizes) and min(behind) >= 0 and max(behind) == TREE_LAG - 1
    header = tree_path(made.path).read_bytes()[:HEADER_SIZE]
    assert int.from_bytes(header[24:32], "big") == 201  # the close caught it up
    assert int.from_bytes(header[16:24], "big") == made.path.stat().st_size
    assert tree_path(made.path).stat().st_size == HEADER_SIZE + 32 * node_count(201)
    tree, fd = opened(made.path)
    with tree:
        assert tree.follow(fd, os.fstat(fd).st_size) == 201
        assert tree.root(201) == merkle_root(leaf_hashes(made.path))
    os.close(fd)


def test_proofs_from_disk_are_the_proofs_from_the_leaves_at_every_size(make_ledger: Any) -> None:
    made = make_ledger(69)
    hashes = leaf_hashes(made.path)
    reference = from_leaves(hashes.__getitem__)
    tree, fd = opened(made.path)
    with tree:
        tree.follow(fd, os.fstat(fd).st_size)
        for size in range(1, len(hashes) + 1):
            assert tree.root(size) == merkle_root(hashes[:size])
            for index in range(0, size, 7):
                proof = inclusion_proof(index, size, tree.subtree)
                assert proof == inclusion_proof(index, size, reference)
                assert verify_inclusion(index, size, hashes[index], proof, tree.root(size)).ok
            for old in range(0, size + 1, 5):
                assert consistency_proof(old, size, tree.subtree) == consistency_proof(old, size, reference)
    os.close(fd)


def _damage(path: Path, how: str, other: Path) -> None:
    tp = tree_path(path)
    raw = bytearray(tp.read_bytes())
    if how == "missing":
        tp.unlink()
    elif how == "surplus nodes":
        tp.write_bytes(bytes(raw) + os.urandom(48))
    elif how == "header ahead of nodes":
        tp.write_bytes(bytes(raw[:-64]))
    elif how == "another ledger's tree":
        tp.write_bytes(tree_path(other).read_bytes())
    elif how == "bad magic":
        raw[0] ^= 1
        tp.write_bytes(bytes(raw))
    elif how == "last leaf flipped":
        leaves = int.from_bytes(raw[24:32], "big")
        at = HEADER_SIZE + 32 * node_count(leaves - 1)
        raw[at] ^= 1
        tp.write_bytes(bytes(raw))
    elif how == "torn header":
        tp.write_bytes(bytes(raw[:20]))


@pytest.mark.parametrize("how", ["missing", "surplus nodes", "header ahead of nodes", "another ledger's tree",
                                 "bad magic", "last leaf flipped", "torn header"])
def test_a_tree_that_does_not_fit_its_ledger_is_rebuilt_on_the_next_append(make_ledger: Any, how: str) -> None:
    made, other = make_ledger(20), make_ledger(20)
    _damage(made.path, how, other.path)
    with LedgerWriter.open(made.path) as writer:
        writer.append("test.event", {"after": how})
    hashes = leaf_hashes(made.path)
    tree, fd = opened(made.path)
    with tree:
        assert tree.follow(fd, os.fstat(fd).st_size) == len(hashes) == 22
        assert tree.root(22) == merkle_root(hashes)
        assert tree.audit(fd).first_bad_node is None
    assert tree_path(made.path).stat().st_size == HEADER_SIZE + 32 * node_count(22)
    os.close(fd)


def test_a_ledger_without_its_tree_gets_one_written_a_piece_at_a_time(make_ledger: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The first open of a ledger written before the tree catches up in bounded memory: the
    nodes go to disk in pieces as they are computed, not joined into one write of them all."""
    made = make_ledger(2500)  # 2,501 leaves: 4,996 nodes, more than one piece of 4,096
    tree_path(made.path).unlink()
    monkeypatch.setattr(ledger.tree, "_PENDING_NODES", 1024)
    writes: list[int] = []
    real_pwrite = ledger.tree._pwrite_all

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(ledger.tree, "_pwrite_all", pwrite)
    with LedgerWriter.open(made.path):
        pass
    assert max(writes) <= (1023 + 12) * 32  # a piece, and the nodes the leaf that filled it completed
    assert sum(writes) == HEADER_SIZE + 32 * node_count(2501)
    tree, fd = opened(made.path)
    with tree:
        assert tree.follow(fd, os.fstat(fd).st_size) == 2501
        assert tree.root(2501) == merkle_root(leaf_hashes(made.path))
        assert tree.audit(fd).first_bad_node is None
    os.close(fd)


def test_an_audit_finds_a_node_damaged_deep_inside_and_computes_the_root_from_the_ledger(make_ledger: Any) -> None:
    made = make_ledger(30)
    tp = tree_path(made.path)
    raw = bytearray(tp.read_bytes())
    damaged = node_index(4, 0)  # leaves 0..15: the opening checks (first and last leaf) cannot see it
    raw[HEADER_SIZE + 32 * damaged + 3] ^= 0x40
    tp.write_bytes(bytes(raw))
    tree, fd = opened(made.path)
    with tree:
        assert tree.follow(fd, os.fstat(fd).st_size) == 31  # its first and last leaf fit: not rebuilt
        found = tree.audit(fd)
        assert (found.first_bad_node, found.leaves) == (damaged, 31)
        assert found.frontier.root() == merkle_root(leaf_hashes(made.path)) != tree.root(31)
        tree.rebuild(fd, os.fstat(fd).st_size)
        assert tree.audit(fd).first_bad_node is None and tree.root(31) == found.frontier.root()
    os.close(fd)


def test_an_audit_goes_on_from_where_it_stopped(make_ledger: Any) -> None:
    made = make_ledger(10)
    tree, fd = opened(made.path)
    with tree:
        found = tree.audit(fd)
        with LedgerWriter.open(made.path) as writer:
            for i in range(5):
                writer.append("test.event", {"later": i})
        found.extend(fd, os.fstat(fd).st_size)
        assert found.frontier.size == 16 and found.frontier.root() == merkle_root(leaf_hashes(made.path))
    os.close(fd)


def test_a_tree_that_cannot_be_written_never_fails_an_append(make_ledger: Any) -> None:
    made = make_ledger(3)
    tree_path(made.path).unlink()
    tree_path(made.path).mkdir()
    with LedgerWriter.open(made.path) as writer:
        record = writer.append("test.event", {"still": "recorded"})
    assert record.seq == 4 and len(lines(made.path)) == 5
    tree_path(made.path).rmdir()
    with LedgerWriter.open(made.path) as writer, writer.tree() as tree:
        assert tree.leaves == 5 and tree.root(5) == merkle_root(leaf_hashes(made.path))


def _append_many(path: Path, who: int, count: int) -> None:
    with LedgerWriter.open(path) as writer:
        for i in range(count):
            writer.append("test.event", {"who": who, "i": i})


def test_processes_appending_together_keep_one_tree(make_ledger: Any) -> None:
    made = make_ledger(0)
    context = multiprocessing.get_context("forkserver")
    workers = [context.Process(target=_append_many, args=(made.path, who, 150)) for who in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    hashes = leaf_hashes(made.path)
    assert len(hashes) == 451
    tree, fd = opened(made.path)
    with tree:
        assert tree.audit(fd).first_bad_node is None  # no rebuild was needed
        assert tree.follow(fd, os.fstat(fd).st_size) == 451
        assert tree.root(451) == merkle_root(hashes)
    os.close(fd)

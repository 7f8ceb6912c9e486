#!/usr/bin/env python3
"""Merkle tree benchmark (issue 17): what the tree file beside the ledger costs, and what it buys.

    python tools/bench/merkle_bench.py [--dir DIR] [--records N] [--rounds R] [--verify-rounds R]

Every figure is a ratio against a baseline measured in the same run, on the same disk (give
``--dir`` on a real disk, not tmpfs: the appends measure fdatasync). Configurations that are
compared run in interleaved rounds whose order rotates, and each reports its median:

* durable appends/s with the tree (`LedgerWriter.keep_tree`) against without, 1 writer and 8
  threads, on a ledger of 1,000 records and on one of ``--records`` (target: at most 10%
  slower with the tree, and no slower at N records than at 1,000: a batch costs O(log n));
* building the tree once for the N-record ledger, as a writer's first open of a ledger
  without one does (`TreeFile.follow`), its time, peak memory and file size;
* inclusion and consistency proofs at random indices and sizes, each from a fresh
  `TreeFile.open` and `follow` (target: p99 < 50 ms), against `ledger.merkle.from_leaves`
  over the leaf hashes held in memory (O(n) a proof); every proof is verified against a root
  computed from the ledger's lines, outside the timing;
* `ledger.verify_file` records/s (jobs=None and jobs=1), which now computes the tree of every
  line (target: >= 150,000 records/s), against the same verification with the tree switched
  off by patching `ledger.chain` in this process only (its workers are forked from it), and
  the standard-library tools/verify_ledger.py, which checks the chain but not the tree;
* `TreeFile.audit`, recomputing every node from the ledger, as a checkpoint does before signing.

The scratch directory is deleted at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ledger.chain as chain_rules  # noqa: E402
from ledger import (  # noqa: E402
    LedgerWriter,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_file,
    verify_inclusion,
)
from ledger.chain import Chain  # noqa: E402
from ledger.merkle import Frontier, from_leaves  # noqa: E402
from ledger.record import seal  # noqa: E402
from ledger.tree import TreeFile, tree_path  # noqa: E402
from tools.bench.ledger_bench import genesis, sample_data, threaded  # noqa: E402

SMALL = 1_000


def build_ledger(path: Path, records: int) -> float:
    """Write ``records`` chained lines directly (this measures the tree, not appending); seconds."""
    start = time.perf_counter()
    prev, line = seal(0, "ledger.genesis", genesis(), "0" * 64)
    with path.open("wb") as handle:
        handle.write(line)
        for seq in range(1, records):
            prev, line = seal(seq, "bench.append", sample_data(seq), prev.hash)
            handle.write(line)
    return time.perf_counter() - start


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_tree(path: Path) -> tuple[float, float]:
    """The tree of a ledger that has none, as the writer's first open makes it: (seconds, MiB of
    peak memory it added to this process)."""
    before = max_rss_mib()
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        with TreeFile.open(path) as tree:
            tree.follow(fd, os.fstat(fd).st_size)
        return time.perf_counter() - start, max_rss_mib() - before
    finally:
        os.close(fd)


# -- appends ------------------------------------------------------------------------------------


def bench_appends(path: Path, threads: int, total: int, keep_tree: bool) -> float:
    """Durable appends/s to ``path``. Opening is not timed; it also brings the tree up to date,
    so a run without the tree leaves no lag for the next run with it to pay."""
    with LedgerWriter.open(path) as writer:
        writer.keep_tree = keep_tree
        return threaded(threads, total // threads, lambda t, i: writer.append("bench.append", sample_data(i)))


def fresh_copy(template: Path, directory: Path) -> Path:
    """A copy of the small ledger and its tree file, so every small run starts at the same size."""
    path = directory / f"small-{secrets.token_hex(4)}.jsonl"
    shutil.copyfile(template, path)
    shutil.copyfile(tree_path(template), tree_path(path))
    return path


def remove(path: Path) -> None:
    path.unlink()
    tree_path(path).unlink(missing_ok=True)


def interleaved(configs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each configuration once a round, the order rotating, so drift falls on all alike."""
    samples: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(configs[name]())
    return samples


def paired(samples: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median over rounds of the ratio within each round."""
    return statistics.median(a / b for a, b in zip(samples[top], samples[bottom], strict=True))


def append_section(directory: Path, large: Path, appends: int, rounds: int) -> list[str]:
    template = directory / "small-template.jsonl"
    build_ledger(template, SMALL)
    build_tree(template)

    def small(threads: int, total: int, keep: bool) -> float:
        path = fresh_copy(template, directory)
        try:
            return bench_appends(path, threads, total, keep)
        finally:
            remove(path)

    def run(large_ledger: bool, threads: int, total: int, keep: bool) -> Callable[[], float]:
        if large_ledger:
            return lambda: bench_appends(large, threads, total, keep)
        return lambda: small(threads, total, keep)

    configs = {f"{label}, {threads} thr, {'tree' if keep else 'no tree'}": run(label == "N", threads, total, keep)
               for label in ("1k", "N") for threads, total in ((1, appends), (8, appends * 2))
               for keep in (True, False)}
    samples = interleaved(configs, rounds)
    rows = [f"durable appends/s, median of {rounds} interleaved rounds ({appends:,} appends a run, 8 threads twice"
            " that); ratio: with the tree / without, paired by round"]
    for label in ("1k", "N"):
        for threads in (1, 8):
            on, off = f"{label}, {threads} thr, tree", f"{label}, {threads} thr, no tree"
            ratio = paired(samples, on, off)
            rows.append(f"  {label:>2} records, {threads} thr: tree {statistics.median(samples[on]):>8,.0f}/s"
                        f"   no tree {statistics.median(samples[off]):>8,.0f}/s   ratio {ratio:.3f}"
                        f"   ({'met' if ratio >= 0.9 else 'missed'}: >= 0.90)")
    for threads in (1, 8):
        growth = paired(samples, f"N, {threads} thr, tree", f"1k, {threads} thr, tree")
        rows.append(f"  with the tree, {threads} thr: N records / 1k records   {growth:.3f}")
    return rows


# -- proofs -------------------------------------------------------------------------------------


def leaves_and_roots(path: Path, sizes: set[int]) -> tuple[list[bytes], dict[int, bytes]]:
    """Every leaf hash, and the root at each of ``sizes``, computed from the ledger's lines."""
    leaves: list[bytes] = []
    roots: dict[int, bytes] = {}
    frontier = Frontier()
    with path.open("rb") as handle:
        for raw in handle:
            h = leaf_hash(raw[:-1])
            leaves.append(h)
            frontier.push(h)
            if frontier.size in sizes:
                roots[frontier.size] = frontier.root()
    return leaves, roots


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def proof_section(path: Path, proofs: int, baseline_proofs: int) -> list[str]:
    rng = random.Random(17)
    n = sum(1 for _ in path.open("rb"))
    asks = []  # (kind, a, b): inclusion of leaf a in the tree of size b, or consistency from a to b
    for _ in range(proofs):
        size = rng.randint(1, n)
        asks.append(("inclusion", rng.randrange(size), size))
        old, new = sorted(rng.sample(range(1, n + 1), 2))
        asks.append(("consistency", old, new))
    leaves, roots = leaves_and_roots(path, {b for _, _, b in asks} | {a for k, a, _ in asks if k == "consistency"})
    times: dict[str, list[float]] = {"inclusion": [], "consistency": []}
    made: dict[tuple[str, int, int], list[bytes]] = {}
    for kind, a, b in asks:
        start = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            with TreeFile.open(path) as tree:
                tree.follow(fd, os.fstat(fd).st_size)
                proof = (inclusion_proof(a, b, tree.subtree) if kind == "inclusion"
                         else consistency_proof(a, b, tree.subtree))
        finally:
            os.close(fd)
        times[kind].append(time.perf_counter() - start)
        verdict = (verify_inclusion(a, b, leaves[a], proof, roots[b]) if kind == "inclusion"
                   else verify_consistency(a, b, roots[a], roots[b], proof))
        assert verdict.ok, (kind, a, b, verdict)
        made[(kind, a, b)] = proof
    baseline: dict[str, list[float]] = {"inclusion": [], "consistency": []}
    subtree = from_leaves(leaves.__getitem__)
    for kind, a, b in [ask for ask in asks if ask[0] == "inclusion"][:baseline_proofs] + \
            [ask for ask in asks if ask[0] == "consistency"][:baseline_proofs]:
        start = time.perf_counter()
        proof = inclusion_proof(a, b, subtree) if kind == "inclusion" else consistency_proof(a, b, subtree)
        baseline[kind].append(time.perf_counter() - start)
        assert proof == made[(kind, a, b)]
    rows = [f"proofs in a ledger of {n:,} records, {proofs:,} of each kind at random indices and sizes,"
            " each opening the tree file and following the ledger (warm page cache)"]
    for kind in ("inclusion", "consistency"):
        ms = [t * 1000 for t in times[kind]]
        base = statistics.median(baseline[kind]) * 1000
        p99 = percentile(ms, 0.99)
        rows.append(f"  {kind:<11} median {statistics.median(ms):6.2f} ms   p99 {p99:6.2f} ms   max {max(ms):6.2f} ms"
                    f"   ({'met' if p99 < 50 else 'missed'}: p99 < 50 ms)")
        rows.append(f"  {'':<11} from_leaves over the {n:,} leaf hashes in memory: median {base:,.0f} ms"
                    f" of {len(baseline[kind])}   = {base / statistics.median(ms):,.0f}x the tree file's")
    return rows


# -- verification and audit ----------------------------------------------------------------------


def _no_leaf(line: bytes) -> bytes:
    return b""


def _no_grow(self: Chain, seq: int, leaf: bytes, offset: int) -> None:
    return None


@contextmanager
def tree_disabled() -> Iterator[None]:
    """The chain replay without the Merkle tree: no leaf hash, no frontier. In this process only,
    and in the workers `verify_file` forks from it (so it must fork: no other thread running)."""
    if threading.active_count() != 1:
        raise SystemExit("the verify workers would not be forked, and would compute the tree regardless")
    with mock.patch.object(chain_rules, "leaf_hash", _no_leaf), mock.patch.object(Chain, "_grow", _no_grow):
        probe = Chain()
        probe.feed(seal(0, "ledger.genesis", genesis(), "0" * 64)[1][:-1], 0)
        assert probe.tree is not None and probe.tree.size == 0, "the patch did not take"
        yield


def bench_verify(path: Path, records: int, jobs: int | None, tree: bool) -> float:
    start = time.perf_counter()
    if tree:
        verdict = verify_file(path, jobs=jobs)
    else:
        with tree_disabled():
            verdict = verify_file(path, jobs=jobs)
    rate = records / (time.perf_counter() - start)
    assert verdict.status == "intact" and verdict.records == records, verdict
    return rate


def bench_audit(path: Path, records: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        with TreeFile.open(path) as tree:
            start = time.perf_counter()
            check = tree.audit(fd)
            seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    assert check.first_bad_node is None and check.leaves == records, check
    return seconds


def verify_section(path: Path, rounds: int) -> list[str]:
    records = sum(1 for _ in path.open("rb"))
    def verifier(jobs: int | None, tree: bool) -> Callable[[], float]:
        return lambda: bench_verify(path, records, jobs, tree)

    configs = {f"jobs={jobs}, {'tree' if tree else 'no tree'}": verifier(jobs, tree)
               for jobs in (None, 1) for tree in (True, False)}
    configs["audit"] = lambda: bench_audit(path, records)
    samples = interleaved(configs, rounds)
    spec = importlib.util.spec_from_file_location("verify_ledger", ROOT / "tools" / "verify_ledger.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    start = time.perf_counter()
    assert tool.verify(str(path), None, None)["verdict"] == "intact"
    standalone = records / (time.perf_counter() - start)
    rows = [f"verify, {records:,} records ({path.stat().st_size / 2**20:,.0f} MiB), median of {rounds} interleaved"
            " rounds; ratio: with the tree / without, paired by round"]
    for jobs in (None, 1):
        on, off = f"jobs={jobs}, tree", f"jobs={jobs}, no tree"
        rate = statistics.median(samples[on])
        target = f"   ({'met' if rate >= 150_000 else 'missed'}: >= 150,000)" if jobs is None else ""
        rows.append(f"  ledger.verify_file jobs={jobs!s:<4}  tree {rate:>9,.0f}/s   no tree"
                    f" {statistics.median(samples[off]):>9,.0f}/s   ratio {paired(samples, on, off):.3f}{target}")
    rows.append(f"  tools/verify_ledger.py (tree included, one run)   {standalone:>9,.0f}/s   verify_file jobs=1 with"
                f" the tree: {statistics.median(samples['jobs=1, tree']) / standalone:.2f}x its rate")
    audit = statistics.median(samples["audit"])
    serial = records / statistics.median(samples["jobs=1, tree"])
    rows.append(f"  TreeFile.audit {audit:.2f} s   ({records / audit:,.0f} records/s; {audit / serial:.2f}x the time"
                " of verify_file jobs=1)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/scratch"), help="a directory on the disk to measure")
    parser.add_argument("--records", type=int, default=1_000_000, help="the large ledger's records")
    parser.add_argument("--appends", type=int, default=2000, help="appends a run (8 threads: twice that)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of appends")
    parser.add_argument("--verify-rounds", type=int, default=3, help="interleaved rounds of verification")
    parser.add_argument("--proofs", type=int, default=1000, help="proofs of each kind")
    parser.add_argument("--baseline-proofs", type=int, default=3, help="proofs of each kind from the leaf hashes")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=".merkle-bench-", dir=args.dir))
    try:
        large = directory / "large.jsonl"
        built = build_ledger(large, args.records)
        seconds, memory = build_tree(large)
        print(f"a ledger of {args.records:,} records ({large.stat().st_size / 2**20:,.0f} MiB) written directly"
              f" in {built:.1f} s")
        print(f"  its tree built once (TreeFile.follow on no tree file) in {seconds:.2f} s"
              f" ({args.records / seconds:,.0f} records/s), peak memory +{memory:,.0f} MiB,"
              f" tree file {tree_path(large).stat().st_size / 2**20:,.1f} MiB")
        for row in append_section(directory, large, args.appends, args.rounds):
            print(row)
        for row in proof_section(large, args.proofs, args.baseline_proofs):
            print(row)
        for row in verify_section(large, args.verify_rounds):
            print(row)
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()

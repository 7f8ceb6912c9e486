#!/usr/bin/env python3
"""Sealed-content benchmark (issue 18): what sealing a prompt adds to an inference's first token.

    PYTHONPATH=. .venv/bin/python tools/bench/sealed_content_bench.py [--dir DIR] [--rounds 150] [--seals 200]

Under ``inference.record_content = "sealed"`` the prompt is encrypted and its file made durable,
and its data key wrapped and appended durably to the keyring, before ``inference.begin`` is
appended: sealing is on the path to the first token (target: it adds under 1 ms). On a home with
the packaged Gemma 3 270M imported, in this process (an isolated network state handed to
``Appliance.start``, as the tests do), every figure is set against a baseline of the same run:

* time to first token of a real completion (``Appliance.infer``, call to first piece), the
  policy set to "hash" and to "sealed" in turn, ``--rounds`` of each, the order alternating:
  median and p90 of each, the difference and the ratio; and the syncs each policy makes on
  the path (``os.fsync`` and ``os.fdatasync`` counted over one inference's call to first piece);
* ``Sealer.seal`` of a prompt alone, on a keyring and content store of its own: the first
  inference of a person and month (which also writes the group key), the steady state, the
  steady state landing in a new one of the store's 256 prefix directories, and the output
  sealed at ``inference.end``; median and p99;
* in the same interleaved rounds, what those costs stand on: one append and fsync of a small
  file in the same directory, creating an empty file in the content store (no sync), and one
  durable ledger append.

The 256 prefix directories of the content store are made beforehand (except for the row that
measures a new one): a home has them all after its first few hundred inferences.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from anticloud.airgap import Interface, NetworkState, Route  # noqa: E402
from anticloud.config import set_value  # noqa: E402
from anticloud.engines import Params  # noqa: E402
from anticloud.home import Home  # noqa: E402
from anticloud.inference import new_id  # noqa: E402
from anticloud.runtime import Appliance  # noqa: E402
from anticloud.vault import ContentStore, Keyring, Sealer  # noqa: E402
from ledger import LedgerWriter  # noqa: E402
from tools.bench.api_bench import prepare  # noqa: E402
from tools.bench.ledger_bench import genesis, sample_data  # noqa: E402

ISOLATED = NetworkState((Interface(1, "lo", True, True, ("127.0.0.1/8",)),),
                        (Route(4, 255, "local", "127.0.0.0/8", "lo"),))
PROMPT = ("Summarise the night shift handover for ward 7: two admissions, one discharge, "
          "patient in bed 4 needs observations every two hours, pharmacy delivery due at 6.")
OUTPUT = ("Ward 7 night handover: two new admissions and one discharge. Bed 4 needs observations "
          "every two hours; the pharmacy delivers at 6.") * 4  # about a 128-token answer
MODEL = "gemma3-270m"


def quantile(samples: list[float], q: int) -> float:
    """The q-th percentile."""
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f}"


def make_prefixes(content: Path) -> None:
    content.mkdir(mode=0o700, exist_ok=True)
    for i in range(256):
        (content / f"{i:02x}").mkdir(mode=0o700, exist_ok=True)


@contextmanager
def counting_syncs() -> Iterator[dict[str, int]]:
    """Count os.fsync and os.fdatasync calls (every durable step in the code goes through them)."""
    counts = {"fsync": 0, "fdatasync": 0}
    originals = os.fsync, os.fdatasync

    def fsync(fd: Any) -> None:
        counts["fsync"] += 1
        originals[0](fd)

    def fdatasync(fd: Any) -> None:
        counts["fdatasync"] += 1
        originals[1](fd)

    os.fsync, os.fdatasync = fsync, fdatasync
    try:
        yield counts
    finally:
        os.fsync, os.fdatasync = originals


# -- 1. time to first token -------------------------------------------------------------------


def first_token(app: Appliance, tokens: int, at_first: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """(seconds from the call to the first piece of a real completion, of which to its durable
    ``inference.begin``); the completion is then generated to its end."""
    begun = [0.0]
    start = time.perf_counter()
    first = 0.0
    params = Params(temperature=0, num_predict=tokens, repeat_penalty=1.0)
    for piece in app.infer(MODEL, PROMPT, params, "uid:1000",
                           on_begin=lambda _: begun.__setitem__(0, time.perf_counter() - start)):
        if not first and isinstance(piece, str):
            first = time.perf_counter() - start
            at_first()
    return first, begun[0]


def ttft(base: Path, rounds: int, tokens: int) -> dict[str, Any]:
    home_path, _ = prepare(base)
    home = Home(home_path)
    make_prefixes(home.content)
    times: dict[str, list[float]] = {"hash": [], "sealed": [], "to begin hash": [], "to begin sealed": []}
    syncs: dict[str, dict[str, int]] = {}
    with LedgerWriter.open(home.ledger) as writer:
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        try:
            for mode in ("hash", "sealed", "hash", "sealed"):  # load the model, make this month's group
                set_value(home, writer, "inference.record_content", mode)
                first_token(app, tokens)
            for mode in ("hash", "sealed"):
                set_value(home, writer, "inference.record_content", mode)
                with counting_syncs() as counts:
                    seen: dict[str, int] = {}
                    first_token(app, tokens, lambda: seen.update(counts))  # noqa: B023 -- called within the loop
                syncs[mode] = seen
            # The steps on the path that the policy changes, timed where they run.
            inside: dict[str, list[float]] = {"begin hash": [], "begin sealed": [], "seal prompt": [],
                                              "seal output": []}
            policy = ["hash"]
            app.inferences.begin = stopwatch(  # type: ignore[method-assign]
                app.inferences.begin, lambda spent, _: inside[f"begin {policy[0]}"].append(spent))
            app.inferences.seal = stopwatch(  # type: ignore[method-assign]
                app.inferences.seal, lambda spent, args: inside[f"seal {next(iter(args[1]))}"].append(spent))
            for r in range(rounds):
                for mode in ("hash", "sealed") if r % 2 == 0 else ("sealed", "hash"):
                    set_value(home, writer, "inference.record_content", mode)
                    policy[0] = mode
                    total, to_begin = first_token(app, tokens)
                    times[mode].append(total)
                    times[f"to begin {mode}"].append(to_begin)
        finally:
            app.stop()
    return {"times": times, "syncs": syncs, "inside": inside}


def stopwatch(call: Callable[..., Any], spent: Callable[[float, tuple[Any, ...]], None]) -> Callable[..., Any]:
    """``call``, handing the seconds each call took, and its arguments, to ``spent``."""
    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent(time.perf_counter() - start, args)
    return timed_call


# -- 2. sealing alone, and 3. its floor ---------------------------------------------------------


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def seal_steps(base: Path, rounds: int) -> dict[str, list[float]]:
    work = base / "sealing"
    work.mkdir()
    keyring = Keyring(work / "keyring")
    keyring.create(None, None)
    ledger_id = genesis()["ledger_id"]
    store = ContentStore(work / "content")
    make_prefixes(store.root)
    sealer = Sealer(keyring, store, ledger_id)
    fresh = Sealer(keyring, ContentStore(work / "content-new"), ledger_id)  # no prefix directory yet
    writer = LedgerWriter.create(work / "ledger.jsonl", genesis())
    small = os.open(work / "small", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    line = b'{"inference":"0123456789abcdef","ts":"2025-01-01T00:00:00.000000Z","wrapped":"' + b"A" * 80 + b'"}\n'
    sealer.seal(warm := new_id(), "steady", {"prompt": PROMPT})  # this month's group for "steady"
    sealer.forget(warm)
    fresh.seal(warm := new_id(), "steady", {"prompt": PROMPT})
    fresh.forget(warm)
    result: dict[str, list[float]] = {k: [] for k in ("fsync", "create", "ledger", "first", "steady", "new-prefix",
                                                      "output")}

    def small_sync() -> None:
        os.write(small, line)
        os.fsync(small)

    def create(i: int) -> None:
        path = store.root / f"{i % 256:02x}" / f"empty-{i}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def once(name: str, person: str, field: str, on: Sealer = sealer) -> None:
        ident = new_id()
        if field == "output":
            on.seal(ident, person, {"prompt": PROMPT})  # the begin's sealing, untimed: the data key is held
        new = not on.store.path(f"{ident}.{field}").parent.is_dir()
        spent = timed(lambda: on.seal(ident, person, {field: PROMPT if field == "prompt" else OUTPUT}))
        on.forget(ident)
        if name != "new-prefix" or new:
            result[name].append(spent)

    try:
        for r in range(rounds):
            steps: list[Callable[[int], None]] = [
                lambda _: result["fsync"].append(timed(small_sync)),
                lambda i: result["create"].append(timed(lambda: create(i))),
                lambda i: result["ledger"].append(timed(lambda: writer.append("inference.begin", sample_data(i)))),
                lambda i: once("first", f"person-{i}", "prompt"),
                lambda _: once("steady", "steady", "prompt"),
                lambda _: once("new-prefix", "steady", "prompt", fresh),
                lambda _: once("output", "steady", "output"),
            ]
            for step in steps[r % len(steps):] + steps[:r % len(steps)]:  # no step always first
                step(r)
    finally:
        os.close(small)
        writer.close()
    return result


def report(first: dict[str, Any], steps: dict[str, list[float]], tokens: int) -> None:
    hashed, sealed = first["times"]["hash"], first["times"]["sealed"]
    paired = [s - h for h, s in zip(hashed, sealed, strict=True)]
    print(f"load average {os.getloadavg()[0]:.2f}; Gemma 3 270M Q4_K_M, greedy, {tokens} tokens, "
          f"{len(hashed)} rounds of each policy, alternating")
    print("time to first token (Appliance.infer, call to first piece)   median ms   p90 ms   syncs to first piece")
    for mode, samples in (("hash", hashed), ("sealed", sealed)):
        s = first["syncs"][mode]
        print(f"  record_content = {mode:<8}                                {ms(statistics.median(samples))}  "
              f"{ms(quantile(samples, 90))}   {s['fsync']} fsync + {s['fdatasync']} fdatasync")
    difference = statistics.median(sealed) - statistics.median(hashed)
    print(f"  sealed - hash: medians {ms(difference)} ms, p90s {ms(quantile(sealed, 90) - quantile(hashed, 90))} ms, "
          f"median of the paired differences {ms(statistics.median(paired))} ms (target: under 1 ms); "
          f"ratio of medians {statistics.median(sealed) / statistics.median(hashed):.4f}x")
    print("  of which")
    spans = {"call to durable begin, hash": first["times"]["to begin hash"],
             "call to durable begin, sealed": first["times"]["to begin sealed"],
             "durable begin to first piece, hash": [t - b for t, b in zip(hashed, first["times"]["to begin hash"],
                                                                          strict=True)],
             "durable begin to first piece, sealed": [t - b for t, b in zip(sealed, first["times"]["to begin sealed"],
                                                                            strict=True)],
             **{f"Inferences.{name}": samples for name, samples in first["inside"].items()}}
    for name, samples in spans.items():
        print(f"    {name:<54} {ms(statistics.median(samples))}  {ms(quantile(samples, 90))}")
    print("sealing alone and its floor, same directory, interleaved      median ms   p99 ms   n")
    names = {"fsync": "floor: append + fsync of a small file", "create": "floor: create an empty file (no sync)",
             "ledger": "floor: one durable ledger append",
             "first": "Sealer.seal, prompt, first of person/month",
             "steady": "Sealer.seal, prompt, steady state",
             "new-prefix": "Sealer.seal, prompt, steady, new prefix directory",
             "output": "Sealer.seal, output at inference.end"}
    for key, name in names.items():
        samples = steps[key]
        print(f"  {name:<58} {ms(statistics.median(samples))}  {ms(quantile(samples, 99))}  {len(samples):4d}")
    floor = statistics.median(steps["fsync"])
    print(f"  steady prompt seal / one small fsync: {statistics.median(steps['steady']) / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to make the homes (default: a temporary directory)")
    parser.add_argument("--rounds", type=int, default=150, help="first-token rounds of each policy")
    parser.add_argument("--tokens", type=int, default=4, help="tokens per completion")
    parser.add_argument("--seals", type=int, default=200, help="rounds of the sealing steps")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sealed-content-", dir=args.dir))
    try:
        steps = seal_steps(base, args.seals)
        first = ttft(base, args.rounds, args.tokens)
        report(first, steps, args.tokens)
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()

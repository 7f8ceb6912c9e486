"""The cluster benchmark's byte counting and report, on fixed readings (no model is loaded)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tools.bench import cluster_bench as bench

SS = """\
0      0      127.0.0.1:43930 127.0.0.1:44251
\t bbr wscale:10,10 rto:204 mss:35328 cwnd:11 bytes_sent:1000 bytes_acked:1001 bytes_received:10 segs_out:4
0      0      127.0.0.3:51000 127.0.0.2:50052
\t cubic wscale:7,7 rto:201 bytes_sent:212970000 bytes_acked:212970001 segs_out:3300 lastsnd:4
"""


def test_ss_output_gives_each_sockets_bytes_by_local_port() -> None:
    assert bench.parse_ss(SS) == {43930: (1000, 10), 51000: (212970000, 0)}
    assert bench.parse_ss("") == {}


def test_bytes_moved_count_new_sockets_whole_and_closed_ones_not_at_all() -> None:
    before = {1: (100, 10), 2: (5, 5)}  # 2 closes before the second reading
    after = {1: (150, 30), 3: (7, 1)}  # 3 opened in between
    assert bench.moved(before, after) == (50 + 7, 20 + 1)


def rounds(load: float, ttft: float, tg: float, text: str = "Paris") -> list[dict[str, Any]]:
    sockets = {"llama.cpp": (200, 2), "link": (202, 4)}
    return [{"load_s": load, "ttft_s": ttft, "pp_tps": 81 / ttft, "tg_tps": tg, "recorded_prompt_s": ttft,
             "prompt_tokens": 81, "text": text, "load_bytes": sockets, "generation_bytes": sockets}] * 3


def test_the_report_gives_each_split_as_a_ratio_to_local_and_to_rpc(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(rounds=3, tokens=2, threads=1, no_pin=False, gpu_layers=10)
    bench.report(args, {"local": rounds(0.5, 0.25, 40.0), "rpc": rounds(1.0, 0.25, 32.0),
                        "tls": rounds(1.5, 0.30, 28.0)})
    out = capsys.readouterr().out
    generation = next(line for line in out.splitlines() if "generation tokens/s" in line)
    assert generation.split()[-6:] == ["40.0", "32.0", "28.0", "0.80x", "0.70x", "0.88x"]
    load = next(line for line in out.splitlines() if line.strip().startswith("load (ms)"))
    assert load.split()[-3:] == ["2.00x", "3.00x", "1.50x"]
    assert "identical in every round of every configuration: yes" in out

    bench.report(args, {"local": rounds(0.5, 0.25, 40.0), "rpc": rounds(1.0, 0.25, 32.0),
                        "tls": rounds(1.5, 0.30, 28.0, text="Lyon")})
    assert "identical in every round of every configuration: NO" in capsys.readouterr().out

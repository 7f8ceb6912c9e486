"""The concurrency benchmark's arithmetic and report, on fixed timings (no server is started)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from tools.bench import concurrency_bench as bench
from tools.bench.concurrency_bench import Measures, Sample


def test_a_stage_is_measured_from_the_first_request_sent_to_the_last_byte() -> None:
    m = bench.measure([Sample(sent=0.0, first=0.5, end=2.0, tokens=10),
                 Sample(sent=0.1, first=1.0, end=4.0, tokens=20),
                 Sample(sent=0.1, first=None, end=0.2, tokens=0, error="HTTP 503: b''")])
    assert m.total_tps == pytest.approx(30 / 4.0)
    assert (m.ttft_median, m.ttft_max) == pytest.approx((0.7, 0.9))
    assert m.client_tps_median == pytest.approx((10 / 2.0 + 20 / 3.9) / 2)
    assert (m.tokens_min, m.failed) == (10, 1)


def test_a_stage_where_every_request_failed_has_no_times() -> None:
    m = bench.measure([Sample(0.0, None, 1.0, 0, "ReadTimeout: timed out")])
    assert (m.total_tps, m.failed) == (0.0, 1)
    assert math.isnan(m.ttft_median)


def test_rounds_combine_as_medians() -> None:
    m = bench.over_rounds([Measures(10, 1, 2, 5, 128, 0), Measures(30, 3, 9, 7, 100, 1), Measures(20, 2, 4, 6, 128, 0)])
    assert m == Measures(20, 2, 4, 6, 100, 1)


def test_the_report_gives_ratios_and_says_which_targets_are_met() -> None:
    llama = {1: [Measures(40, 0.1, 0.1, 40, 128, 0)], 4: [Measures(100, 0.2, 0.3, 25, 128, 0)]}
    ours = {1: [Measures(42, 0.1, 0.1, 42, 128, 0)], 4: [Measures(45, 2.0, 6.0, 11, 128, 0)]}
    text = bench.report({bench.LLAMA: llama, bench.ANTICLOUD: ours}, rounds=1)
    assert "| 4 | **anticloud / llama-server** | **0.45×** | **10.00×** | 20.00× | 0.44× | | |" in text
    assert "| 4 client(s): total tokens/s ≥ 1.0× llama-server's | 0.45× | not met |" in text
    assert "| 4 client(s): median time to first token ≤ 1.2× llama-server's | 10.00× | not met |" in text
    assert "| 1 client(s): total tokens/s (no regression) ≥ 1.0× llama-server's | 1.05× | met |" in text


def test_bad_options_are_refused_in_one_line() -> None:
    assert bench.setting("compute.parallel=4") == ("compute.parallel", "4")
    assert bench.counts("8,1,4") == [1, 4, 8]
    for parse, text in ((bench.setting, "compute.parallel"), (bench.counts, "1,two"), (bench.counts, "0,4")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_a_target_with_nothing_measured_is_not_met() -> None:
    failed = bench.measure([Sample(0.0, None, 1.0, 0, "HTTP 503: b''")])
    text = bench.report({bench.LLAMA: {4: [Measures(100, 0.2, 0.3, 25, 128, 0)]}, bench.ANTICLOUD: {4: [failed]}}, 1)
    assert "| 4 client(s): total tokens/s ≥ 1.0× llama-server's | 0.00× | not met |" in text
    assert "| 4 client(s): median time to first token ≤ 1.2× llama-server's | – | not met |" in text


def test_ratios_pair_the_rounds_so_a_slower_machine_cancels_out() -> None:
    def rounds(*tps: float) -> list[Measures]:
        return [Measures(t, 1.0, 1.0, t, 128, 0) for t in tps]

    # the machine slowed down in the last round: the ratio of the medians would say 0.5x
    text = bench.report({bench.LLAMA: {1: rounds(10, 100, 60)}, bench.ANTICLOUD: {1: rounds(9, 90, 30)}}, 3)
    assert "| 1 | **anticloud / llama-server** | **0.90×** | **1.00×** | 1.00× | 0.90× | | |" in text
    assert "| 1 client(s): total tokens/s (no regression) ≥ 1.0× llama-server's | 0.90× | not met |" in text


def test_a_run_written_by_json_prints_the_same_tables_again() -> None:
    def raw(server: str, end: float) -> dict[str, object]:
        return {"round": 0, "server": server, "clients": 1,
                "samples": [{"sent": 0.0, "first": 0.1, "end": end, "tokens": 128, "error": None}]}

    run = {"tokens": 128, "threads": 2, "slots": 4, "n_ctx": 2048, "anticloud_set": {"engine.queue_size": "8"},
           "llama_server": "llama-server", "load_average": [0.5, 1.5],
           "stages": [raw(bench.LLAMA, 2.0), raw(bench.ANTICLOUD, 4.0)]}
    text = bench.summary(json.loads(json.dumps(run)))
    assert text.startswith("Gemma 3 270M Q4_K_M, greedy, 128 tokens a request, 2 threads; llama-server -np 4 "
                           "-c 8192 -fa on; anticloud with engine.queue_size=8, compute.n_ctx 2048; load average "
                           "0.50-1.50\nMedians of 1 interleaved round(s)")
    assert "| 1 | llama-server | 64.0 | 0.10 s | 0.10 s | 64.0 | 128 | 0 |" in text
    assert "| 1 | **anticloud / llama-server** | **0.50×** | **1.00×** | 1.00× | 0.50× | | |" in text

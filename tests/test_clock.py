"""The clock rules with injected readings, and what the real kernel says of this machine's clock."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from anticloud import clock
from anticloud.clock import ClockWatch, Reading, jumped

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_a_wall_clock_stepped_forward_is_a_jump_with_its_evidence() -> None:
    jump = jumped(Reading(T0, 100.0), Reading(T0 + 3602.0, 102.0), threshold=2)
    assert jump is not None
    assert jump.to_json() == {"from": "2026-01-01T00:00:00.000000Z", "to": "2026-01-01T01:00:02.000000Z",
                              "expected": "2026-01-01T00:00:02.000000Z", "delta_ms": 3_600_000,
                              "elapsed_ms": 2000, "steady_clock": "CLOCK_BOOTTIME"}


def test_a_wall_clock_stepped_back_is_a_negative_jump() -> None:
    jump = jumped(Reading(T0, 100.0), Reading(T0 - 8.0, 102.0), threshold=2)
    assert jump is not None and jump.delta_ms == -10_000 and jump.elapsed_ms == 2000
    assert jump.to_json()["to"] < jump.to_json()["from"]


def test_the_threshold_is_exclusive_and_in_seconds() -> None:
    assert jumped(Reading(T0, 0.0), Reading(T0 + 4.0, 2.0), threshold=2) is None  # exactly 2 s: not past it
    assert jumped(Reading(T0, 0.0), Reading(T0 + 4.002, 2.0), threshold=2) is not None
    assert jumped(Reading(T0, 0.0), Reading(T0 + 0.5, 0.0), threshold=0.25) is not None


@given(st.floats(0, 10_000), st.floats(-1.999, 1.999))
def test_clocks_that_keep_pace_within_the_threshold_never_jump(elapsed: float, slew: float) -> None:
    assert jumped(Reading(T0, 50.0), Reading(T0 + elapsed + slew, 50.0 + elapsed), threshold=2) is None


class FakeClocks:
    def __init__(self) -> None:
        self.wall, self.steady = T0, 1000.0

    def tick(self, seconds: float, step: float = 0.0) -> None:
        self.wall += seconds + step
        self.steady += seconds

    def __call__(self) -> Reading:
        return Reading(self.wall, self.steady)


def test_the_watch_tells_a_jump_once_and_measures_from_the_new_time() -> None:
    clocks, told = FakeClocks(), list[clock.Jump]()
    watch = ClockWatch(2, told.append, clocks)
    clocks.tick(2)
    assert watch.check() is None
    clocks.tick(2, step=-30)
    assert watch.check() is not None
    clocks.tick(2)
    assert watch.check() is None, "the next check compares with the time after the jump"
    assert [j.delta_ms for j in told] == [-30_000]


def test_a_threshold_changed_while_watching_applies_to_the_next_check() -> None:
    clocks, told = FakeClocks(), list[clock.Jump]()
    watch = ClockWatch(60, told.append, clocks)
    clocks.tick(2, step=5)
    watch.check()
    watch.threshold = 1
    clocks.tick(2, step=5)
    watch.check()
    assert [j.delta_ms for j in told] == [5000]


def test_describe_reads_the_clocksource_and_the_sync_flags(tmp_path: Path) -> None:
    source, synced = tmp_path / "current_clocksource", tmp_path / "synchronized"
    source.write_text("kvm-clock\n")
    found = clock.describe(source, synced, lambda: {"synchronised": False})
    assert found == {"source": "kvm-clock", "timezone": "UTC", "steady_clock": "CLOCK_BOOTTIME",
                     "kernel": {"synchronised": False}}
    synced.touch()
    assert clock.describe(source, synced, lambda: {"synchronised": True})["timesyncd_synchronised"] is True
    assert clock.describe(tmp_path / "absent", synced, dict)["source"] is None


def test_this_kernel_is_read_without_changing_anything() -> None:
    found = clock.describe()
    real = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    assert found["source"] == (real.read_text().strip() if real.exists() else None)
    kernel = found["kernel"]
    assert kernel["synchronised"] in (True, False) or "error" in kernel
    if kernel["synchronised"] is not None:
        assert kernel["maxerror_us"] >= 0 and kernel["esterror_us"] >= 0
    assert clock.kernel_sync()["synchronised"] == kernel["synchronised"], "reading twice changed nothing"


def test_the_real_clocks_read_together_do_not_jump() -> None:
    before = clock.read()
    time.sleep(0.05)
    after = clock.read()
    assert after.steady - before.steady >= 0.05
    assert jumped(before, after, threshold=1) is None

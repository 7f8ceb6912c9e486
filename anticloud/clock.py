"""The clock the ledger's timestamps come from: what it is, whether the kernel keeps it in time,
and when it jumps while an engine runs.

Every ``ts`` in the ledger is the wall clock (CLOCK_REALTIME) read as UTC and written with
``Z``; no local time zone is ever involved. That clock can be stepped: by an operator, by a
time daemon correcting a large offset, by a hypervisor after a pause. A second clock,
CLOCK_BOOTTIME, is never stepped (the kernel only slews it, by at most 0.05 %) and keeps
counting through a suspend, so over the same span the two must advance alike. When they
disagree by more than a threshold, the wall clock jumped, and the records on either side of
the jump are not comparable by their ``ts`` alone: ``clock.jump`` says by how much.

The rules (`jumped`) are pure and take two readings; the kernel is read at the edges
(`read`, `describe`), and only read: nothing is set, and no time server is asked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger import utc_timestamp

TIMEZONE = "UTC"  # every ts: utc_timestamp() writes RFC 3339 with Z
STEADY_CLOCK = "CLOCK_BOOTTIME"
CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
TIMESYNCD = Path("/run/systemd/timesync/synchronized")  # made by systemd-timesyncd once it has synchronised
TIME_ERROR, STA_UNSYNC = 5, 0x0040  # adjtimex(2): the kernel's "clock not synchronised"


@dataclass(frozen=True, slots=True)
class Reading:
    """Both clocks, read together: ``wall`` in seconds since the epoch, ``steady`` since boot."""

    wall: float
    steady: float


@dataclass(frozen=True, slots=True)
class Jump:
    """The wall clock moved ``delta_ms`` more (or, negative, less) than the steady clock between two readings."""

    before: Reading
    after: Reading

    @property
    def elapsed_ms(self) -> int:
        return round((self.after.steady - self.before.steady) * 1000)

    @property
    def delta_ms(self) -> int:
        return round(((self.after.wall - self.before.wall) - (self.after.steady - self.before.steady)) * 1000)

    def to_json(self) -> dict[str, Any]:
        """``from`` and ``to`` are the wall clock at the two readings; ``expected`` is where it should
        have been at the second, had it kept pace with the steady clock."""
        return {"from": _ts(self.before.wall), "to": _ts(self.after.wall),
                "expected": _ts(self.before.wall + (self.after.steady - self.before.steady)),
                "delta_ms": self.delta_ms, "elapsed_ms": self.elapsed_ms, "steady_clock": STEADY_CLOCK}


def jumped(before: Reading, after: Reading, threshold: float) -> Jump | None:
    """The jump between two readings if the clocks disagree by more than ``threshold`` seconds, else None."""
    jump = Jump(before, after)
    return jump if abs(jump.delta_ms) > threshold * 1000 else None


def _ts(wall: float) -> str:
    return utc_timestamp(datetime.fromtimestamp(wall, UTC))


# -- the edges: reading the kernel -------------------------------------------------------------


def read() -> Reading:
    """Both clocks now, the steady one read last so a jump between the two calls counts as none."""
    wall = time.time()
    return Reading(wall, time.clock_gettime(time.CLOCK_BOOTTIME))


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` of adjtimex(2), with glibc's reserved tail."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("reserved", ctypes.c_int * 11)]


def kernel_sync() -> dict[str, Any]:
    """What adjtimex(2) says of the clock, read with ``modes`` 0 (which changes nothing and needs
    no privilege): whether the kernel considers it synchronised, and its error bounds in µs."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError) as exc:
        return {"synchronised": None, "error": f"adjtimex unavailable: {exc}"[:200]}
    if state < 0:
        return {"synchronised": None, "error": f"adjtimex: errno {ctypes.get_errno()}"}
    return {"synchronised": state != TIME_ERROR and not timex.status & STA_UNSYNC,
            "maxerror_us": int(timex.maxerror), "esterror_us": int(timex.esterror)}


def describe(clocksource: Path = CLOCKSOURCE, timesyncd: Path = TIMESYNCD,
             sync: Callable[[], dict[str, Any]] = kernel_sync) -> dict[str, Any]:
    """The clock behind every ``ts``, as ``engine.start`` records it: the kernel's clocksource,
    whether the kernel considers the clock synchronised (and systemd-timesyncd's flag, where the
    host runs it), the time zone of the timestamps, and the steady clock jumps are measured by."""
    try:
        source: str | None = clocksource.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        source = None
    found: dict[str, Any] = {"source": source, "timezone": TIMEZONE, "steady_clock": STEADY_CLOCK,
                             "kernel": sync()}
    if timesyncd.exists():
        found["timesyncd_synchronised"] = True
    return found


class ClockWatch:
    """Compares the two clocks at every `check`; a disagreement past ``threshold`` seconds is a jump,
    handed to ``tell`` (which records it). The baseline then moves on, so a jump is told once."""

    def __init__(self, threshold: float, tell: Callable[[Jump], object],
                 reader: Callable[[], Reading] = read) -> None:
        self.threshold, self._tell, self._read = threshold, tell, reader
        self._last = reader()
        self._lock = threading.Lock()

    def check(self) -> Jump | None:
        with self._lock:
            now = self._read()
            jump = jumped(self._last, now, self.threshold)
            self._last = now
        if jump is not None:
            self._tell(jump)
        return jump

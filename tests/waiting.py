"""How a test waits: it polls with a deadline and, at the deadline, fails loudly naming what it
waited for. Never a fixed sleep. Nothing here imports pytest, so the scripts that the tests run
in child processes (inside a network namespace, say) wait the same way."""

from __future__ import annotations

import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


def poll(condition: Callable[[], object], seconds: float, what: str, interval: float = 0.05) -> object:
    """Wait until ``condition()`` is truthy and return its value; fail loudly, naming ``what``, at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_socket(path: Path | str, seconds: float = 30, server: subprocess.Popen[Any] | None = None) -> None:
    """Wait until a server started in the background has created its unix socket; if the ``server``
    process is given and exits first, fail at once with its exit code rather than at the deadline."""
    path = Path(path)

    def there() -> bool:
        if server is not None and server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode} before it created {path}")
        return path.exists()

    poll(there, seconds, f"a server's socket at {path}")


def join(thread: threading.Thread, seconds: float, what: str) -> None:
    """Join ``thread``; fail loudly, naming ``what``, if it is still running at the deadline."""
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


def read_line(stream: IO[str], seconds: float, what: str) -> str:
    """The next line a child process writes to ``stream`` (a pipe it flushes whole lines to);
    fail loudly, naming ``what``, if none comes before the deadline."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(seconds):
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
    return stream.readline()


def all_at_once(calls: list[Callable[[], T]], seconds: float = 300) -> list[T]:
    """Each call in a thread of its own, all released at the same moment; their results, in order."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(i: int) -> None:
        start.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        join(t, seconds, "a call made at the same moment as others")
    return results

"""Generation in a worker thread, feeding the event loop through a small bounded window.

Invariants: at most ``depth`` pieces wait unread, so a slow reader pauses generation instead
of growing a buffer; ``cancel()`` (a reader that went away) stops the producer at its next
token, and the generator is always closed in the worker, which lets the inference record
its end (``client_disconnected``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import Any

from anticloud.engines import Done

Produce = Callable[[Callable[[], bool]], Generator[str | Done, None, None]]


class _Cancelled(Exception):
    pass


class TokenStream:
    def __init__(self, produce: Produce, depth: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._room = threading.Semaphore(depth)
        self._cancel = threading.Event()
        threading.Thread(target=self._run, args=(produce,), name="generation", daemon=True).start()

    def _run(self, produce: Produce) -> None:
        generator = None
        try:
            generator = produce(self._cancel.is_set)
            for piece in generator:
                self._emit("piece", piece)
            self._emit("end", None)
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the reader, which answers with it
            self._emit_nowait("error", exc)
        finally:
            if generator is not None:
                generator.close()

    def _emit(self, kind: str, value: Any) -> None:
        while not self._room.acquire(timeout=0.05):  # the reader is slow: wait, but notice a cancel
            if self._cancel.is_set():
                raise _Cancelled
        self._emit_nowait(kind, value)

    def _emit_nowait(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    async def get(self) -> tuple[str, Any]:
        """("piece", str | Done), ("end", None) or ("error", exception)."""
        item = await self._queue.get()
        self._room.release()
        return item

    def cancel(self) -> None:
        self._cancel.set()

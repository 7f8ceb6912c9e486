"""Generation in a worker thread, feeding the event loop through a small bounded window.

Invariants: at most ``depth`` pieces wait unread, so a slow reader pauses generation instead
of growing a buffer; ``cancel()`` (a reader that went away) stops the producer at its next
token, and the generator is always closed in the worker, which lets the inference record
its end (``client_disconnected``). A reader that takes nothing for ``stall_timeout`` seconds
holds the model no longer: the generation is stopped and recorded as ``client_stalled``,
which frees the model for the next request, and the connection is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from anticloud.api.connections import current_abort
from anticloud.engines import Done
from anticloud.errors import StreamStalled

Produce = Callable[[Callable[[], bool]], Generator[str | Done, None, None]]


class _Cancelled(Exception):
    pass


class _Stalled(Exception):
    pass


class TokenStream:
    def __init__(self, produce: Produce, stall_timeout: float | None = None, depth: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._room = threading.Semaphore(depth)
        self._cancel = threading.Event()
        self._stall_timeout = stall_timeout
        self._abort = current_abort()  # this request's connection, if the server offers it
        # In a copy of the request's context: what the generation records is the request's act (anticloud.actor).
        threading.Thread(target=contextvars.copy_context().run, args=(self._run, produce), name="generation",
                         daemon=True).start()

    def _run(self, produce: Produce) -> None:
        generator = None
        try:
            generator = produce(self._cancel.is_set)
            for piece in generator:
                self._emit("piece", piece)
            self._emit("end", None)
        except _Cancelled:
            pass
        except _Stalled:
            self._cut_off(generator)
        except BaseException as exc:  # noqa: BLE001 -- handed to the reader, which answers with it
            self._emit_nowait("error", exc)
        finally:
            if generator is not None:
                generator.close()

    def _emit(self, kind: str, value: Any) -> None:
        deadline = None if self._stall_timeout is None else time.monotonic() + self._stall_timeout
        while not self._room.acquire(timeout=0.05):  # the reader is slow: wait, but notice a cancel
            if self._cancel.is_set():
                raise _Cancelled
            if deadline is not None and time.monotonic() > deadline:
                raise _Stalled
        self._emit_nowait(kind, value)

    def _cut_off(self, generator: Generator[str | Done, None, None] | None) -> None:
        """Stop the generation, recorded as client_stalled, then drop the connection."""
        stalled = StreamStalled(f"the client read nothing for {self._stall_timeout:g} s")
        if generator is not None:
            # It raises the stall back, or the end record's failure: either way the generation is over.
            with contextlib.suppress(Exception):
                generator.throw(stalled)
        self._emit_nowait("error", stalled)
        if self._abort is not None:
            self._loop.call_soon_threadsafe(self._abort)

    def _emit_nowait(self, kind: str, value: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    async def get(self) -> tuple[str, Any]:
        """("piece", str | Done), ("end", None) or ("error", exception)."""
        item = await self._queue.get()
        self._room.release()
        return item

    def cancel(self) -> None:
        self._cancel.set()

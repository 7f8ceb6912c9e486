"""The two kinds of byte stream the relay joins: a plain TCP socket (the loopback side, to or from
llama.cpp) and a TLS connection (the cable side). `relay.pump` drives both, non-blocking, from
one thread per session.

The TLS side runs OpenSSL over memory buffers (`ssl.MemoryBIO`) rather than `ssl.SSLSocket`:

* one thread reads and writes a session's TLS state, so OpenSSL is never entered from two
  threads at once (not safe in TLS 1.3, where reading may have to write);
* a half-close sends close_notify and goes on reading the peer's remaining data. An SSLSocket
  cannot: ``shutdown()`` drops its TLS state and ``unwrap()`` waits for the peer's
  close_notify, discarding data that arrives first. Here the relay moves every byte itself, and
  keeps the invariant that no complete record lies unread in OpenSSL when close_notify is sent.

A TCP end without close_notify (a truncation) raises `ssl.SSLEOFError`: it is an error that
aborts the session, never an end of stream.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Protocol

__all__ = ["CHUNK", "LIMIT", "PlainStream", "Stream", "TlsStream"]

CHUNK = 256 * 1024  # read and write at most this much at a time (larger than any TLS record)
LIMIT = 1024 * 1024  # hold at most about this much unsent before reading more


class Stream(Protocol):
    """One end of a relayed session, as `relay.pump` drives it."""

    @property
    def sock(self) -> socket.socket: ...

    def receive(self) -> tuple[bytes, bool]:
        """The data that has arrived and whether the peer's side has ended: ``(b"", False)`` if
        nothing yet. Raises OSError (`ssl.SSLError` included) on a broken stream."""
        ...

    def buffered(self) -> bool:
        """Whether `receive` has something without the socket becoming readable."""
        ...

    def offer(self, data: bytearray) -> int:
        """Take up to ``len(data)`` bytes to send, returning how many; 0 if it holds enough."""
        ...

    def flush(self) -> None:
        """Send what the socket takes now of what it holds."""
        ...

    def queued(self) -> int:
        """Bytes taken by `offer` (or the TLS layer) but not yet sent."""
        ...

    def finish(self) -> None:
        """Nothing more will be offered: end this side of the stream (a half-close)."""
        ...

    def abort(self) -> None:
        """Cut the stream off from any thread; the pump then sees an error and ends."""
        ...

    def close(self) -> None: ...


class PlainStream:
    """A TCP socket on loopback: llama.cpp's connection to the tunnel, or the gate's to the RPC server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> tuple[bytes, bool]:
        try:
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return b"", False
        return data, not data

    def buffered(self) -> bool:
        return False

    def offer(self, data: bytearray) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def flush(self) -> None:
        pass

    def queued(self) -> int:
        return 0

    def finish(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        _cut(self.sock)

    def close(self) -> None:
        self.sock.close()


class TlsStream:
    """A TLS connection over a TCP socket, handshaken with a deadline, then driven by the pump."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        self.sock = sock
        self.tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._cipher = bytearray()  # ciphertext made, not yet taken by the socket
        self._plain = bytearray()  # plaintext decrypted, not yet received
        self._ended = False  # the peer's close_notify has been read

    @classmethod
    def connect(cls, context: ssl.SSLContext, sock: socket.socket, seconds: float) -> TlsStream:
        """The client's handshake on a connected socket (which is closed if it fails)."""
        return cls._handshake(context, sock, server_side=False, seconds=seconds)

    @classmethod
    def accept(cls, context: ssl.SSLContext, sock: socket.socket, seconds: float) -> TlsStream:
        """The server's handshake on an accepted socket (which is closed if it fails)."""
        return cls._handshake(context, sock, server_side=True, seconds=seconds)

    @classmethod
    def _handshake(cls, context: ssl.SSLContext, sock: socket.socket, server_side: bool, seconds: float) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        stream = cls(sock, context.wrap_bio(incoming, outgoing, server_side=server_side), incoming, outgoing)
        deadline = time.monotonic() + seconds
        try:
            while True:
                try:
                    stream.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    stream._send_all(deadline)
                    stream._feed_blocking(deadline)
                except ssl.SSLError:
                    # Tell the peer why (OpenSSL has queued an alert), then fail.
                    with contextlib.suppress(OSError):
                        stream._send_all(min(deadline, time.monotonic() + 1))
                    raise
            stream._send_all(deadline)
        except BaseException:
            sock.close()
            raise
        return stream

    # -- blocking steps, before the pump takes over --------------------------------------------

    def send_now(self, data: bytes, seconds: float) -> None:
        self.tls.write(data)
        self._send_all(time.monotonic() + seconds)

    def next_byte(self, seconds: float) -> bytes:
        """Wait for one byte of plaintext (b"" if the peer ends the stream first); whatever came
        with it stays for `receive`."""
        deadline = time.monotonic() + seconds
        self._decrypt()
        while not self._plain and not self._ended:
            self._feed_blocking(deadline)
            self._decrypt()
        self._send_all(deadline)
        first = bytes(self._plain[:1])
        del self._plain[:1]
        return first

    def decline(self) -> None:
        """End a connection that will carry nothing: close_notify, sent if the socket takes it at once."""
        with contextlib.suppress(OSError):
            self.tls.unwrap()
        self._cipher += self._outgoing.read()
        with contextlib.suppress(OSError):
            self._send_all(time.monotonic() + 1)
        self.sock.close()

    def _send_all(self, deadline: float) -> None:
        self._cipher += self._outgoing.read()
        if self._cipher:
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(self._cipher)
            self._cipher.clear()

    def _feed_blocking(self, deadline: float) -> None:
        self.sock.settimeout(_remaining(deadline))
        raw = self.sock.recv(CHUNK)
        if raw:
            self._incoming.write(raw)
        else:
            self._incoming.write_eof()

    def _decrypt(self) -> None:
        """Read every complete record into ``_plain`` (this keeps the module's invariant)."""
        while not self._ended:
            try:
                piece = self.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                piece = b""
            if not piece:  # close_notify (an unannounced end raised SSLEOFError instead)
                self._ended = True
                break
            self._plain += piece
        self._cipher += self._outgoing.read()

    # -- the pump's side ---------------------------------------------------------------------

    def receive(self) -> tuple[bytes, bool]:
        if not self._plain and not self._ended:
            try:
                raw = self.sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                return b"", False
            if raw:
                self._incoming.write(raw)
            else:
                self._incoming.write_eof()
            self._decrypt()
        data = bytes(self._plain)
        self._plain.clear()
        return data, self._ended

    def buffered(self) -> bool:
        return bool(self._plain) or self._ended

    def offer(self, data: bytearray) -> int:
        if len(self._cipher) >= LIMIT:
            return 0
        taken = self.tls.write(bytes(data[:CHUNK]))
        self._cipher += self._outgoing.read()
        return taken

    def flush(self) -> None:
        if self._cipher:
            try:
                sent = self.sock.send(self._cipher)
            except (BlockingIOError, InterruptedError):
                return
            del self._cipher[:sent]

    def queued(self) -> int:
        return len(self._cipher)

    def finish(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):  # close_notify is written; the peer's comes to `receive`
            self.tls.unwrap()
        self._cipher += self._outgoing.read()

    def abort(self) -> None:
        _cut(self.sock)

    def close(self) -> None:
        self.sock.close()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _cut(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked on the socket, where close() from another thread would not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)

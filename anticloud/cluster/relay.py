"""The cluster link's byte relay: llama.cpp's RPC connections carried over mutual TLS.

* `Tunnel`, the engine's side: a listener on 127.0.0.1 that llama.cpp connects to; each
  connection is carried over TLS to the worker's cluster address.
* `Gate`, the worker's side: a TLS listener on the cluster address; each authenticated session
  is carried to the RPC server on loopback.
* `pump` moves the bytes of one session both ways; a `Counter` counts them.

The link's one addition to the bytes it carries: once the gate has admitted a session (a
pinned certificate, the session recorded, the RPC server reached) it sends one byte, 0x01,
and only after reading it does the tunnel relay. TLS 1.3 ends the client's handshake before the
server has judged the client's certificate, so without it the engine could not tell a link
that works from one the worker refuses, and llama.cpp aborts its process when an RPC
connection fails: `Tunnel.probe` proves the whole path before the engine registers the device.

Invariants: the gate closes a connection from an address it does not allow before any TLS
byte, and a session whose beginning the callback could not take never reaches the RPC server
(fail closed). The tunnel sends no byte of llama.cpp's over a link before the worker's pinned
certificate is verified and the gate has admitted it.

Any local process can reach a loopback port, or take a free one: the tunnel carries only
connections whose other end is a socket of this very process (llama.cpp's), and the gate hands
a session only to an RPC server listening with a socket of its own process (`sockets`).
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from anticloud.cluster import sockets
from anticloud.cluster.listener import Connection, Listener, show
from anticloud.cluster.stream import LIMIT, PlainStream, Stream, TlsStream
from anticloud.cluster.tls import Pins, check_pinned
from anticloud.errors import ClusterError

__all__ = ["ACK", "Counter", "Gate", "Traffic", "Tunnel", "pump"]

ACK = b"\x01"
CLOSED = "closed"  # why a session ended when both sides ended their streams
HANDSHAKE_SECONDS = 10.0

EventSink = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class Traffic:
    """Bytes that crossed the link: ``sent`` to the peer, ``received`` from it."""

    sent: int = 0
    received: int = 0

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.sent - other.sent, self.received - other.received)


class Counter:
    """A running count of the bytes relayed each way; `snapshot` from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self._sent += sent
            self._received += received

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(self._sent, self._received)


@dataclass(eq=False)
class _Direction:
    src: Stream
    dst: Stream
    sent: bool  # counted as sent (local -> remote) or received
    buffer: bytearray
    ended: bool = False  # src has ended its side
    finished: bool = False  # ... and dst has been told


def pump(local: Stream, remote: Stream, counter: Counter) -> str:
    """Relay both ways until both sides have ended their streams, then close both; return why
    it ended: ``"closed"``, or the error that broke it off (then both are closed at once).
    Bytes from ``local`` to ``remote`` count as sent. A side that ends its stream (a half-close)
    still receives everything the other side sends until that side ends too."""
    out = _Direction(local, remote, True, bytearray())
    back = _Direction(remote, local, False, bytearray())
    try:
        for stream in (local, remote):
            stream.sock.setblocking(False)
            # llama.cpp writes a command in pieces (a byte, a size, the body) and waits for the
            # answer: with Nagle's algorithm the relay would hold each later piece back until the
            # first is acknowledged, adding milliseconds to every round trip.
            stream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with selectors.DefaultSelector() as selector:
            _relay(selector, out, back, counter)
        return CLOSED
    except OSError as exc:  # ssl.SSLError included
        return _why(exc)
    finally:
        local.close()
        remote.close()


def _relay(selector: selectors.BaseSelector, out: _Direction, back: _Direction, counter: Counter) -> None:
    registered: dict[Stream, int] = {}
    while True:
        for d in (out, back):
            _deliver(d, counter)
        if out.finished and back.finished and not out.dst.queued() and not back.dst.queued():
            return
        wanted: dict[Stream, int] = {out.src: 0, back.src: 0}
        ready_now = []
        for d in (out, back):
            if not d.ended and len(d.buffer) < LIMIT:
                wanted[d.src] |= selectors.EVENT_READ
                if d.src.buffered():
                    ready_now.append(d)
            if d.buffer or d.dst.queued():
                wanted[d.dst] |= selectors.EVENT_WRITE
        for stream, events in wanted.items():
            _watch(selector, registered, stream, events)
        if not registered and not ready_now:
            raise ConnectionError("the relay is stuck")  # cannot happen: both ends would be done
        readable = [key.data for key, mask in selector.select(0 if ready_now else None) if mask & selectors.EVENT_READ]
        for d in (out, back):
            if d in ready_now or (d.src in readable and not d.ended and len(d.buffer) < LIMIT):
                data, ended = d.src.receive()
                d.buffer += data
                d.ended = ended


def _deliver(d: _Direction, counter: Counter) -> None:
    while d.buffer:
        taken = d.dst.offer(d.buffer)
        if not taken:
            break
        del d.buffer[:taken]
        if d.sent:
            counter.add(sent=taken)
        else:
            counter.add(received=taken)
    if d.ended and not d.buffer and not d.finished:
        d.dst.finish()
        d.finished = True
    d.dst.flush()


def _watch(selector: selectors.BaseSelector, registered: dict[Stream, int], stream: Stream, events: int) -> None:
    before = registered.get(stream, 0)
    if events == before:
        return
    if not events:
        selector.unregister(stream.sock)
        del registered[stream]
    elif not before:
        selector.register(stream.sock, events, stream)
        registered[stream] = events
    else:
        selector.modify(stream.sock, events, stream)
        registered[stream] = events


def _why(exc: OSError) -> str:
    """One line for what broke a connection: OpenSSL's reason (and the certificate check's)."""
    if isinstance(exc, ssl.SSLError):
        why = exc.reason.replace("_", " ").lower() if exc.reason else str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
            why += f" ({exc.verify_message})"
        return why
    return exc.strerror or str(exc) or type(exc).__name__


class Tunnel:
    """The engine's end: ``endpoint`` is where llama.cpp connects (127.0.0.1, a port of the
    system's choosing); each connection is relayed over TLS to the worker at ``peer``, leaving
    from the cluster address ``source`` if given. ``counter`` counts every session's bytes."""

    def __init__(
        self,
        peer: tuple[str, int],
        context: ssl.SSLContext,
        pins: Pins,
        source: str | None = None,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        local_only: bool = True,
    ) -> None:
        self.peer = peer
        self._local_only = local_only  # carry only connections this process made
        self._context = context
        self._pins = pins
        self._source = source
        self._seconds = handshake_seconds
        self.counter = Counter()
        self.last_error: str | None = None  # why the last connection could not be carried
        self.lost: str | None = None  # why a session the worker had admitted ended on its side
        self._listener = Listener(("127.0.0.1", 0), self._serve)
        self.endpoint = f"127.0.0.1:{self._listener.address[1]}"

    def probe(self) -> str:
        """Make one TLS session with the worker and end it; return the worker's fingerprint, or
        raise ClusterError saying why the link does not work."""
        stream, found = self._dial(None)
        stream.decline()
        return found

    def close(self) -> None:
        self._listener.close("the tunnel closed")

    def _serve(self, connection: Connection, sock: socket.socket, peer: str) -> None:
        if not ipaddress.ip_address(peer).is_loopback:
            return  # unreachable while bound to 127.0.0.1; kept so that a change cannot open it
        if self._local_only and not sockets.ours(sock.getpeername()[1], sockets.CONNECTED):
            self.last_error = f"refused a connection from {peer}: not this process's (only llama.cpp's are carried)"
            return
        try:
            stream, _ = self._dial(connection)
        except ClusterError as exc:
            self.last_error = str(exc)
            return
        watched = _Watched(stream, self._ended)
        reason = pump(PlainStream(sock), watched, self.counter)
        if reason != CLOSED and not watched.finished:
            self._ended(reason)

    def _ended(self, reason: str = "the worker ended the session") -> None:
        """The worker's side of a session ended or broke: llama.cpp aborts its process at its next
        use of the link, so the engine must stop using it (`lost`)."""
        if self.lost is None:
            self.lost = reason

    def _dial(self, connection: Connection | None) -> tuple[TlsStream, str]:
        where = show(self.peer)
        source = (self._source, 0) if self._source else None
        try:
            sock = socket.create_connection(self.peer, timeout=self._seconds, source_address=source)
        except OSError as exc:
            raise ClusterError(f"cannot reach the cluster peer {where}: {exc.strerror or exc}") from None
        if connection is not None:
            connection.add(sock)
        try:
            stream = TlsStream.connect(self._context, sock, self._seconds)
        except OSError as exc:
            raise ClusterError(f"TLS handshake with the cluster peer {where} failed: {_why(exc)}") from None
        try:
            found = check_pinned(stream.tls, self._pins)
            admitted = stream.next_byte(self._seconds)
        except ClusterError as exc:
            sock.close()
            raise ClusterError(f"{where}: {exc}") from None
        except ssl.SSLError as exc:
            sock.close()
            raise ClusterError(f"the cluster peer {where} refused this appliance: {_why(exc)}") from None
        except OSError as exc:
            sock.close()
            raise ClusterError(f"the cluster peer {where} did not admit this appliance: {_why(exc)}") from None
        if admitted != ACK:
            sock.close()
            raise ClusterError(
                f"the cluster peer {where} closed the link without admitting this appliance "
                "(its certificate not pinned there, the worker paused, or its ledger failing)"
            )
        return stream, found


class Gate:
    """The worker's end: listens on ``listen`` (the cluster address, never every address) and
    relays each admitted session to the RPC server at ``target`` on loopback.

    ``on_event`` hears ``rejected`` {peer, reason}, ``begin`` {peer, certificate} and ``end``
    {peer, certificate, bytes_in, bytes_out, duration_ms, reason}. If it raises on ``begin``
    the session is refused (fail closed: what the ledger did not take does not happen); what it
    raises on ``rejected`` or ``end`` is its own to handle, as the connection is over by then."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        context: ssl.SSLContext,
        pins: Pins,
        allowed_peers: set[str],
        on_event: EventSink,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        own_target: bool = True,
    ) -> None:
        self._own_target = own_target  # hand sessions only to an RPC server this process listens with
        if _address(listen[0]).is_unspecified:
            raise ClusterError(f"the gate listens on the cluster address only, not on {listen[0]}")
        self._allowed = {_address(peer) for peer in allowed_peers}
        self._target = target
        self._context = context
        self._pins = pins
        self._on_event = on_event
        self._seconds = handshake_seconds
        self._lock = threading.Lock()
        self._paused: str | None = None
        self._listener = Listener(listen, self._serve)
        self.address = self._listener.address

    def pause(self, reason: str) -> None:
        """Refuse new sessions (each reported as rejected with ``reason``); open ones go on."""
        with self._lock:
            self._paused = reason

    def resume(self) -> None:
        with self._lock:
            self._paused = None

    def close_sessions(self, reason: str) -> None:
        """End every open session and connection now; each session's end carries ``reason``."""
        self._listener.cut_all(reason)

    def close(self) -> None:
        self._listener.close("the gate closed")

    def _refusal(self, peer: str) -> str | None:
        if ipaddress.ip_address(peer) not in self._allowed:
            return "address not allowed"
        with self._lock:
            return f"paused: {self._paused}" if self._paused is not None else None

    def _reject(self, peer: str, reason: str) -> None:
        self._on_event("rejected", {"peer": peer, "reason": reason})

    def _serve(self, connection: Connection, sock: socket.socket, peer: str) -> None:
        refusal = self._refusal(peer)
        if refusal:  # before a single TLS byte
            self._reject(peer, refusal)
            return
        try:
            stream = TlsStream.accept(self._context, sock, self._seconds)
        except OSError as exc:
            self._reject(peer, connection.settle(f"TLS handshake failed: {_why(exc)}"))
            return
        try:
            certificate = check_pinned(stream.tls, self._pins)
        except ClusterError as exc:
            stream.decline()
            self._reject(peer, str(exc))
            return
        refusal = connection.reason or self._refusal(peer)  # paused, or cut, during the handshake
        if refusal:
            stream.decline()
            self._reject(peer, refusal)
            return
        facts: dict[str, object] = {"peer": peer, "certificate": certificate}
        try:
            self._on_event("begin", dict(facts))
        except Exception:  # noqa: BLE001 -- whatever stopped the record, the session does not happen
            stream.decline()
            return
        began = time.monotonic()
        counter = Counter()
        reason = self._carry(connection, stream, counter)
        traffic = counter.snapshot()
        self._on_event("end", facts | {
            "bytes_in": traffic.received,
            "bytes_out": traffic.sent,
            "duration_ms": round((time.monotonic() - began) * 1000),
            "reason": reason if reason == CLOSED else connection.settle(reason),
        })  # fmt: skip

    def _carry(self, connection: Connection, stream: TlsStream, counter: Counter) -> str:
        port = self._target[1]
        if self._own_target and sockets.listening(port) and not sockets.ours(port, sockets.LISTEN):
            reason = connection.settle(f"the RPC port {show(self._target)} is held by another process")
            stream.decline()
            return reason
        try:
            rpc = socket.create_connection(self._target, timeout=self._seconds)
        except OSError as exc:
            # Settled before the engine can see the refusal, so that nothing can record it as cut off.
            reason = connection.settle(f"the RPC server at {show(self._target)} is unreachable: {exc.strerror or exc}")
            stream.decline()
            return reason
        connection.add(rpc)
        try:
            stream.send_now(ACK, self._seconds)
        except OSError as exc:
            rpc.close()
            stream.close()
            return _why(exc)
        return pump(PlainStream(rpc), stream, counter)


class _Watched:
    """A TLS stream to the worker that reports an end the engine did not start: the worker
    closing the session, or the session breaking, before llama.cpp closed its side."""

    def __init__(self, stream: TlsStream, ended: Callable[[], None]) -> None:
        self.stream, self.ended = stream, ended
        self.finished = False  # llama.cpp closed its side first: an end that follows is expected

    @property
    def sock(self) -> socket.socket:
        return self.stream.sock

    def receive(self) -> tuple[bytes, bool]:
        try:
            data, over = self.stream.receive()
        except OSError:
            if not self.finished:
                self.ended()
            raise
        if over and not self.finished:
            self.ended()
        return data, over

    def buffered(self) -> bool:
        return self.stream.buffered()

    def offer(self, data: bytearray) -> int:
        return self.stream.offer(data)

    def flush(self) -> None:
        self.stream.flush()

    def queued(self) -> int:
        return self.stream.queued()

    def finish(self) -> None:
        self.finished = True
        self.stream.finish()

    def abort(self) -> None:
        self.stream.abort()

    def close(self) -> None:
        self.stream.close()


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ClusterError(f"{host!r} is not an IP address") from None

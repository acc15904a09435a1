"""Whole-PDU reads and writes for both adapters.

A plain TCP association is read through our own `asyncio.BufferedProtocol`, given to
the connection from its start through asyncio's public API
(``loop.connect_accepted_socket`` for an accepted socket, ``loop.create_connection``
for one we open): the socket is received straight into large buffers (recv_into), a PDU
is handed out as a memoryview of that buffer (no copy), the task wakes only once a
whole PDU has arrived, a timeout is one event-loop timer per wait (not a cancel scope
per receive), and reading stays registered with the selector instead of being resumed
and paused around every receive. A TLS association goes through anyio's TLSStream
(any anyio byte stream works: the generic path, its own receive/send)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketAttribute

from router.dicom.errors import AssociationAborted, DicomTimeout
from router.dicom.pdu import HEADER_LENGTH, parse_header

_QUICKACK = getattr(socket, "TCP_QUICKACK", None) if sys.platform.startswith("linux") else None
RECEIVE_SIZE = 256 * 1024
#: receive buffers are this big (or as big as the PDU being read); never reused, so a
#: PDU handed out as a memoryview stays valid for as long as anyone holds it
CHUNK_SIZE = 256 * 1024
#: the first buffer of a connection (it holds the A-ASSOCIATE-RQ): small, so idle or
#: negotiating connections cost little
FIRST_CHUNK_SIZE = 32 * 1024
#: a buffer with less room than this left is replaced before the next receive
MIN_ROOM = 16 * 1024
#: stop reading the socket with this much received and not yet consumed (beyond the
#: PDU being waited for): memory stays bounded whatever the peer sends
HIGH_WATER = 512 * 1024
#: without any wait for the peer, a sender still yields to the event loop after this
#: many bytes (fairness to other associations, cancellation)
YIELD_BYTES = 1024 * 1024
#: how long a connect waits for one address before it tries the next as well (RFC 8305)
HAPPY_EYEBALLS_DELAY = 0.25


class PeerClosed(AssociationAborted):
    """The transport closed without an A-ABORT or A-RELEASE."""

    def __init__(self) -> None:
        super().__init__(2, 0)
        self.args = ("connection closed by peer",)


def raw_socket(stream: ByteStream) -> Any:
    """The stream's socket (on asyncio an asyncio.trsock.TransportSocket, which has
    setsockopt but is not a socket.socket), or None."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
    except Exception:
        return None
    return sock if hasattr(sock, "setsockopt") else None


def set_nodelay(sock: Any) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def kv(**fields: Any) -> dict[str, Any]:
    """Log fields, passed as ``extra``: the message is the event name, one event per
    line; router.logs renders them as logfmt, JSON or text. Only UIDs, AE titles, ids,
    sizes and statuses go in here, never values from a data set."""
    return {k: v if isinstance(v, int | float | type(None)) else str(v) for k, v in fields.items()}


class _Expired(Exception):
    pass


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class _Receiver(asyncio.BufferedProtocol):
    """The asyncio protocol of a plain TCP association, made for it from the start by
    ``loop.connect_accepted_socket`` or ``loop.create_connection``. Bytes [start, end)
    of `chunk` are received and not yet consumed."""

    transport: asyncio.Transport  # set by connection_made, before any other callback

    def __init__(self, quickack: bool) -> None:
        self.chunk = bytearray(FIRST_CHUNK_SIZE)
        self.start = 0
        self.end = 0
        self.need = 0  # bytes from start the waiting reader wants
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.eof = False
        self.lost = False
        self.quickack = quickack and _QUICKACK is not None
        self.quickack_sock: Any = None

    def relocate(self, room: int) -> None:
        """Move the unconsumed bytes to a new buffer with at least ``room`` free."""
        pending = self.end - self.start
        new = bytearray(max(CHUNK_SIZE, pending + room))
        new[:pending] = memoryview(self.chunk)[self.start : self.end]
        self.chunk = new
        self.start = 0
        self.end = pending

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # as anyio's streams do: a send returns once the kernel has all of it, so what
        # waits in user space for a slow peer is bounded by the one send in progress
        transport.set_write_buffer_limits(0)
        sock = transport.get_extra_info("socket")
        set_nodelay(sock)
        if self.quickack:
            self.quickack_sock = sock

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.chunk) - self.end < MIN_ROOM:
            self.relocate(max(MIN_ROOM, self.need - (self.end - self.start)))
        return memoryview(self.chunk)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        sock = self.quickack_sock
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self.quickack_sock = None
        pending = self.end - self.start
        if pending >= self.need:
            fut = self.reader
            if fut is not None and not fut.done():
                fut.set_result(None)
        if pending >= HIGH_WATER + self.need and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep the transport open for writing (an A-ABORT may still go out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        fut = self.writer
        if fut is not None and not fut.done():
            fut.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        fut = self.writer
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake(self) -> None:
        fut = self.reader
        if fut is not None and not fut.done():
            fut.set_result(None)


class PduStream:
    """Reads whole PDUs with our length limit checked on the header, before buffering.

    `network_timeout` bounds the rest of a PDU once its first byte has arrived (the
    whole of it, not each receive), so a peer that stalls in the middle of a PDU, or
    trickles it a byte at a time (slow-loris), is timed out like one that stalls
    between PDUs. It bounds a send too (a peer that stops reading).

    On Linux the socket is kept in quick-ACK mode (``quickack``): DIMSE is strictly
    request/response, and a peer with Nagle on (DCMTK's default) holds the rest of a
    PDU until its first segment is ACKed, so every delayed ACK (~40 ms) would stall a
    C-STORE in either direction."""

    __slots__ = (
        "_buf",
        "_loop",
        "_pos",
        "_quickack_sock",
        "_rx",
        "_unyielded",
        "network_timeout",
        "stream",
    )

    def __init__(
        self, stream: ByteStream, network_timeout: float | None, quickack: bool = True
    ) -> None:
        """The generic path, over any anyio byte stream (a TLSStream)."""
        self.stream: ByteStream | None = stream
        self.network_timeout = network_timeout
        self._buf = bytearray()
        self._pos = 0
        self._unyielded = 0
        sock = raw_socket(stream)
        set_nodelay(sock)
        self._quickack_sock = sock if (quickack and _QUICKACK is not None) else None
        self._rx: _Receiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def _over(cls, rx: _Receiver, network_timeout: float | None) -> PduStream:
        self = cls.__new__(cls)
        self.stream = None
        self.network_timeout = network_timeout
        self._buf = bytearray()
        self._pos = 0
        self._unyielded = 0
        self._quickack_sock = rx.quickack_sock
        self._rx = rx
        self._loop = asyncio.get_running_loop()
        return self

    @classmethod
    async def accepted(
        cls, sock: socket.socket, network_timeout: float | None, quickack: bool = True
    ) -> PduStream:
        """The buffered-protocol path over an accepted TCP socket. The PduStream owns
        the socket from here on (it is closed here if no transport can be made)."""
        rx = _Receiver(quickack)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: rx, sock)
        except BaseException:
            sock.close()
            raise
        return cls._over(rx, network_timeout)

    @classmethod
    async def connect(
        cls, host: str, port: int, network_timeout: float | None, quickack: bool = True
    ) -> PduStream:
        """The buffered-protocol path over a new TCP connection, the addresses of
        ``host`` raced as anyio.connect_tcp does (RFC 8305). Raises OSError when no
        connection can be made."""
        rx = _Receiver(quickack)
        await asyncio.get_running_loop().create_connection(
            lambda: rx, host, port, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY
        )
        return cls._over(rx, network_timeout)

    # -- the buffered protocol path ------------------------------------------------

    async def _wait_rx(self, rx: _Receiver, need: int, timeout: float | None, what: str) -> None:
        """Wait until ``need`` bytes from rx.start have arrived (or EOF/loss)."""
        if rx.end - rx.start >= need:
            return
        if rx.eof or rx.lost:
            raise PeerClosed()
        if len(rx.chunk) - rx.start < need:
            rx.relocate(need - (rx.end - rx.start))
        rx.need = need
        if rx.read_paused:
            rx.read_paused = False
            rx.transport.resume_reading()
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        rx.reader = fut
        handle = loop.call_later(timeout, _expire, fut) if timeout is not None else None
        self._unyielded = 0
        try:
            await fut
        except _Expired:
            raise DicomTimeout(what) from None
        finally:
            rx.reader = None
            rx.need = 0
            if handle is not None:
                handle.cancel()
        if rx.end - rx.start < need:  # woken by EOF or loss
            raise PeerClosed()

    async def _read_pdu_rx(
        self, rx: _Receiver, limit: int, idle_timeout: float | None
    ) -> tuple[int, memoryview]:
        loop = self._loop
        assert loop is not None
        network_timeout = self.network_timeout
        deadline: float | None = None
        if rx.end == rx.start:
            await self._wait_rx(rx, 1, idle_timeout, f"no data from peer for {idle_timeout} s")
        if rx.end - rx.start < HEADER_LENGTH:
            if network_timeout is not None:
                deadline = loop.time() + network_timeout
            await self._wait_rx(rx, HEADER_LENGTH, network_timeout, self._incomplete())
        start = rx.start
        pdu_type, length = parse_header(memoryview(rx.chunk)[start : start + HEADER_LENGTH], limit)
        total = HEADER_LENGTH + length
        if rx.end - start < total:
            timeout = network_timeout
            if deadline is not None:
                timeout = max(0.0, deadline - loop.time())
            await self._wait_rx(rx, total, timeout, self._incomplete())
            start = rx.start
        pdu = memoryview(rx.chunk)[start : start + total]
        rx.start = start + total
        if rx.read_paused and rx.end - rx.start < HIGH_WATER:
            rx.read_paused = False
            rx.transport.resume_reading()
        return pdu_type, pdu

    def _incomplete(self) -> str:
        return f"PDU not complete {self.network_timeout} s after its first byte"

    async def _send_rx(self, rx: _Receiver, data: bytes | bytearray | memoryview) -> None:
        if rx.lost or rx.transport.is_closing():
            raise PeerClosed()
        timeout = self.network_timeout
        handle: asyncio.TimerHandle | None = None
        loop = self._loop
        assert loop is not None
        try:
            if rx.write_paused:
                handle = await self._wait_writable(rx, loop, timeout, handle)
            try:
                rx.transport.write(data)
            except RuntimeError:
                raise PeerClosed() from None
            if rx.write_paused:
                handle = await self._wait_writable(rx, loop, timeout, handle)
            elif self._unyielded >= YIELD_BYTES:
                self._unyielded = 0
                await anyio.lowlevel.checkpoint()
            else:
                self._unyielded += len(data)
        finally:
            if handle is not None:
                handle.cancel()
        if rx.lost:
            raise PeerClosed()
        if self._quickack_sock is not None:
            self._quickack()

    async def _wait_writable(
        self,
        rx: _Receiver,
        loop: asyncio.AbstractEventLoop,
        timeout: float | None,
        handle: asyncio.TimerHandle | None,
    ) -> asyncio.TimerHandle | None:
        fut: asyncio.Future[None] = loop.create_future()
        if handle is None and timeout is not None:
            handle = loop.call_later(timeout, _expire, fut)
        elif handle is not None:  # the same deadline, now for this future
            when = handle.when()
            handle.cancel()
            handle = loop.call_at(when, _expire, fut)
        rx.writer = fut
        self._unyielded = 0
        try:
            while rx.write_paused and not rx.lost:
                await fut
                if rx.write_paused and not rx.lost:  # spurious wake-up
                    fut = loop.create_future()
                    rx.writer = fut
                    if handle is not None:
                        when = handle.when()
                        handle.cancel()
                        handle = loop.call_at(when, _expire, fut)
        except _Expired:
            raise DicomTimeout(f"peer did not read for {timeout} s") from None
        finally:
            rx.writer = None
        if rx.lost:
            raise PeerClosed()
        return handle

    # -- the generic path (TLS) ----------------------------------------------------

    async def _receive(self, timeout: float | None, deadline: float | None = None) -> None:
        stream = self.stream
        assert stream is not None
        if deadline is not None:
            timeout = max(0.0, deadline - anyio.current_time())
        try:
            if timeout is None:
                chunk = await stream.receive(RECEIVE_SIZE)
            else:
                with anyio.fail_after(timeout):
                    chunk = await stream.receive(RECEIVE_SIZE)
        except TimeoutError:
            if deadline is not None:
                raise DicomTimeout(self._incomplete()) from None
            raise DicomTimeout(f"no data from peer for {timeout} s") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            raise PeerClosed() from None
        if self._quickack_sock is not None:
            self._quickack()
        buf = self._buf
        if self._pos:
            if self._pos >= len(buf):
                buf.clear()
            else:
                del buf[: self._pos]
            self._pos = 0
        buf += chunk

    def _deadline(self) -> float | None:
        if self.network_timeout is None:
            return None
        return anyio.current_time() + self.network_timeout

    def _quickack(self) -> None:
        # Linux leaves quick-ACK mode by itself (notably when we send), so it is set
        # again after every receive and every send: a Nagle-on sender waits for our
        # ACK of its small command PDU before it sends the data set.
        sock = self._quickack_sock
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[arg-type]
            except OSError:
                self._quickack_sock = None
                if self._rx is not None:
                    self._rx.quickack_sock = None

    async def read_pdu(
        self, limit: int, idle_timeout: float | None
    ) -> tuple[int, bytearray | bytes | memoryview]:
        """Return (pdu_type, whole PDU including its 6-byte header).

        ``idle_timeout`` applies while waiting for the first byte of the PDU; the rest
        must arrive within ``network_timeout`` of it."""
        rx = self._rx
        if rx is not None:
            return await self._read_pdu_rx(rx, limit, idle_timeout)
        deadline: float | None = None
        while len(self._buf) - self._pos < HEADER_LENGTH:
            if deadline is None and len(self._buf) == self._pos:
                await self._receive(idle_timeout)
            else:
                if deadline is None:
                    deadline = self._deadline()
                await self._receive(None, deadline)
        pos = self._pos
        pdu_type, length = parse_header(memoryview(self._buf)[pos : pos + HEADER_LENGTH], limit)
        total = HEADER_LENGTH + length
        if len(self._buf) - pos < total:
            if deadline is None:
                deadline = self._deadline()
            while len(self._buf) - self._pos < total:
                await self._receive(None, deadline)
        pos = self._pos
        buf = self._buf
        if pos == 0 and len(buf) == total:
            # the common case of one PDU per read burst: hand over the buffer itself
            self._buf = bytearray()
            return pdu_type, buf
        pdu = buf[pos : pos + total]
        self._pos = pos + total
        return pdu_type, pdu

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send; a peer that stops reading for ``network_timeout`` is timed out too."""
        rx = self._rx
        if rx is not None:
            await self._send_rx(rx, data)
            return
        stream = self.stream
        assert stream is not None
        try:
            if self.network_timeout is None:
                await stream.send(data)  # type: ignore[arg-type]  # any buffer works
            else:
                with anyio.fail_after(self.network_timeout):
                    await stream.send(data)  # type: ignore[arg-type]
        except TimeoutError:
            raise DicomTimeout(f"peer did not read for {self.network_timeout} s") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise PeerClosed() from None
        if self._quickack_sock is not None:
            self._quickack()

    async def close(self) -> None:
        """Close the connection at once (unsent bytes are dropped, as anyio's aclose
        drops them): the DICOM exchange is over when this is called."""
        rx = self._rx
        if rx is not None:
            if not rx.lost:
                rx.transport.abort()
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()
            return
        stream = self.stream
        assert stream is not None
        try:
            with anyio.move_on_after(1, shield=True):
                await stream.aclose()
        except Exception:
            pass

"""Whole-PDU reads and writes over an anyio byte stream (shared by both adapters)."""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute

from router.dicom.errors import AssociationAborted, DicomTimeout
from router.dicom.pdu import HEADER_LENGTH, parse_header

_QUICKACK = getattr(socket, "TCP_QUICKACK", None) if sys.platform.startswith("linux") else None
RECEIVE_SIZE = 256 * 1024


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


class PduStream:
    """Reads whole PDUs with our length limit checked on the header, before buffering.

    `network_timeout` bounds the rest of a PDU once its first byte has arrived (the
    whole of it, not each receive), so a peer that stalls in the middle of a PDU, or
    trickles it a byte at a time (slow-loris), is timed out like one that stalls
    between PDUs."""

    __slots__ = ("_buf", "_pos", "_quickack_sock", "network_timeout", "stream")

    def __init__(
        self, stream: ByteStream, network_timeout: float | None, quickack: bool = False
    ) -> None:
        self.stream = stream
        self.network_timeout = network_timeout
        self._buf = bytearray()
        self._pos = 0
        sock = raw_socket(stream)
        set_nodelay(sock)
        self._quickack_sock = sock if (quickack and _QUICKACK is not None) else None

    async def _receive(self, timeout: float | None, deadline: float | None = None) -> None:
        if deadline is not None:
            timeout = max(0.0, deadline - anyio.current_time())
        try:
            if timeout is None:
                chunk = await self.stream.receive(RECEIVE_SIZE)
            else:
                with anyio.fail_after(timeout):
                    chunk = await self.stream.receive(RECEIVE_SIZE)
        except TimeoutError:
            if deadline is not None:
                raise DicomTimeout(
                    f"PDU not complete {self.network_timeout} s after its first byte"
                ) from None
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

    async def read_pdu(
        self, limit: int, idle_timeout: float | None
    ) -> tuple[int, bytearray | bytes]:
        """Return (pdu_type, whole PDU including its 6-byte header).

        ``idle_timeout`` applies while waiting for the first byte of the PDU; the rest
        must arrive within ``network_timeout`` of it."""
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
        try:
            if self.network_timeout is None:
                await self.stream.send(data)  # type: ignore[arg-type]  # any buffer works
            else:
                with anyio.fail_after(self.network_timeout):
                    await self.stream.send(data)  # type: ignore[arg-type]
        except TimeoutError:
            raise DicomTimeout(f"peer did not read for {self.network_timeout} s") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise PeerClosed() from None
        if self._quickack_sock is not None:
            self._quickack()

    async def close(self) -> None:
        try:
            with anyio.move_on_after(1, shield=True):
                await self.stream.aclose()
        except Exception:
            pass

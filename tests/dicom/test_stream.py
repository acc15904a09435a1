"""PduStream over a real loopback connection: the buffered-protocol path (plain TCP,
our asyncio protocol on the accepted socket) and the generic path (any anyio byte
stream, as TLS uses) read the same PDUs the same way."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from router.dicom import _stream
from router.dicom._stream import PduStream, PeerClosed
from router.dicom.errors import DicomTimeout, PduTooLarge
from tests.async_peers import until


def make_pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxL", pdu_type, len(body)) + body


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, socket.socket]]:
    """(client, server): an anyio stream and the accepted socket of a loopback
    connection."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        listening.setblocking(False)
        port = listening.getsockname()[1]
        client = await anyio.connect_tcp("127.0.0.1", port)
        server, _addr = await asyncio.get_running_loop().sock_accept(listening)
        try:
            yield client, server
        finally:
            await client.aclose()
            server.close()


@asynccontextmanager
async def pdu_pair(
    network_timeout: float, generic: bool = False
) -> AsyncIterator[tuple[anyio.abc.SocketStream, PduStream]]:
    """(client, the server's PduStream): our protocol on the accepted socket, or (generic)
    any anyio stream around it."""
    async with tcp_pair() as (client, server):
        if generic:
            ps = PduStream(
                Wrapped(await anyio.abc.SocketStream.from_socket(server)), network_timeout
            )
        else:
            ps = await PduStream.accepted(server, network_timeout)
        try:
            yield client, ps
        finally:
            await ps.close()


class Wrapped(anyio.abc.ByteStream):
    """Any stream that is not a plain TCP connection (as TLSStream is not)."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def pdus_for(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 5, 6, 200, 16378, 16384, 70000, 300000, 600000]
    sizes += [rng.randrange(0, 40000) for _ in range(60)]
    rng.shuffle(sizes)
    return [make_pdu(4, rng.randbytes(n)) for n in sizes]


@pytest.mark.asyncio
@pytest.mark.parametrize("generic", [False, True])
async def test_pdus_in_random_pieces_arrive_whole_and_stay_valid(generic: bool) -> None:
    pdus = pdus_for(7)
    wire = b"".join(pdus)
    rng = random.Random(3)
    async with pdu_pair(10, generic) as (client, ps):
        assert (ps._rx is None) == generic

        async def sender() -> None:
            pos = 0
            while pos < len(wire):
                n = rng.choice([1, 3, 6, 7, 1000, 16384, 100000, 400000])
                await client.send(wire[pos : pos + n])
                pos += n
                if rng.random() < 0.2:
                    await anyio.sleep(0.001)

        got = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            for expected in pdus:
                pdu_type, pdu = await ps.read_pdu(1 << 20, 10)
                assert pdu_type == 4
                assert bytes(pdu) == expected
                got.append(pdu)
        # PDUs handed out earlier are never overwritten by later receives
        assert [bytes(p) for p in got] == pdus


@pytest.mark.asyncio
async def test_data_sent_before_the_stream_is_made_is_read() -> None:
    async with tcp_pair() as (client, server):
        first, second = make_pdu(1, b"x" * 100), make_pdu(5, b"\0" * 4)
        await client.send(first + second)
        ps = await PduStream.accepted(server, network_timeout=5)
        try:
            assert ps._rx is not None
            assert [bytes((await ps.read_pdu(1 << 16, 5))[1]) for _ in range(2)] == [first, second]
        finally:
            await ps.close()


@pytest.mark.asyncio
async def test_header_limit_checked_before_buffering() -> None:
    async with pdu_pair(5) as (client, ps):
        await client.send(b"\x04\x00\xff\xff\xff\xff")
        with pytest.raises(PduTooLarge):
            await ps.read_pdu(16384, 5)


@pytest.mark.asyncio
@pytest.mark.parametrize("generic", [False, True])
async def test_stall_inside_a_pdu_times_out(generic: bool) -> None:
    async with pdu_pair(0.5, generic) as (client, ps):
        await client.send(make_pdu(4, b"y" * 1000)[:500])
        with anyio.fail_after(5):
            with pytest.raises(DicomTimeout, match="not complete"):
                await ps.read_pdu(16384, 30)


@pytest.mark.asyncio
async def test_trickle_inside_a_pdu_times_out() -> None:
    """Bytes keep coming, but the PDU is not whole within network_timeout of its first."""
    async with pdu_pair(0.6) as (client, ps):
        wire = make_pdu(4, b"z" * 100)

        async def trickle() -> None:
            for i in range(len(wire)):
                await client.send(wire[i : i + 1])
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            with anyio.fail_after(5), pytest.raises(DicomTimeout):
                await ps.read_pdu(16384, 30)
            tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_idle_timeout_between_pdus() -> None:
    async with pdu_pair(30) as (_client, ps):
        with anyio.fail_after(5), pytest.raises(DicomTimeout, match="no data"):
            await ps.read_pdu(16384, 0.3)


@pytest.mark.asyncio
@pytest.mark.parametrize("generic", [False, True])
async def test_eof_inside_a_pdu_is_peer_closed(generic: bool) -> None:
    async with pdu_pair(5, generic) as (client, ps):
        await client.send(make_pdu(4, b"q" * 100)[:50])
        await client.aclose()
        with anyio.fail_after(5), pytest.raises(PeerClosed):
            await ps.read_pdu(16384, 5)


@pytest.mark.asyncio
async def test_unread_data_is_bounded() -> None:
    """A peer sending far more than we read: we stop reading the socket."""
    async with pdu_pair(5) as (client, ps):
        rx = ps._rx
        assert rx is not None
        blob = make_pdu(4, b"w" * 16378) * 400  # 6.5 MB

        async def flood() -> None:
            with anyio.move_on_after(2):
                await client.send(blob)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await until(lambda: rx.read_paused, 5)
            await anyio.sleep(0.2)  # the flood goes on: nothing more may be buffered
            assert rx.read_paused
            assert rx.end - rx.start <= _stream.HIGH_WATER + _stream.CHUNK_SIZE
            # and reading resumes as PDUs are consumed
            for _ in range(400):
                _, pdu = await ps.read_pdu(16384, 5)
                assert len(pdu) == 16384
            tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_send_to_a_peer_that_does_not_read_times_out() -> None:
    async with pdu_pair(0.5) as (_client, ps):
        with anyio.fail_after(10), pytest.raises(DicomTimeout, match="did not read"):
            for _ in range(10000):
                await ps.send(b"\0" * 1_000_000)


@pytest.mark.asyncio
async def test_send_after_peer_closed() -> None:
    async with pdu_pair(5) as (client, ps):
        await client.aclose()
        with anyio.fail_after(5), pytest.raises(PeerClosed):
            for _ in range(1000):
                await ps.send(b"\0" * 100_000)
                await anyio.sleep(0.001)


@pytest.mark.asyncio
async def test_cancelled_while_waiting() -> None:
    async with pdu_pair(5) as (client, ps):
        with anyio.move_on_after(0.2) as scope:
            await ps.read_pdu(16384, 30)
        assert scope.cancelled_caught
        # still usable afterwards
        await client.send(make_pdu(5, b"\0" * 4))
        assert (await ps.read_pdu(16384, 5))[0] == 5


@pytest.mark.asyncio
async def test_connect_reads_through_our_protocol_with_nodelay() -> None:
    """The requestor's plain TCP connection is ours from the start as well."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        listening.setblocking(False)
        port = listening.getsockname()[1]
        ps = await PduStream.connect("127.0.0.1", port, network_timeout=5)
        server, _addr = await asyncio.get_running_loop().sock_accept(listening)
        try:
            assert ps._rx is not None
            sock = ps._rx.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await asyncio.get_running_loop().sock_sendall(server, make_pdu(2, b"ac"))
            assert bytes((await ps.read_pdu(1 << 16, 5))[1]) == make_pdu(2, b"ac")
        finally:
            await ps.close()
            server.close()


@pytest.mark.asyncio
async def test_accepted_socket_gets_nodelay() -> None:
    async with pdu_pair(5) as (_client, ps):
        assert ps._rx is not None
        sock = ps._rx.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

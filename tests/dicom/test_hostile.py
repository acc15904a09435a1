"""Hostile and broken peers on raw sockets: none of them may take the server down."""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import anyio.abc
import pytest
from dicom_helpers import (
    RecordingHandler,
    config,
    echo,
    raw_connect,
    recv_until_closed,
    running,
)
from dicom_helpers import (
    wait_for as wait_until,
)

from router.dicom import (
    Acceptor,
    AssociationInfo,
    AssociationRejected,
    Rejection,
    Sink,
    Status,
    StoreRefused,
    StoreRequest,
    associate,
    dimse,
    pdu,
)
from router.dicom.association import requestor_contexts
from router.samples import write_dataset

pytestmark = pytest.mark.asyncio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


async def raw_associate(port: int, called_ae: str = "ROUTER") -> anyio.abc.SocketStream:
    """Open an association by hand; return the stream after the A-ASSOCIATE-AC."""
    s = await raw_connect(port)
    contexts = requestor_contexts([(CT, [EXPLICIT])])
    await s.send(pdu.encode_associate_rq("HOSTILE", called_ae, contexts, 16384))
    head = b""
    with anyio.fail_after(10):
        while len(head) < 6:
            head += await s.receive(6 - len(head))
        pdu_type, length = struct.unpack(">BxL", head)
        body = b""
        while len(body) < length:
            body += await s.receive(length - len(body))
    assert pdu_type == pdu.A_ASSOCIATE_AC_TYPE
    return s


def store_command(uid: str = "1.2.3.4") -> bytes:
    return bytes(pdu.pdata_pdus(1, dimse.store_rq(1, CT, uid), 16384, pdu.COMMAND, True))


async def expect_abort_and_close(s: anyio.abc.SocketStream, timeout: float = 10) -> bytes:
    data = await recv_until_closed(s, timeout)
    await s.aclose()
    return data


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("garbage", bytes(range(256)) * 4),
        ("http", b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"),
        ("unknown_pdu_type", b"\x09\x00\x00\x00\x00\x04abcd"),
        ("4GiB_associate_rq", b"\x01\x00\xff\xff\xff\xff"),
        ("malformed_associate_rq", b"\x01\x00\x00\x00\x00\x08" + b"\x00" * 8),
        ("release_before_associate", b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
    ],
)
async def test_bytes_before_association(
    handler: RecordingHandler, name: str, payload: bytes
) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_connect(port)
        await s.send(payload)
        data = await expect_abort_and_close(s)
        assert data == b"" or data[:1] == b"\x07", data  # closed, or A-ABORT then closed
        assert len(handler.errors) == 1, handler.errors
        assert handler.opened == []
        assert await echo(port) == 0


async def test_huge_pdu_length_is_aborted_before_buffering(handler: RecordingHandler) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_associate(port)
        # a P-DATA-TF header announcing 4 GiB; we never send the body: the answer must
        # come at once (the server cannot be waiting for 4 GiB to arrive)
        await s.send(b"\x04\x00\xff\xff\xff\xff")
        data = await expect_abort_and_close(s, timeout=5)
        assert data[:1] == b"\x07"
        assert handler.errors == ["pdu_too_large"]
        assert await echo(port) == 0


async def test_unknown_pdu_type_in_association(handler: RecordingHandler) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_associate(port)
        await s.send(b"\x0a\x00\x00\x00\x00\x02\x00\x00")
        data = await expect_abort_and_close(s)
        assert data[:1] == b"\x07"
        assert handler.errors == ["unknown_pdu_type"]
        assert await echo(port) == 0


async def test_stall_mid_pdu_times_out_and_frees_the_slot(
    handler: RecordingHandler, tmp_path: Path
) -> None:
    cfg = config(max_associations=1, network_timeout=0.5)
    async with running(Acceptor(cfg, handler)) as port:
        s = await raw_associate(port)
        cmd = store_command()
        await s.send(cmd[: len(cmd) // 2])  # half a PDU, then silence
        # the one slot is taken: another association is refused, transiently
        with pytest.raises(AssociationRejected) as rejected:
            await echo(port)
        assert (rejected.value.result, rejected.value.source, rejected.value.reason) == (2, 3, 2)
        assert rejected.value.transient
        data = await expect_abort_and_close(s, timeout=5)
        assert data[:1] == b"\x07"
        assert handler.closed[-1][1] == "timeout"
        assert await echo(port) == 0  # the slot is free again
        f = write_dataset(tmp_path / "a.dcm")
        async with associate(
            "127.0.0.1", port, calling_ae="SCU", called_ae="ROUTER", contexts=[(CT, [EXPLICIT])]
        ) as assoc:
            body = f.read_bytes()
            from pynetdicom.dsutils import split_dataset

            _meta, offset = split_dataset(f)
            assert (await assoc.c_store(CT, "1.2.3.5", EXPLICIT, body, offset=offset)).status == 0


async def test_sender_vanishes_mid_data_set(handler: RecordingHandler, storage: Path) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_associate(port)
        await s.send(store_command())
        await s.send(bytes(pdu.pdata_pdus(1, b"\x08\x00" * 5000, 16384, 0, False)))
        await wait_until(lambda: bool(handler.sinks), 10)
        await s.aclose()
        await wait_until(lambda: bool(handler.closed), 10)
        assert handler.closed[0][1] == "aborted"
        assert handler.sinks[0].aborted
        assert list(storage.iterdir()) == []  # the partial file is gone
        assert handler.stored == []
        assert await echo(port) == 0


async def test_aborted_mid_data_set(handler: RecordingHandler, storage: Path) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_associate(port)
        await s.send(store_command())
        await s.send(bytes(pdu.pdata_pdus(1, b"\x08\x00" * 5000, 16384, 0, False)))
        await s.send(pdu.encode_abort(0, 0))
        await expect_abort_and_close(s)
        await wait_until(lambda: bool(handler.closed), 10)
        assert handler.closed[0][1] == "aborted"
        assert handler.sinks[0].aborted
        assert list(storage.iterdir()) == []


async def test_data_on_unaccepted_context(handler: RecordingHandler) -> None:
    async with running(Acceptor(config(), handler)) as port:
        s = await raw_associate(port)
        await s.send(bytes(pdu.pdata_pdus(3, dimse.echo_rq(1), 16384, pdu.COMMAND, True)))
        data = await expect_abort_and_close(s)
        assert data[:1] == b"\x07"
        assert handler.errors == ["bad_context"]
        assert await echo(port) == 0


@pytest.mark.parametrize(
    ("kw", "called", "calling", "expected"),
    [
        ({}, "WRONG", "ANY", Rejection.called_ae_not_recognized()),
        ({"calling_ae_titles": frozenset({"CT_1"})}, "ROUTER", "INTRUDER", (1, 1, 3)),
        ({"max_associations": 0}, "ROUTER", "ANY", Rejection.too_many_associations()),
    ],
)
async def test_rejections(
    handler: RecordingHandler,
    kw: dict[str, object],
    called: str,
    calling: str,
    expected: Rejection | tuple[int, int, int],
) -> None:
    acceptor = Acceptor(config(**kw), handler)
    async with running(acceptor) as port:
        with pytest.raises(AssociationRejected) as info:
            await echo(port, called_ae=called, calling_ae=calling)
        got = (info.value.result, info.value.source, info.value.reason)
        want = (
            (expected.result, expected.source, expected.reason)
            if isinstance(expected, Rejection)
            else expected
        )
        assert got == want
        assert [(r.result, r.source, r.reason) for r in handler.rejected] == [want]
        acceptor.update(config(port=port, calling_ae_titles=None))  # hot reload of AE checks
        assert await echo(port, calling_ae="CT_1") == 0


async def test_refused_and_failed_stores_keep_the_association(
    storage: Path, tmp_path: Path
) -> None:
    class Picky(RecordingHandler):
        def open_store(self, info: AssociationInfo, req: StoreRequest) -> Sink:
            if req.sop_instance_uid.endswith(".1"):
                raise StoreRefused(Status.OUT_OF_RESOURCES)
            return super().open_store(info, req)

        async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> int:
            if req.sop_instance_uid.endswith(".2"):
                raise OSError("disk on fire")
            return await super().finish_store(info, req, sink)

    handler = Picky(storage)
    data = b"\x08\x00\x16\x00UI\x04\x001.2\x00" * 100
    async with (
        running(Acceptor(config(), handler)) as port,
        associate(
            "127.0.0.1", port, calling_ae="SCU", called_ae="ROUTER", contexts=[(CT, [EXPLICIT])]
        ) as assoc,
    ):
        assert (await assoc.c_store(CT, "9.1", EXPLICIT, data)).status == 0xA700
        assert (await assoc.c_store(CT, "9.2", EXPLICIT, data)).status == 0xC000
        assert (await assoc.c_store(CT, "9.3", EXPLICIT, data)).status == 0
        assert (await assoc.c_store(CT, "9.4", EXPLICIT, data[:0])).status == 0
    assert [s.req.sop_instance_uid for s in handler.stored] == ["9.3", "9.4"]
    assert handler.stored[0].path.read_bytes() == data
    assert handler.stored[1].path.read_bytes() == b""
    assert sorted(p.name for p in storage.iterdir()) == sorted(s.path.name for s in handler.stored)


async def test_random_bytes_after_association_never_kill_the_server(
    handler: RecordingHandler,
) -> None:
    import random

    rng = random.Random(1234)
    async with running(Acceptor(config(network_timeout=2), handler)) as port:
        for i in range(40):
            s = await raw_associate(port)
            if i % 2:  # a plausible P-DATA header with random PDVs inside
                body = rng.randbytes(rng.randrange(0, 300))
                payload = struct.pack(">BxL", 4, len(body)) + body
            else:
                payload = rng.randbytes(rng.randrange(1, 300))
            await s.send(payload)
            await s.send_eof()
            await expect_abort_and_close(s)
        await wait_until(lambda: len(handler.closed) >= 40, 10)
        assert {how for _id, how in handler.closed} <= {"error", "aborted", "timeout"}
        assert not any(kind.startswith("internal") for kind in handler.errors), handler.errors
        assert await echo(port) == 0


async def test_connection_flood_is_shed(
    handler: RecordingHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.dicom.acceptor as acceptor_module

    monkeypatch.setattr(acceptor_module, "MAX_EXTRA_NEGOTIATING", 1)
    acceptor = Acceptor(config(max_associations=1), handler)
    async with running(acceptor) as port:
        silent = [await raw_connect(port), await raw_connect(port)]
        await wait_until(lambda: acceptor._negotiating == 2)
        third = await raw_connect(port)
        assert await expect_abort_and_close(third, timeout=5) == b""
        assert handler.errors == ["connection_flood"]
        for s in silent:
            await s.aclose()
        await wait_until(lambda: acceptor._negotiating == 0)
        assert await echo(port) == 0

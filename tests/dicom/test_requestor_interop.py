"""Our requestor talking to real acceptors: DCMTK storescp, pynetdicom, our own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_helpers import (
    VERIFICATION,
    RecordingHandler,
    config,
    delayed_acks,
    needs_tcp_counters,
    running,
    wait_for,
)
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset

from router.dicom import (
    Acceptor,
    AssociationAborted,
    AssociationRejected,
    ConnectError,
    NoPresentationContext,
    associate,
)
from router.samples import write_dataset, write_many
from tests.async_peers import storescp
from tests.ports import bound_port, reserve_port

pytestmark = pytest.mark.asyncio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def source(path: Path) -> tuple[str, str, str, int]:
    meta, offset = split_dataset(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        offset,
    )


async def test_store_to_storescp(dcmtk: Path, tmp_path: Path) -> None:
    files = [
        *write_many(tmp_path / "src", 20, size=40000),
        write_dataset(tmp_path / "big.dcm", size=3000000),
        write_dataset(tmp_path / "impl.dcm", transfer_syntax=IMPLICIT),
    ]
    out = tmp_path / "out"
    port = reserve_port()
    async with (
        storescp(port, out, "+B", "+xa"),
        associate(
            "127.0.0.1",
            port,
            calling_ae="ROUTER",
            called_ae="STORESCP",
            contexts=[(VERIFICATION, [IMPLICIT]), (CT, [EXPLICIT]), (CT, [IMPLICIT])],
        ) as assoc,
    ):
        assert await assoc.c_echo() == 0
        assert sorted(assoc.accepted_transfer_syntaxes(CT)) == sorted([EXPLICIT, IMPLICIT])
        for i, f in enumerate(files):
            sop_class, sop_instance, ts, offset = source(f)
            if i % 2:
                rsp = await assoc.c_store(sop_class, sop_instance, ts, f, offset=offset)
            else:  # from memory, as a memoryview
                data = memoryview(f.read_bytes())
                rsp = await assoc.c_store(sop_class, sop_instance, ts, data, offset=offset)
            assert rsp.status == 0
    for f in files:
        sop_class, sop_instance, ts, offset = source(f)
        (got,) = out.glob(f"*{sop_instance}*")
        _meta, got_offset = split_dataset(got)
        assert got.read_bytes()[got_offset:] == f.read_bytes()[offset:]


@needs_tcp_counters
async def test_we_ack_at_once_so_a_nagle_on_destination_does_not_stall(
    dcmtk: Path, tmp_path: Path
) -> None:
    """DCMTK without TCP_NODELAY (its default) holds the rest of each response until
    its first segment is ACKed; when our kernel delays that ACK (~40 ms), every C-STORE
    waits for the timer: 22 instances/s. Counted without timing: the kernel's delayed
    ACKs (one per C-STORE without quick ACKs, none with them here)."""
    files = write_many(tmp_path / "src", 12, size=20000)
    out = tmp_path / "out"
    port = reserve_port()
    async with (
        storescp(port, out, nodelay=False),
        associate(
            "127.0.0.1",
            port,
            calling_ae="ROUTER",
            called_ae="STORESCP",
            contexts=[(CT, [EXPLICIT])],
        ) as assoc,
    ):
        before = delayed_acks()
        for f in files:
            sop_class, sop_instance, ts, offset = source(f)
            rsp = await assoc.c_store(sop_class, sop_instance, ts, f, offset=offset)
            assert rsp.status == 0
        delayed = delayed_acks() - before
    assert delayed < len(files) // 2, f"{delayed} delayed ACKs for {len(files)} C-STOREs"
    assert len(list(out.iterdir())) == len(files)


async def test_no_presentation_context(dcmtk: Path, tmp_path: Path) -> None:
    f = write_dataset(tmp_path / "a.dcm")
    port = reserve_port()
    async with (
        storescp(port, tmp_path / "out"),
        associate(
            "127.0.0.1", port, calling_ae="R", called_ae="STORESCP", contexts=[(CT, [EXPLICIT])]
        ) as assoc,
    ):
        sop_class, sop_instance, _ts, offset = source(f)
        with pytest.raises(NoPresentationContext):
            await assoc.c_store(sop_class, sop_instance, "1.2.840.10008.1.2.4.50", f)
        # the association is still usable after a local refusal
        assert (
            await assoc.c_store(sop_class, sop_instance, EXPLICIT, f, offset=offset)
        ).status == 0


class PynetdicomSCP:
    """pynetdicom's AE as a peer (in its own threads, which is fine for a test peer)."""

    def __init__(self, *, abort_after: int | None = None) -> None:
        self.port = 0  # bound in __enter__
        self.received: list[bytes] = []
        self.abort_after = abort_after
        self.ae = AE(ae_title="PYNETDICOM")
        self.ae.add_supported_context(VERIFICATION)
        self.ae.add_supported_context(CT, [EXPLICIT, IMPLICIT])
        self.ae.maximum_pdu_size = 64 * 1024
        self.lock = threading.Lock()

    def _conn(self, event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _store(self, event: Any) -> int:
        with self.lock:
            self.received.append(bytes(event.request.DataSet.getvalue()))
            if self.abort_after is not None and len(self.received) >= self.abort_after:
                event.assoc.abort()
        return 0

    def __enter__(self) -> PynetdicomSCP:
        self.server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._conn)],
        )
        self.port = bound_port(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def pynetdicom_scp() -> Iterator[PynetdicomSCP]:
    with PynetdicomSCP() as scp:
        yield scp


async def test_store_to_pynetdicom(pynetdicom_scp: PynetdicomSCP, tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 5, size=200_000)
    async with associate(
        "127.0.0.1",
        pynetdicom_scp.port,
        calling_ae="ROUTER",
        called_ae="PYNETDICOM",
        contexts=[(VERIFICATION, [IMPLICIT]), (CT, [EXPLICIT])],
    ) as assoc:
        assert assoc.peer_max_pdu == 64 * 1024
        assert await assoc.c_echo() == 0
        for f in files:
            sop_class, sop_instance, ts, offset = source(f)
            assert (await assoc.c_store(sop_class, sop_instance, ts, f, offset=offset)).status == 0
    assert pynetdicom_scp.received == [f.read_bytes()[source(f)[3] :] for f in files]


async def test_peer_aborts_during_store(pynetdicom_scp: PynetdicomSCP, tmp_path: Path) -> None:
    pynetdicom_scp.abort_after = 1
    f = write_dataset(tmp_path / "a.dcm")
    sop_class, sop_instance, ts, offset = source(f)
    with pytest.raises(AssociationAborted):
        async with associate(
            "127.0.0.1",
            pynetdicom_scp.port,
            calling_ae="ROUTER",
            called_ae="PYNETDICOM",
            contexts=[(CT, [EXPLICIT])],
        ) as assoc:
            await assoc.c_store(sop_class, sop_instance, ts, f, offset=offset)


async def test_we_abort_and_release_against_our_acceptor(
    handler: RecordingHandler, tmp_path: Path
) -> None:
    f = write_dataset(tmp_path / "a.dcm")
    sop_class, sop_instance, ts, offset = source(f)
    async with running(Acceptor(config(), handler)) as port:
        kw: dict[str, Any] = dict(calling_ae="SCU", called_ae="ROUTER", contexts=[(CT, [ts])])
        assoc = await associate("127.0.0.1", port, **kw)
        assert (await assoc.c_store(sop_class, sop_instance, ts, f, offset=offset)).status == 0
        await assoc.abort()
        await wait_for(lambda: len(handler.closed) >= 1, 10)
        assert handler.closed[-1][1] == "aborted"

        with pytest.raises(RuntimeError):  # abort on exception inside the context
            async with associate("127.0.0.1", port, **kw) as assoc:
                raise RuntimeError("boom")
        async with associate("127.0.0.1", port, **kw) as assoc:
            pass
        await wait_for(lambda: len(handler.closed) >= 3, 10)
        assert [how for _id, how in handler.closed] == ["aborted", "aborted", "released"]
        assert len(handler.stored) == 1
        assert handler.stored[0].path.read_bytes() == f.read_bytes()[offset:]
        assert dcmread(f).SOPInstanceUID == handler.stored[0].req.sop_instance_uid


async def test_connect_errors(dcmtk: Path) -> None:
    port = reserve_port()
    with pytest.raises(ConnectError):
        await associate(
            "127.0.0.1", port, calling_ae="A", called_ae="B", contexts=[(CT, [EXPLICIT])]
        )


async def test_rejected_by_storescp(dcmtk: Path, tmp_path: Path) -> None:
    port = reserve_port()
    async with storescp(port, tmp_path / "out", "--refuse"):
        with pytest.raises(AssociationRejected) as info:
            await associate(
                "127.0.0.1", port, calling_ae="A", called_ae="STORESCP", contexts=[(CT, [EXPLICIT])]
            )
        assert info.value.result in (1, 2)

"""The router names itself the same way everywhere: one Implementation Class UID and
Version Name in the A-ASSOCIATE-RQ it sends, the A-ASSOCIATE-AC it answers, and the file
meta of every file it spools."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from dicom_helpers import VERIFICATION, config, running, wait_for
from pynetdicom import AE, evt

from router.dicom import Acceptor, AssociationInfo, StoreHandler, StoreRequest, associate
from router.dicom.uids import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
)
from router.samples import write_dataset
from router.store.spool import Spool, SpooledSink
from tests.ports import bound_port

OURS = (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)


@dataclass
class SpoolingHandler(StoreHandler):
    """Spools each data set as the router does (header of our own, then the bytes)."""

    spool: Spool
    files: list[Path] = field(default_factory=list)

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> SpooledSink:
        return self.spool.new_sink(req)

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Any) -> int:
        self.files.append(self.spool.install(sink))
        return 0


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_with_pynetdicom(port: int, path: Path) -> tuple[tuple[str, str], int]:
    """(the acceptor's implementation UID and version name, C-STORE status)."""
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(pydicom.dcmread(path))
        acceptor = assoc.acceptor
        return (
            str(acceptor.implementation_class_uid),
            str(acceptor.implementation_version_name),
        ), int(status.Status)
    finally:
        assoc.release()


@pytest.mark.asyncio
async def test_association_ac_and_spooled_file_carry_the_same_identity(tmp_path: Path) -> None:
    handler = SpoolingHandler(Spool(tmp_path / "storage", inline_max=0))
    source = write_dataset(tmp_path / "src" / "ct.dcm", 10_000)
    async with running(Acceptor(config(), handler)) as port:
        answered, status = await anyio.to_thread.run_sync(_store_with_pynetdicom, port, source)
    assert status == 0
    assert answered == OURS
    (spooled,) = handler.files
    meta = pydicom.dcmread(spooled).file_meta
    assert (str(meta.ImplementationClassUID), meta.ImplementationVersionName) == OURS


@pytest.mark.asyncio
async def test_association_rq_carries_the_same_identity() -> None:
    seen: list[tuple[str, str]] = []

    def requested(event: Any) -> None:
        requestor = event.assoc.requestor
        seen.append(
            (str(requestor.implementation_class_uid), str(requestor.implementation_version_name))
        )

    ae = AE(ae_title="PEER")
    ae.add_supported_context(VERIFICATION, IMPLICIT_VR_LE)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, requested), (evt.EVT_ACCEPTED, _nodelay)],
    )
    try:
        async with associate(
            "127.0.0.1",
            bound_port(server),
            calling_ae="ROUTER",
            called_ae="PEER",
            contexts=[(VERIFICATION, [IMPLICIT_VR_LE])],
        ) as assoc:
            assert await assoc.c_echo() == 0
        await wait_for(lambda: seen, 5)
    finally:
        server.shutdown()
    assert seen == [OURS]

"""Real peers (DCMTK, pynetdicom) talking to our acceptor."""

from __future__ import annotations

import re
import socket
from collections import defaultdict
from pathlib import Path

import anyio
import pydicom.data
import pytest
from dicom_helpers import (
    RecordingHandler,
    config,
    delayed_acks,
    echo,
    needs_tcp_counters,
    run_tool,
    running,
    wait_for,
)
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from router.dicom import Acceptor
from router.samples import write_many
from tests.async_peers import storescp
from tests.ports import reserve_port

pytestmark = pytest.mark.asyncio

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# storescu option proposing a transfer syntax first (we accept the first proposed one
# we support, so each file travels in its own transfer syntax)
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def part10_files() -> dict[str, list[tuple[Path, int]]]:
    """pydicom's local test files with a file meta, by transfer syntax: (path, offset)."""
    groups: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    for path in sorted(TEST_FILES.iterdir()):
        if not path.is_file():
            continue
        try:
            meta, offset = split_dataset(path)
        except InvalidDicomError:
            continue  # no file meta: no "data set part after the meta" to compare
        if "TransferSyntaxUID" in meta:  # not in meta_missing_tsyntax.dcm
            groups[str(meta.TransferSyntaxUID)].append((path, offset))
    return groups


async def test_echoscu(dcmtk: Path, handler: RecordingHandler) -> None:
    async with running(Acceptor(config(), handler)) as port:
        rc, out = await run_tool(["echoscu", "-aec", "ROUTER", "127.0.0.1", str(port)])
        assert rc == 0, out
        assert await echo(port) == 0


async def test_pynetdicom_echo(handler: RecordingHandler) -> None:
    async with running(Acceptor(config(), handler)) as port:

        def pynetdicom_echo() -> int:
            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
            assert assoc.is_established
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status = assoc.send_c_echo()
            assoc.release()
            return int(status.Status)

        assert await anyio.to_thread.run_sync(pynetdicom_echo) == 0


async def test_storescu_every_pydicom_test_file(
    dcmtk: Path, handler: RecordingHandler, tmp_path: Path
) -> None:
    groups = part10_files()
    sent: list[tuple[Path, int, str]] = []
    refused: list[str] = []
    async with running(Acceptor(config(), handler)) as port:
        for ts, files in sorted(groups.items()):
            option = PROPOSE.get(ts)
            if option is None:
                continue
            before = len(handler.stored)
            rc, out = await run_tool(
                ["storescu", "-v", "-nh", option, "-aec", "ROUTER", "127.0.0.1", str(port)]
                + [str(p) for p, _ in files]
            )
            ok = [
                block.split("\n", 1)[0].strip()
                for block in out.split("Sending file: ")[1:]
                if "Received Store Response (Success)" in block
            ]
            offsets = {str(p): off for p, off in files}
            for name in ok:
                sent.append((Path(name), offsets[name], ts))
            for p, _ in files:
                if str(p) not in ok:
                    # a file storescu refused itself: it says so, and never gets to us
                    assert f"file: {p}" in out or f"{p}" in out, out
                    refused.append(p.name)
            assert len(handler.stored) - before == len(ok), out
    assert handler.errors == []
    assert len(sent) >= 40, (sent, refused)
    assert len(handler.stored) == len(sent)
    differ = []
    for (path, offset, ts), got in zip(sent, handler.stored, strict=True):
        assert got.req.transfer_syntax == ts, path
        if got.path.read_bytes() != path.read_bytes()[offset:]:
            differ.append((path, ts, got.path))
    # DCMTK re-encodes some files on the way (padding, group lengths, lengths of
    # sequences): for those the reference is what DCMTK's own storescp receives,
    # bit-preserved, from the same storescu
    assert len(differ) < len(sent) // 2
    oracle = tmp_path / "oracle"
    oracle_port = reserve_port()  # storescp cannot bind port 0
    async with storescp(oracle_port, oracle, "+B", "+uf", "+xa"):
        for path, ts, ours in differ:
            existing = set(oracle.iterdir())
            rc, out = await run_tool(
                [
                    "storescu",
                    PROPOSE[ts],
                    "-aec",
                    "STORESCP",
                    "127.0.0.1",
                    str(oracle_port),
                    str(path),
                ]
            )
            assert rc == 0, out
            (new,) = set(oracle.iterdir()) - existing
            _meta, offset = split_dataset(new)
            assert ours.read_bytes() == new.read_bytes()[offset:], path


async def test_storescu_many_on_one_association(
    dcmtk: Path, handler: RecordingHandler, tmp_path: Path
) -> None:
    files = write_many(tmp_path / "src", 60, size=30_000)
    async with running(Acceptor(config(), handler)) as port:
        rc, out = await run_tool(
            ["storescu", "-aec", "ROUTER", "127.0.0.1", str(port)] + [str(f) for f in files]
        )
        assert rc == 0, out
    assert len(handler.opened) == 1
    assert len(handler.stored) == 60
    for f, got in zip(files, handler.stored, strict=True):
        _meta, offset = split_dataset(f)
        assert got.path.read_bytes() == f.read_bytes()[offset:]


@needs_tcp_counters
async def test_we_ack_at_once_so_a_nagle_on_sender_does_not_stall(
    dcmtk: Path, handler: RecordingHandler, tmp_path: Path
) -> None:
    """storescu without TCP_NODELAY (DCMTK's default) sends the data set only once its
    small command PDU is ACKed: with delayed ACKs from us, one ~40 ms wait per C-STORE."""
    files = write_many(tmp_path / "src", 12, size=20_000)
    async with running(Acceptor(config(), handler)) as port:
        before = delayed_acks()
        rc, out = await run_tool(
            ["storescu", "-aec", "ROUTER", "127.0.0.1", str(port)] + [str(f) for f in files],
            nodelay=False,
        )
        delayed = delayed_acks() - before
        assert rc == 0, out
    assert len(handler.stored) == len(files)
    assert delayed < len(files) // 2, f"{delayed} delayed ACKs for {len(files)} C-STOREs"


async def test_several_associations_at_once(
    dcmtk: Path, handler: RecordingHandler, tmp_path: Path
) -> None:
    batches = [write_many(tmp_path / f"src{i}", 15, size=50_000) for i in range(4)]
    codes: list[int] = []
    async with running(Acceptor(config(), handler)) as port:

        async def one(files: list[Path]) -> None:
            rc, out = await run_tool(
                ["storescu", "-aec", "ROUTER", "127.0.0.1", str(port)] + [str(f) for f in files]
            )
            assert rc == 0, out
            codes.append(rc)

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(one, batch)
    assert codes == [0, 0, 0, 0]
    assert len(handler.opened) == 4
    assert len(handler.stored) == 60
    by_uid = {s.req.sop_instance_uid: s.path for s in handler.stored}
    for f in (f for b in batches for f in b):
        meta, offset = split_dataset(f)
        assert by_uid[str(meta.MediaStorageSOPInstanceUID)].read_bytes() == f.read_bytes()[offset:]


async def test_pynetdicom_store_and_abort(handler: RecordingHandler, tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 3)
    async with running(Acceptor(config(), handler)) as port:

        def send() -> list[int]:
            from pydicom import dcmread

            ae = AE(ae_title="PYNETDICOM")
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
            assert assoc.is_established
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            statuses = [int(assoc.send_c_store(dcmread(f)).Status) for f in files]
            assoc.abort()
            return statuses

        assert await anyio.to_thread.run_sync(send) == [0, 0, 0]
        await _wait_closed(handler, 1)
    assert handler.closed[0][1] == "aborted"
    assert len(handler.stored) == 3


async def _wait_closed(handler: RecordingHandler, n: int) -> None:
    await wait_for(lambda: len(handler.closed) >= n, 10)


async def test_log_events_are_structured_and_carry_no_patient_data(
    dcmtk: Path, handler: RecordingHandler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pydicom import dcmread

    files = write_many(tmp_path / "src", 3)
    patient = dcmread(files[0])
    caplog.set_level(logging.DEBUG, logger="router.dicom")
    async with running(Acceptor(config(), handler)) as port:
        rc, out = await run_tool(
            ["storescu", "-aec", "ROUTER", "127.0.0.1", str(port)] + [str(f) for f in files]
        )
        assert rc == 0, out
        assert await echo(port) == 0
    records = [r for r in caplog.records if r.name.startswith("router.dicom")]
    events = {r.getMessage() for r in records}
    assert {"association_opened", "c_store", "association_closed"} <= events
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", e) for e in events), events
    stored = [r for r in records if r.getMessage() == "c_store"]
    assert {r.__dict__["sop_instance_uid"] for r in stored} == {
        s.req.sop_instance_uid for s in handler.stored
    }
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    assert str(patient.PatientName) not in text and str(patient.PatientID) not in text

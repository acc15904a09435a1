"""Fault matrix, a 2 GB multi-frame instance in and out (case 17; very
large objects pass through untranscoded): streamed both ways,
the router's peak RSS (VmHWM over its whole life) stays under 150 MiB."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from router.store.spool import part10_header
from tests.faults.faultlib import (
    CT,
    EXPLICIT,
    dest,
    element,
    instance_count,
    make_router,
    pid_of,
    proc_kib,
)
from tests.integration.peers import running, start_storescp, storescu, wait_for

pytestmark = [pytest.mark.usefixtures("dcmtk"), pytest.mark.timeout(600)]

SIZE = 2_000_000_000  # bytes of pixel data


def write_huge(path: Path, uid: str, pixels: int) -> int:
    """A Part-10 file whose OB pixel data is ``pixels`` zero bytes, written sparse (one
    truncate); returns the length of its data set."""
    head = b"".join(
        (
            element(0x0008, 0x0016, "UI", CT.encode()),
            element(0x0008, 0x0018, "UI", uid.encode()),
            element(0x0008, 0x0060, "CS", b"OT"),
            element(0x0010, 0x0020, "LO", b"HUGE1"),
            element(0x0020, 0x000D, "UI", b"1.2.826.0.1.3680043.8.498.17"),
            element(0x0028, 0x0002, "US", struct.pack("<H", 1)),
            element(0x0028, 0x0008, "IS", b"1000"),  # multi-frame: 1000 x 1000 x 1000 x 2 B
            element(0x0028, 0x0010, "US", struct.pack("<H", 1000)),
            element(0x0028, 0x0011, "US", struct.pack("<H", 1000)),
            element(0x0028, 0x0100, "US", struct.pack("<H", 16)),
            struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, pixels),
        )
    )
    meta = part10_header(CT, uid, EXPLICIT)
    with path.open("wb") as f:
        f.write(meta + head)
        f.truncate(len(meta) + len(head) + pixels)
    return len(head) + pixels


def test_17_two_gigabyte_instance_streamed_in_and_out_under_150_mib(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1717"
    src = tmp_path / "huge.dcm"
    length = write_huge(src, uid, SIZE)
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    try:
        router = make_router(tmp_path, {"pacs": dest("PACS", pacs.port)})
        with running(router):
            pid = pid_of(router)
            res = storescu(router.port, [src], timeout=300)
            assert res.returncode == 0, res.stdout + res.stderr
            wait_for(lambda: instance_count(router) == 0, 300, "the delivery", step=0.5)
            peak_kib = proc_kib(pid, "VmHWM")
            print(f"router VmHWM {peak_kib} KiB")
            assert router.metric("dicom_router_received_bytes_total") == length
        (got,) = pacs.files()
        with got.open("rb") as f:  # the destination's file: its meta, then our data set
            f.seek(-SIZE - 64, 2)
            tail_start = f.read(64)
            f.seek(-(1 << 20), 2)
            assert f.read() == bytes(1 << 20)
        assert got.stat().st_size >= length
        assert struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, SIZE) in tail_start
        assert peak_kib < 150 * 1024, f"router peak RSS {peak_kib} KiB"
    finally:
        pacs.stop()

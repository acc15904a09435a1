"""The spool: Part-10 header, in-memory then spilled sinks, ids, layout."""

from __future__ import annotations

import io
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from router.samples import make_dataset
from router.store.spool import (
    IMPLEMENTATION_CLASS_UID,
    Spool,
    SpooledSink,
    id_from_name,
    new_id,
    part10_header,
    start_writeback,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Req:
    sop_class_uid: str = CT
    sop_instance_uid: str = "1.2.3.4.5"
    transfer_syntax: str = EXPLICIT


def dataset_bytes(size: int) -> tuple[bytes, str]:
    ds = make_dataset(size)
    uid = str(ds.SOPInstanceUID)
    del ds.file_meta
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue(), uid


def test_header_is_a_valid_file_meta_group() -> None:
    h = part10_header(CT, "1.2.3.4.5", EXPLICIT)
    assert h[:128] == b"\0" * 128 and h[128:132] == b"DICM"
    meta = pydicom.dcmread(io.BytesIO(h), force=True).file_meta
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert meta.TransferSyntaxUID == EXPLICIT
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.FileMetaInformationGroupLength == len(h) - 132 - 12
    # odd-length UIDs are padded with one NUL, even ones are not padded
    assert b"1.2.3.4.5\x00" in h
    assert len(h) % 2 == 0


@pytest.mark.parametrize(
    "uid",
    ["1.2.3\u00e9\u4e2d", "9" * 500, "../../etc/passwd", "", "1.2\x00\x00", "a b c"],
)
def test_hostile_uids_are_values_only(uid: str) -> None:
    h = part10_header(uid, uid, EXPLICIT)
    elements = parse_meta(h)
    for tag in (0x0002, 0x0003):
        value = elements[tag]
        assert len(value) <= 64 and len(value) % 2 == 0
        assert value.isascii()
    assert elements[0x0010] == EXPLICIT.encode() + b"\0"
    assert struct.unpack("<I", elements[0x0000])[0] == len(h) - 132 - 12


def parse_meta(h: bytes) -> dict[int, bytes]:
    """Walk the explicit VR LE group 2 by hand (pydicom would validate the values)."""
    out: dict[int, bytes] = {}
    pos = 132
    while pos < len(h):
        group, elem = struct.unpack_from("<HH", h, pos)
        assert group == 2
        vr = h[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            (n,) = struct.unpack_from("<I", h, pos + 8)
            pos += 12
        else:
            (n,) = struct.unpack_from("<H", h, pos + 6)
            pos += 8
        out[elem] = h[pos : pos + n]
        pos += n
    assert pos == len(h)
    return out


def test_ids_are_time_ordered_unique_and_ours() -> None:
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and id_from_name(i + ".dcm", ".dcm") == i for i in ids)
    assert id_from_name("../x.dcm", ".dcm") is None
    assert id_from_name(("A" * 24) + ".dcm", ".dcm") is None
    assert id_from_name(ids[0] + ".part", ".dcm") is None


def test_sink_stays_inline_below_threshold(storage: Path) -> None:
    spool = Spool(storage, inline_max=4096)
    sink = spool.new_sink(Req())
    sink.write(b"a" * 100)
    sink.write(memoryview(b"b" * 100))
    assert not sink.spilled and sink.tmp_path is None
    assert os.listdir(spool.tmp_dir) == []
    inline = sink.inline
    assert inline is not None
    assert inline[sink.data_offset :] == b"a" * 100 + b"b" * 100
    assert sink.size == len(inline)


def test_sink_spills_and_reads_back_with_pydicom(storage: Path) -> None:
    data, uid = dataset_bytes(50_000)
    spool = Spool(storage, inline_max=8192)
    sink = spool.new_sink(Req(sop_instance_uid=uid))
    for i in range(0, len(data), 16384):
        sink.write(data[i : i + 16384])
    assert sink.spilled and sink.inline is None
    assert sink.tmp_path is not None and sink.tmp_path.parent == spool.tmp_dir
    assert sink.tmp_path.name == f"{sink.id}.part"
    with sink.open_for_header() as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    assert ds.SOPInstanceUID == uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == uid
    path = spool.install(sink)
    assert path == spool.path_for(sink.id) and path.parent.name == sink.id[5:7]
    assert not sink.tmp_path.exists()
    body = path.read_bytes()
    assert body[sink.data_offset :] == data and len(body) == sink.size
    full = pydicom.dcmread(path)
    assert full.SOPInstanceUID == uid


def test_inline_open_for_header(storage: Path) -> None:
    data, uid = dataset_bytes(2000)
    sink = Spool(storage, inline_max=1 << 20).new_sink(Req(sop_instance_uid=uid))
    sink.write(data)
    with sink.open_for_header() as fh:
        assert pydicom.dcmread(fh, stop_before_pixels=True).SOPInstanceUID == uid


def test_abort_is_idempotent_and_leaves_nothing(storage: Path) -> None:
    spool = Spool(storage, inline_max=10)
    sink = spool.new_sink(Req())
    sink.write(b"x" * 1000)
    assert sink.tmp_path is not None and sink.tmp_path.exists()
    sink.abort()
    sink.abort()
    assert os.listdir(spool.tmp_dir) == []
    assert sink.aborted and sink.inline is None
    with pytest.raises(ValueError):
        sink.write(b"more")
    inline = spool.new_sink(Req())
    inline.abort()
    inline.abort()


def test_header_larger_than_inline_max_spills_at_once(storage: Path) -> None:
    sink = SpooledSink(storage, b"h" * 64, 10)
    assert sink.spilled and sink.size == 64
    sink.abort()


def test_sweep_remove_and_ids(storage: Path) -> None:
    spool = Spool(storage, inline_max=4096)
    assert len(os.listdir(spool.spool_dir)) == 256
    (spool.tmp_dir / "leftover.part").write_bytes(b"x")
    (spool.tmp_dir / f"{new_id()}.part").write_bytes(b"x")
    assert spool.sweep_tmp() == 2
    ident = new_id()
    spool.path_for(ident).write_bytes(b"x")
    (spool.spool_dir / "00" / "README").write_bytes(b"not ours")
    assert spool.iter_ids() == [ident]
    assert spool.remove(ident) and not spool.remove(ident)


def test_spilled_writes_of_every_size_arrive_in_order(storage: Path) -> None:
    spool = Spool(storage, inline_max=1000)
    sink = spool.new_sink(Req())
    pieces = [bytes([i % 251]) * n for i, n in enumerate([10, 999, 5000, 300_000, 1, 70_000] * 3)]
    for p in pieces:
        sink.write(p)
    with sink.open_for_header() as fh:  # sees every byte so far
        assert len(fh.read()) == sink.size
    sink.write(b"tail")
    path = spool.install(sink)
    assert path.read_bytes()[sink.data_offset :] == b"".join(pieces) + b"tail"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_is_really_started_on_linux(tmp_path: Path) -> None:
    """The sink's early writeback must reach the kernel: it once looked for
    os.sync_file_range, which Python does not have, and silently did nothing."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 300_000)
        assert start_writeback(fd)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert not start_writeback(w)  # ESPIPE: refused, not raised
    finally:
        os.close(r)
        os.close(w)

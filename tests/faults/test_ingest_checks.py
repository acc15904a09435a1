"""Table tests of the ingest's pure checks behind cases 6, 7 and 12."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from router.ingest import (
    FREE_SPACE_CHECK_EVERY,
    BrokenDataSet,
    GuardedSink,
    StorageLow,
    check_structure,
    valid_uid,
)
from router.store.spool import SpooledSink
from tests.faults.faultlib import CT, dataset


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("1.2.826.0.1.3680043.8.498." + "1" * 38, True),
        ("1.02.3", True),  # leading zero: tolerated
        ("1.2.826.0.1.3680043.8.498." + "1" * 39, False),
        ("", False),
        ("../../etc/x", False),
        ("/abs", False),
        ("1.2.3.", False),
        ("1..2", False),
        ("1.2.3 ", False),
        ("1.2.3\ufffd", False),
    ],
)
def test_valid_uid(uid: str, ok: bool) -> None:
    assert valid_uid(uid) is ok


def _check(data: bytes, implicit: bool = False) -> None:
    check_structure(io.BytesIO(data), 0, len(data), implicit=implicit, little=True)


def test_structure_walk() -> None:
    whole = dataset(CT, "1.2.3", pixels=3000)
    _check(whole)
    _check(b"")
    for cut in (1, 7, 9, 20, len(whole) - 1):
        with pytest.raises(BrokenDataSet):
            _check(whole[:cut])
    seq = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    inner = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 6) + b"1.2.3\0"
    _check(seq + item + inner + item_end + seq_end + whole)
    with pytest.raises(BrokenDataSet):
        _check(seq + item + inner + item_end + whole)  # the sequence never closes
    # undefined-length UN: implicit VR inside
    un = struct.pack("<HH2sHL", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
    implicit_inner = struct.pack("<HHL", 0x0008, 0x1150, 6) + b"1.2.3\0"
    _check(un + item + implicit_inner + item_end + seq_end)
    _check(struct.pack("<HHL", 0x0008, 0x0018, 6) + b"1.2.3\0", implicit=True)
    with pytest.raises(BrokenDataSet):
        _check(bytes(64))  # no VR


def test_guarded_sink_stops_when_free_space_falls(tmp_path: Path) -> None:
    free = [10**12]
    sink = GuardedSink(SpooledSink(tmp_path, b"HDR", 1024), lambda: free[0], 10**9)
    chunk = bytes(1 << 20)
    for _ in range(FREE_SPACE_CHECK_EVERY // len(chunk) - 2):
        sink.write(chunk)
    assert sink.error is None and list(tmp_path.iterdir())
    free[0] = 10**6  # the disk fills up meanwhile
    for _ in range(4):
        sink.write(chunk)
    assert isinstance(sink.error, StorageLow)
    assert list(tmp_path.iterdir()) == []  # the partial file is gone

"""The ingest's one-pass header read (router/header.py) against pydicom's full read:
the same values for every wanted element, the same refusals, and the full read for
whatever is out of its common case."""

from __future__ import annotations

import io
import random
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset, dcmwrite
from pydicom.sequence import Sequence

from router.dicom import uids
from router.header import scan_header, wanted_tags
from router.ingest import INGEST_TAGS, read_header
from router.rules.engine import components
from router.store.spool import SpooledSink
from tests.faults.faultlib import CT, dataset

_PRIVATE_CREATOR = 0x00090010
_PRIVATE = 0x00091001
# Tags no data set below has, so absent elements are compared as well.
_ABSENT = frozenset((0x00081030, 0x00091002, 0x00200011))


def _rich(*, charset: bool = True, sequence: bool = True) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "CT"
    ds.StationName = ""
    ds.InstitutionName = "Clinique Sainte-Thérèse"
    ds.SeriesNumber = 7
    ds.InstanceNumber = "12"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.PixelSpacing = [0.5, "0.5"]
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.add_new(_PRIVATE_CREATOR, "LO", "ACME 1.0")
    ds.add_new(_PRIVATE, "LO", "private text")
    if sequence:
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        ds.ReferencedImageSequence = Sequence([item])
    ds.PixelData = bytes(32)
    ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # after the pixel data: not read
    return ds


def _encode(ds: Dataset, *, implicit: bool) -> bytes:
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def _sink(tmp_path: Path, data: bytes) -> SpooledSink:
    sink = SpooledSink(tmp_path, b"META", 1 << 20)
    sink.write(data)
    return sink


def _every_tag(ds: Dataset) -> frozenset[int]:
    return frozenset(map(int, ds.keys())) | _ABSENT | {0x7FE00010, 0xFFFCFFFC}


def _same_view(full: Dataset, fast: Dataset, tags: frozenset[int]) -> None:
    with warnings.catch_warnings():  # mutated values: pydicom warns as it converts them
        warnings.simplefilter("ignore")
        _compare(full, fast, tags)


def _compare(full: Dataset, fast: Dataset, tags: frozenset[int]) -> None:
    for tag in tags:
        assert components(fast, tag) == components(full, tag), hex(tag)
        assert _value(full, tag) == _value(fast, tag), hex(tag)


def _value(ds: Dataset, tag: int) -> object:
    try:
        elem = ds.get(tag)
    except Exception as e:
        return type(e)
    return None if elem is None else (elem.VR, elem.value)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("charset", [False, True])
def test_same_values_as_the_full_read(tmp_path: Path, implicit: bool, charset: bool) -> None:
    # pydicom writes the sequence with its length: lazy in both reads, like any value.
    source = _rich(charset=charset)
    data = _encode(source, implicit=implicit)
    tags = wanted_tags(_every_tag(source))
    syntax = uids.IMPLICIT_VR_LE if implicit else uids.EXPLICIT_VR_LE
    full = read_header(_sink(tmp_path, data), syntax)
    fast = scan_header(io.BytesIO(data), 0, len(data), implicit=implicit, wanted=tags)
    assert fast is not None
    assert fast.get(0x7FE00010) is None and fast.get(0xFFFCFFFC) is None
    _same_view(full, fast, tags)
    assert "private text" in components(fast, _PRIVATE)
    assert len(fast) < len(full) or tags >= frozenset(map(int, full.keys()))


def test_only_the_wanted_elements(tmp_path: Path) -> None:
    data = _encode(_rich(sequence=False), implicit=False)
    fast = scan_header(
        io.BytesIO(data), 0, len(data), implicit=False, wanted=wanted_tags(INGEST_TAGS)
    )
    assert fast is not None
    assert set(map(int, fast.keys())) == {
        0x00080005,
        0x00080016,
        0x00080018,
        0x0020000D,
        0x0020000E,
        0x00200011,
        0x00200013,
    }
    assert fast.SeriesNumber == 7 and fast.InstanceNumber == 12


def _undefined_sequence() -> bytes:
    seq = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    inner = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 6) + b"1.2.3\0"
    ends = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return seq + item + inner + ends


@pytest.mark.parametrize(
    "data",
    [
        _undefined_sequence() + dataset(CT, "1.2.3"),  # pydicom parses it as a whole
        struct.pack("<HHL", 0xFFFE, 0xE000, 0) + dataset(CT, "1.2.3"),  # top-level item
        struct.pack("<HH2sH", 0x0008, 0x0018, b"ZZ", 6) + b"1.2.3\0",  # unknown VR, wanted
    ],
)
def test_out_of_the_common_case_is_left_to_pydicom(data: bytes) -> None:
    assert scan_header(io.BytesIO(data), 0, len(data), implicit=False, wanted=INGEST_TAGS) is None


def test_empty_before_the_pixel_data_is_refused(tmp_path: Path) -> None:
    pixels_only = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 4) + bytes(4)
    for tags in (None, wanted_tags(INGEST_TAGS)):
        with pytest.raises(Exception, match="empty data set"):
            read_header(_sink(tmp_path, pixels_only), uids.EXPLICIT_VR_LE, tags)


def _outcome(tmp_path: Path, data: bytes, syntax: str, tags: frozenset[int] | None) -> object:
    try:
        return read_header(_sink(tmp_path, data), syntax, tags)
    except Exception as e:
        return type(e)


@pytest.mark.parametrize("implicit", [False, True])
def test_mutations_refused_alike(tmp_path: Path, implicit: bool) -> None:
    """Cut, flipped and spliced bytes: refused by both reads or by neither, and when
    both read, the same values."""
    rng = random.Random(20261201 + implicit)
    source = _rich(sequence=False)
    base = _encode(source, implicit=implicit) + b""
    syntax = uids.IMPLICIT_VR_LE if implicit else uids.EXPLICIT_VR_LE
    tags = wanted_tags(_every_tag(source))
    fast_reads = 0
    for _ in range(400):
        data = bytearray(base)
        how = rng.randrange(3)
        if how == 0:
            data = data[: rng.randrange(len(data))]
        elif how == 1:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data))
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        full = _outcome(tmp_path, bytes(data), syntax, None)
        fast = _outcome(tmp_path, bytes(data), syntax, tags)
        if isinstance(full, Dataset) and isinstance(fast, Dataset):
            _same_view(full, fast, tags)
            fast_reads += 1
        else:
            assert isinstance(full, Dataset) == isinstance(fast, Dataset), (full, fast)
    assert fast_reads > 50

"""Inputs as the router stores them and outputs read back, for the transcode tests."""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from router.store.spool import part10_header
from router.syntaxes import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE
from router.transcode import Transcoded

#: pydicom's own test files, shipped inside the wheel (nothing is downloaded)
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@dataclass(frozen=True)
class Stored:
    """A data set as the spool holds it: our Part-10 header, then the data set as received."""

    name: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes
    data_offset: int

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.name}.spool"
        path.write_bytes(self.data)
        return path


def stored(name: str) -> Stored:
    path = TEST_FILES / name
    meta, offset = split_dataset(path)
    header = part10_header(
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )
    body = path.read_bytes()[offset:]
    return Stored(
        name,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        header + body,
        len(header),
    )


def read_data_set(data: bytes, ts: str) -> Dataset:
    """A data set without file meta, in ``ts``, read by pydicom (inflated if deflated)."""
    read_as = UID(ts)
    if ts == DEFLATED_EXPLICIT_VR_LE:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
        read_as = UID(EXPLICIT_VR_LE)
    ds = read_dataset(io.BytesIO(data), read_as.is_implicit_VR, read_as.is_little_endian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return ds


def read_output(out: Transcoded) -> Dataset:
    return read_data_set(out.path.read_bytes(), out.transfer_syntax)


def source_ds(s: Stored) -> Dataset:
    return read_data_set(s.data[s.data_offset :], s.transfer_syntax)


@cache
def catalogue() -> dict[str, tuple[str, bool]]:
    """Every Part-10 file of pydicom's test data: name -> (transfer syntax, has Pixel Data)."""
    out: dict[str, tuple[str, bool]] = {}
    for path in sorted(TEST_FILES.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=False)
            except InvalidDicomError:  # files without a file meta
                continue
        ts = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
        if ts:
            out[path.name] = (str(ts), "PixelData" in ds)
    return out


def files_in(*, compressed: bool) -> list[str]:
    """Test files with Pixel Data in a compressed (or a native) transfer syntax."""
    return [
        name
        for name, (ts, has_pixels) in catalogue().items()
        if has_pixels and UID(ts).is_compressed == compressed
    ]

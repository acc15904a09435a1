"""Synthetic DICOM instances for tests, benchmarks and the quick start.

They carry no patient data, so they can be shared, logged and committed freely.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from router.dicom.uids import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
)

_counter = itertools.count(1)


def make_dataset(
    size: int = 20_000,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    transfer_syntax: str = EXPLICIT_VR_LE,
    **attributes: object,
) -> Dataset:
    """A CT-like image whose pixel data makes the encoded file about ``size`` bytes."""
    n = next(_counter)
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = f"SYN{n:06d}"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "synthetic"
    ds.InstanceNumber = n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = max(2, (size - 600) // 2)
    cols = 256
    rows = max(1, pixels // cols)
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelData = bytes((i * 7) & 0xFF for i in range(256)) * (rows * cols * 2 // 256) + bytes(
        (rows * cols * 2) % 256
    )
    for key, value in attributes.items():
        setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def write_dataset(path: Path, size: int = 20_000, **kwargs: object) -> Path:
    ds = make_dataset(size, **kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    implicit = ds.file_meta.TransferSyntaxUID == IMPLICIT_VR_LE
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


def write_many(directory: Path, count: int, size: int = 20_000, **kwargs: object) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_dataset(directory / f"img{i:06d}.dcm", size, **kwargs) for i in range(count)]

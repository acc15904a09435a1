"""Data sets for the profile tests, built here or taken from pydicom's bundled files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from router.profiles import Profile

SECRET = b"a test secret of enough bytes"

#: a value of each VR, recognisable when it leaks
SAMPLE: dict[str, Any] = {
    "AE": "ORIGAE",
    "AS": "042Y",
    "CS": "ORIGCS",
    "DA": "20200102",
    "DT": "20200102030405",
    "TM": "030405",
    "DS": "1.5",
    "IS": "7",
    "LO": "original lo",
    "LT": "original lt",
    "PN": "Original^Person",
    "SH": "original sh",
    "ST": "original st",
    "UC": "original uc",
    "UT": "original ut",
    "UR": "http://example.org/original",
    "UI": "1.2.826.0.1.3680043.2.1125.7",
    "US": 7,
    "OB": b"\x01\x02",
    "OW": b"\x01\x02",
    "UN": b"\x01\x02",
}


def bundled(name: str) -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom's bundled test file {name} is missing"
    return Path(found)


def profile(*options: str, **extra: Any) -> Profile:
    return Profile.model_validate(
        {"deidentify": {"secret_file": "test.key", "options": list(options)}, **extra}
    )


def part10(ds: Dataset, path: Path, ts: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a Part-10 file the way the spool holds one."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_instance(
    study: str, series: str, frame: str, instance: str, pixels: bytes, rows: int = 4
) -> Dataset:
    """A CT instance full of identifying values (the originals listed in IDENTIFYING)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.PatientName = "Smithson^Harriet"
    ds.PatientID = "MRN-7781234"
    ds.PatientBirthDate = "19610412"
    ds.PatientAddress = "12 Quayside Lane"
    ds.OtherPatientIDs = "ALT-99120"
    ds.InstitutionName = "Saint Quentin Infirmary"
    ds.ReferringPhysicianName = "Pellegrino^Marco"
    ds.OperatorsName = "Thistlewood^Ann"
    ds.AccessionNumber = "ACC20200102X"
    ds.StudyID = "STUDY4471"
    ds.StudyDate = "20200102"
    ds.StudyTime = "101112"
    ds.StudyDescription = "Chest for Smithson"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.StationName = "CTROOM7"
    ds.DeviceSerialNumber = "SN-55501"
    request = Dataset()
    request.RequestingPhysician = "Okonkwo^Ifeoma"
    request.RequestedProcedureID = "RP-88123"
    ds.RequestAttributesSequence = [request]
    ds.add_new(0x00091010, "LO", "PRIVCREATOR")
    ds.add_new(0x00091001, "LO", "Smithson private copy")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = len(pixels) // (2 * rows)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels
    return ds


#: every identifying value ct_instance writes (UIDs are checked separately)
IDENTIFYING = (
    "Smithson",
    "Harriet",
    "MRN-7781234",
    "19610412",
    "Quayside",
    "ALT-99120",
    "Quentin",
    "Pellegrino",
    "Thistlewood",
    "ACC20200102X",
    "STUDY4471",
    "20200102",
    "CTROOM7",
    "SN-55501",
    "Okonkwo",
    "RP-88123",
)


def new_uid() -> str:
    return str(generate_uid())


def read(data: bytes) -> Dataset:
    import io

    return pydicom.dcmread(io.BytesIO(data))

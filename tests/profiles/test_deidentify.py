"""De-identification end to end on Part-10 files: consistency of UIDs across instances and
restarts, nothing identifying left, pixel data unchanged, set/remove, burned-in refusal."""

from __future__ import annotations

import copy
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from router.dicom.uids import is_valid
from router.profiles import (
    BurnedInAnnotationError,
    Profile,
    RewriteError,
    apply_profile,
    describe,
    rewrite_part10,
)
from router.profiles.keyed import Keyed
from router.profiles.table import table
from router.store.spool import part10_header
from tests.profiles.helpers import (
    IDENTIFYING,
    SECRET,
    bundled,
    ct_instance,
    new_uid,
    part10,
    profile,
    read,
)

BUNDLED = (
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # encapsulated pixel data
    "SC_rgb_rle.dcm",  # RLE, encapsulated, several fragments
    "rtplan.dcm",  # no pixel data
    "image_dfl.dcm",  # deflated: rewritten whole
)


def whole(profile_: Profile, source: Path | bytes, secret: bytes = SECRET) -> bytes:
    r = rewrite_part10(profile_, secret, source)
    return b"".join([r.meta, *r.chunks(source)])


@pytest.mark.parametrize("name", BUNDLED)
def test_output_parses_keeps_pixels_and_transfer_syntax(name: str) -> None:
    src = bundled(name)
    original = pydicom.dcmread(src)
    r = rewrite_part10(profile(), SECRET, src)
    out = read(b"".join([r.meta, *r.chunks(src)]))
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert r.transfer_syntax == original.file_meta.TransferSyntaxUID
    assert out.get("PixelData") == original.get("PixelData")
    assert out.SOPInstanceUID == r.sop_instance_uid == out.file_meta.MediaStorageSOPInstanceUID
    assert r.sop_instance_uid == Keyed(SECRET).uid(original.SOPInstanceUID)
    assert out.SOPClassUID == original.SOPClassUID
    assert out.PatientIdentityRemoved == "YES"
    if "PixelData" in original and name != "image_dfl.dcm":
        raw = src.read_bytes()
        piece = raw[r.pixel_offset : r.pixel_offset + r.pixel_length]
        assert piece[:4] in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
        end = r.pixel_offset + r.pixel_length
        if end < len(raw):  # the range ends where the next element starts
            ts = str(original.file_meta.TransferSyntaxUID)
            rest = read(part10_header(original.SOPClassUID, "1.2.3", ts) + raw[end:])
            assert len(rest) and all(int(e.tag) > 0x7FE00010 for e in rest)


def test_bytes_and_path_sources_give_the_same_output() -> None:
    src = bundled("JPEG2000.dcm")
    assert whole(profile(), src) == whole(profile(), src.read_bytes())


def test_a_restart_gives_byte_identical_output(tmp_path: Path) -> None:
    src = part10(
        ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x07" * 64), tmp_path / "a"
    )
    first = whole(profile("retain_longitudinal_modified_dates"), src)
    # new objects throughout, as after a restart or on another node
    again = whole(
        Profile.model_validate(
            {"deidentify": {"secret_file": "x", "options": ["retain_longitudinal_modified_dates"]}}
        ),
        src,
        secret=bytes(bytearray(SECRET)),
    )
    assert first == again
    assert whole(profile(), src, secret=b"another secret, another mapping") != whole(profile(), src)


def test_uids_stay_consistent_across_the_instances_of_a_study(tmp_path: Path) -> None:
    study, series, frame = new_uid(), new_uid(), new_uid()
    a_uid, b_uid = new_uid(), new_uid()
    a = ct_instance(study, series, frame, a_uid, b"\x01" * 64)
    b = ct_instance(study, series, frame, b_uid, b"\x02" * 64)
    ref = Dataset()
    ref.ReferencedSOPClassUID = a.SOPClassUID
    ref.ReferencedSOPInstanceUID = a_uid
    b.ReferencedImageSequence = [ref]
    b.SourceImageSequence = [copy.deepcopy(ref)]
    ra = rewrite_part10(profile(), SECRET, part10(a, tmp_path / "a"))
    out_a = read(b"".join([ra.meta, *ra.chunks(tmp_path / "a")]))
    out_b = read(whole(profile(), part10(b, tmp_path / "b")))
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID != study
    assert out_a.SeriesInstanceUID == out_b.SeriesInstanceUID != series
    assert out_a.FrameOfReferenceUID == out_b.FrameOfReferenceUID != frame
    assert out_b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ra.sop_instance_uid
    assert out_b.SourceImageSequence[0].ReferencedSOPInstanceUID == ra.sop_instance_uid
    assert out_b.ReferencedImageSequence[0].ReferencedSOPClassUID == a.SOPClassUID
    assert out_a.PatientID == out_b.PatientID == out_a.PatientName
    for uid in (out_a.StudyInstanceUID, out_a.SOPInstanceUID, ra.sop_instance_uid):
        assert uid.startswith("2.25.") and is_valid(uid)


def _values(ds: Dataset) -> list[str]:
    found = []
    for elem in ds.iterall():
        found.append(str(elem.value))
    return found


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian, None])
def test_no_original_identifying_value_is_left(tmp_path: Path, ts: str | None) -> None:
    uids = [new_uid() for _ in range(4)]
    ds = ct_instance(*uids, b"\x05" * 64)
    src = part10(ds, tmp_path / "in", ts) if ts else part10(ds, tmp_path / "in")
    data = whole(profile(), src)
    out = read(data)
    values = _values(out) + _values(out.file_meta)
    for original in (*IDENTIFYING, *uids):
        assert not any(original in v for v in values), original
        assert original.encode() not in data, original
    assert not any(e.tag.is_private for e in out.iterall())
    assert "RequestAttributesSequence" not in out


def test_options_keep_what_they_name(tmp_path: Path) -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    kept = profile(
        "retain_device_identity", "retain_institution_identity", "retain_longitudinal_full_dates"
    )
    out = read(whole(kept, part10(ds, tmp_path / "in")))
    assert out.StationName == "CTROOM7" and out.DeviceSerialNumber == "SN-55501"
    assert out.InstitutionName == "Saint Quentin Infirmary"
    assert out.StudyDate == "20200102"
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113109", "113112", "113106"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert len(out.DeidentificationMethod) == 4


def test_modified_dates_shift_every_date_of_a_patient_alike() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.StudyDate = "20200110"
    ds.SeriesDate = "20200112"
    ds.AcquisitionDateTime = "20200112101500"
    ds.StudyTime = "101112"
    apply_profile(profile("retain_longitudinal_modified_dates"), SECRET, ds)
    import datetime as dt

    study = dt.datetime.strptime(ds.StudyDate, "%Y%m%d")
    series = dt.datetime.strptime(ds.SeriesDate, "%Y%m%d")
    assert (series - study).days == 2
    assert study < dt.datetime(2020, 1, 10)
    assert ds.AcquisitionDateTime == ds.SeriesDate + "101500"
    assert ds.StudyTime == "101112"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_set_and_remove_come_after_deidentification() -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    inner = Dataset()
    inner.InstitutionName = "Saint Quentin Infirmary"
    ds.ReferencedSeriesSequence = [inner]
    p = profile(
        "retain_institution_identity",
        set={"ClinicalTrialSiteID": "SITE-A", "(0012,0050)": "V1"},
        remove=["InstitutionName", "(0009,1001)"],
    )
    apply_profile(p, SECRET, ds)
    assert ds.ClinicalTrialSiteID == "SITE-A"
    assert ds.ClinicalTrialTimePointID == "V1"
    assert "InstitutionName" not in ds
    assert "InstitutionName" not in ds.ReferencedSeriesSequence[0]


def test_a_profile_without_deidentify_changes_only_what_it_names() -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    before = copy.deepcopy(ds)
    p = Profile.model_validate({"set": {"ClinicalTrialSiteID": "S"}, "remove": ["(0009,1001)"]})
    assert apply_profile(p, None, ds) == before.SOPInstanceUID
    assert 0x00091001 not in ds and 0x00091010 in ds
    assert ds.PatientName == "Smithson^Harriet"
    del ds.ClinicalTrialSiteID
    before.pop(0x00091001)
    assert ds == before


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    ds.BurnedInAnnotation = "YES"
    src = part10(ds, tmp_path / "in")
    with pytest.raises(BurnedInAnnotationError, match="BurnedInAnnotation is YES"):
        rewrite_part10(profile(), SECRET, src)
    allowed = profile(allow_burned_in=True)
    assert read(whole(allowed, src)).BurnedInAnnotation == "YES"
    assert rewrite_part10(Profile(), None, src).sop_instance_uid == ds.SOPInstanceUID


def test_elements_after_the_pixel_data_are_deidentified_too(tmp_path: Path) -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    ds.add_new(0x7FE00020, "OW", b"\x01\x02")  # Coefficients SDVN: listed by no row
    signature = Dataset()
    signature.MACIDNumber = 1
    ds.DigitalSignaturesSequence = [signature]  # X
    ds.DataSetTrailingPadding = b"\x00" * 8  # X
    src = part10(ds, tmp_path / "in")
    r = rewrite_part10(profile(), SECRET, src)
    assert r.pixel_offset + r.pixel_length < src.stat().st_size
    out = read(b"".join([r.meta, *r.chunks(src)]))
    assert "DigitalSignaturesSequence" not in out
    assert "DataSetTrailingPadding" not in out
    assert out[0x7FE00020].value == b"\x01\x02"
    assert out.PixelData == ds.PixelData


def test_memory_stays_bounded_by_the_header(tmp_path: Path) -> None:
    pixels = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), pixels, rows=4096)
    src = part10(ds, tmp_path / "big")
    del ds
    tracemalloc.start()
    try:
        r = rewrite_part10(profile(), SECRET, src)
        sent = sum(len(c) for c in r.chunks(src, size=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.pixel_length > len(pixels)
    assert r.pixel_offset + r.pixel_length == src.stat().st_size
    assert sent == len(r.dataset_head) + r.pixel_length + len(r.dataset_tail)
    assert peak < 4 * 1024 * 1024


def test_describe_names_attributes_and_actions_but_no_values() -> None:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x05" * 64)
    before = copy.deepcopy(ds)
    p = profile(set={"ClinicalTrialSiteID": "SITE-A"}, remove=["StationName"])
    changes = describe(p, ds)
    assert ds == before  # describe changes nothing
    by_attribute = {c.attribute: c.action for c in changes}
    assert by_attribute["PatientName (0010,0010)"] == "pseudonym"
    assert by_attribute["AccessionNumber (0008,0050)"] == "emptied"
    assert by_attribute["SOPInstanceUID (0008,0018)"] == "UID replaced"
    assert by_attribute["(0009,1001)"] == "removed (private)"
    assert by_attribute["ClinicalTrialSiteID (0012,0030)"] == "set to 'SITE-A'"
    assert by_attribute["RequestAttributesSequence (0040,0275)"] == "removed"
    text = repr(changes)
    for original in IDENTIFYING:
        assert original not in text
    ds.BurnedInAnnotation = "YES"
    (refused,) = describe(p, ds)
    assert "refused" in refused.action


@pytest.mark.parametrize("options", [(), ("clean_graphics",)])
def test_an_overlay_goes_whole_with_its_data(options: tuple[str, ...]) -> None:
    ds = Dataset()
    ds.add_new(0x60000010, "US", 4)  # Overlay Rows
    ds.add_new(0x60000011, "US", 4)  # Overlay Columns
    ds.add_new(0x60003000, "OW", b"\x00" * 2)
    ds.add_new(0x60004000, "LT", "comment")
    ds.add_new(0x60020010, "US", 4)  # another overlay, without data: left to the table
    apply_profile(profile(*options), SECRET, ds)
    assert not any(int(e.tag) >> 16 == 0x6000 for e in ds)
    assert 0x60020010 in ds


def test_keyed_replacements_follow_the_contract() -> None:
    import hashlib
    import hmac

    keyed = Keyed(SECRET)
    original = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    digest = hmac.new(SECRET, original.encode(), hashlib.sha256).digest()
    assert keyed.uid(original) == "2.25." + str(int.from_bytes(digest[:16], "big"))
    assert keyed.uid(original + "\x00") == keyed.uid(original)  # UI padding is not the UID
    assert len(keyed.uid("9" * 64)) <= 64 and is_valid(keyed.uid("1.2"))
    assert keyed.pseudonym("MRN-1") == keyed.pseudonym("MRN-1 ") != keyed.pseudonym("MRN-2")
    assert Keyed(b"another secret of enough bytes").pseudonym("MRN-1") != keyed.pseudonym("MRN-1")
    assert keyed.uid("MRN-1") != keyed.pseudonym("MRN-1")


IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


@pytest.mark.parametrize("name", BUNDLED)
def test_no_identifying_value_of_a_bundled_file_is_left(name: str) -> None:
    src = bundled(name)
    original = pydicom.dcmread(src, stop_before_pixels=True)
    out = read(whole(profile(), src))
    checked = 0
    for keyword in IDENTIFYING_KEYWORDS:
        value = str(original.get(keyword, "") or "").strip()
        if len(value) < 4:
            continue
        checked += 1
        for elem in out.iterall():
            if elem.VR != "SQ" and value in str(elem.value):
                # only where the Basic Profile keeps the attribute (Manufacturer, say)
                assert table().row_for(int(elem.tag)) is None, (keyword, elem.keyword)
                assert elem.keyword not in IDENTIFYING_KEYWORDS
    assert checked >= 3


def test_a_damaged_spool_file_is_a_rewrite_error(tmp_path: Path) -> None:
    src = bundled("CT_small.dcm").read_bytes()
    r = rewrite_part10(profile(), SECRET, src)
    with pytest.raises(RewriteError, match="ends inside"):
        rewrite_part10(profile(), SECRET, src[: r.pixel_offset + 100])
    with pytest.raises(RewriteError, match="cannot be read as DICOM"):
        rewrite_part10(profile(), SECRET, b"\x00" * 128 + b"DICX")

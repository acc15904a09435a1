"""The STOW-RS client against a real Orthanc with its DICOMweb plugin (conftest.py)."""

from __future__ import annotations

import io
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from router.config import ClientTLS
from router.forward.outcome import Outcome
from router.forward.stow import (
    BasicAuth,
    MultipartBody,
    Part,
    StowClient,
    StowConfig,
    classify_response,
    group_by_study,
)
from router.store.spool import part10_header
from tests.forward.stow.orthanc_server import PASSWORD, USER, Orthanc
from tests.ports import reserve_port
from tests.tls.pki import Pki

# pydicom's test files in several transfer syntaxes
TEST_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "SC_rgb_rle.dcm",  # RLE lossless
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless process 14
    "SC_jpeg_no_color_transform.dcm",  # JPEG baseline
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPGExtended.dcm",  # JPEG extended
]


def data_set_offset(part10: bytes) -> int:
    """Where the data set starts: past the preamble, "DICM" and the file meta group
    (explicit VR little endian, group 0002), walked element by element."""
    assert part10[128:132] == b"DICM"
    pos = 132
    while pos + 8 <= len(part10):
        group, _element = struct.unpack_from("<HH", part10, pos)
        if group != 0x0002:
            break
        vr = part10[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack_from("<I", part10, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", part10, pos + 6)
            pos += 8 + length
    return pos


def as_spooled(original: bytes) -> bytes:
    """The original's data set behind the router's own Part-10 header, as the spool
    holds an instance received with C-STORE."""
    meta = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True).file_meta
    header = part10_header(
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID
    )
    return header + original[data_set_offset(original) :]


def client(orthanc: Orthanc, **kw: object) -> StowClient:
    return StowClient(StowConfig(orthanc.dicomweb, timeout=60.0, **kw))  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "file"])
@pytest.mark.parametrize("name", TEST_FILES)
async def test_orthanc_stores_the_data_set_bytes_we_stream(
    orthanc: Orthanc, tmp_path: Path, name: str, inline: bool
) -> None:
    original = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    uid = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True).SOPInstanceUID
    orthanc.clear()
    direct_id = orthanc.post_instance(original)
    direct = orthanc.instance_file(direct_id)
    orthanc.delete_instance(direct_id)
    assert orthanc.find_instance(uid) is None

    spooled = as_spooled(original)
    source: bytes | Path = spooled
    if not inline:
        source = tmp_path / "spooled.dcm"
        source.write_bytes(spooled)
    async with client(orthanc) as c:
        out = await c.store([Part(uid, source)])

    assert out.http_status == 200
    assert [(r.sop_instance_uid, r.outcome) for r in out.results] == [(uid, Outcome.DELIVERED)]
    stowed_id = orthanc.find_instance(uid)
    assert stowed_id is not None
    stowed = orthanc.instance_file(stowed_id)
    assert stowed[data_set_offset(stowed) :] == direct[data_set_offset(direct) :]
    assert stowed[data_set_offset(stowed) :] == original[data_set_offset(original) :]


@pytest.mark.asyncio
async def test_one_request_per_study_of_several_instances(orthanc: Orthanc) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"]
    files = [Path(get_testdata_file(n)) for n in names]  # type: ignore[arg-type]
    parts = [Part(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID, f) for f in files]
    studies = {
        p.sop_instance_uid: pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
        for p, f in zip(parts, files, strict=True)
    }
    orthanc.clear()
    groups = group_by_study(parts, lambda p: studies[p.sop_instance_uid], 16)
    assert len(groups) < len(parts)  # MR_small and MR_small_implicit share a study
    async with client(orthanc) as c:
        for group in groups:
            out = await c.store(group)
            assert [r.outcome for r in out.results] == [Outcome.DELIVERED] * len(group)
    for p in parts:
        assert orthanc.find_instance(p.sop_instance_uid) is not None


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.asyncio
async def test_mixed_request_gives_per_instance_results(orthanc: Orthanc) -> None:
    good = [Path(get_testdata_file(n)).read_bytes() for n in ("CT_small.dcm", "rtplan.dcm")]  # type: ignore[arg-type]
    bad = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del bad.SeriesInstanceUID  # Orthanc cannot index an instance without its series
    parts = [
        Part(pydicom.dcmread(io.BytesIO(good[0])).SOPInstanceUID, good[0]),
        Part(bad.SOPInstanceUID, _part10(bad)),
        Part(pydicom.dcmread(io.BytesIO(good[1])).SOPInstanceUID, good[1]),
    ]
    orthanc.clear()
    async with client(orthanc) as c:
        out = await c.store(parts)
    assert not out.destination_down
    first, failed, last = out.results
    assert first.outcome is last.outcome is Outcome.DELIVERED
    assert failed.sop_instance_uid == bad.SOPInstanceUID
    assert failed.status == 0xC000  # Orthanc's FailureReason: cannot understand
    assert failed.outcome is Outcome.PERMANENT
    assert "0xC000" in failed.reason
    assert orthanc.find_instance(parts[0].sop_instance_uid) is not None
    assert orthanc.find_instance(parts[2].sop_instance_uid) is not None
    assert orthanc.find_instance(bad.SOPInstanceUID) is None


@pytest.mark.asyncio
async def test_unreadable_stored_copy_is_dead_lettered_and_the_rest_sent(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    uid = pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    orthanc.clear()
    async with client(orthanc) as c:
        out = await c.store([Part("1.2.3.4", tmp_path / "gone.dcm"), Part(uid, ct)])
    gone, sent = out.results
    assert gone.outcome is Outcome.PERMANENT and "unreadable" in gone.reason
    assert sent.outcome is Outcome.DELIVERED


@pytest.mark.asyncio
async def test_basic_auth(orthanc_auth: Orthanc, tmp_path: Path) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    uid = pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text(PASSWORD + "\n")
    bad.write_text("not-" + PASSWORD + "\n")
    orthanc_auth.clear()

    async with client(orthanc_auth, auth=BasicAuth(USER, bad)) as c:
        assert not (await c.echo()).ok
        out = await c.store([Part(uid, ct)])
    assert out.http_status == 401
    assert out.destination_down
    assert [r.outcome for r in out.results] == [Outcome.TRANSIENT]
    assert orthanc_auth.find_instance(uid) is None

    async with client(orthanc_auth, auth=BasicAuth(USER, good)) as c:
        echo = await c.echo()
        assert echo.ok, echo.reason
        out = await c.store([Part(uid, ct)])
    assert [r.outcome for r in out.results] == [Outcome.DELIVERED]
    assert orthanc_auth.find_instance(uid) is not None


@pytest.mark.asyncio
async def test_password_file_is_reread_when_it_changes(
    orthanc_auth: Orthanc, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    async with client(orthanc_auth, auth=BasicAuth(USER, pw)) as c:
        assert (await c.echo()).reason.startswith("HTTP 401")
        pw.write_text(PASSWORD + "\n")
        os.utime(pw, ns=(1, 1))  # a distinct stamp even within one mtime tick
        echo = await c.echo()
        assert echo.ok, echo.reason


@pytest.mark.asyncio
async def test_server_down_is_retried() -> None:
    config = StowConfig(f"http://127.0.0.1:{reserve_port()}/dicom-web", timeout=10.0)
    async with StowClient(config) as c:
        echo = await c.echo()
        out = await c.store([Part("1.2.3", b"\0" * 200)])
    assert not echo.ok and "cannot connect" in echo.reason
    assert out.http_status is None
    assert out.destination_down
    assert [r.outcome for r in out.results] == [Outcome.TRANSIENT]
    assert "cannot connect" in out.results[0].reason


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def write_large_instance(path: Path, pixel_bytes: int) -> str:
    """A Part-10 secondary capture of ``pixel_bytes`` of pixel data, written in chunks
    (never held in memory)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "LARGE"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.Columns = 10_000
    ds.Rows = pixel_bytes // (2 * ds.Columns)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    length = ds.Rows * ds.Columns * 2
    chunk = b"\x01\x02" * (512 * 1024)
    with path.open("wb") as f:
        ds.save_as(f, enforce_file_format=True)
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        left = length
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return str(ds.SOPInstanceUID)


@pytest.mark.asyncio
@pytest.mark.timeout(600)
async def test_large_instance_is_streamed_in_bounded_memory(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    size = 200 * 1024 * 1024
    path = tmp_path / "large.dcm"
    uid = write_large_instance(path, size)
    orthanc.clear()
    # reset the peak RSS to the current RSS (Linux clear_refs 5), so the peak measured
    # after the send is this send's, not an earlier test's
    Path("/proc/self/clear_refs").write_text("5")
    before = _vm_kib("VmRSS")
    async with StowClient(StowConfig(orthanc.dicomweb, timeout=300.0)) as c:
        out = await c.store([Part(uid, path)])
    growth = (_vm_kib("VmHWM") - before) * 1024
    assert [r.outcome for r in out.results] == [Outcome.DELIVERED], out.reason
    stored = orthanc.find_instance(uid)
    assert stored is not None
    info = orthanc.get_json(f"/instances/{stored}")
    assert isinstance(info, dict) and info["FileSize"] == path.stat().st_size
    assert growth < size // 10, f"peak RSS grew by {growth} bytes sending {size}"


@pytest.mark.asyncio
async def test_https_with_client_certificate(
    orthanc: Orthanc, https_dicomweb: str, stow_pki: Pki
) -> None:
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    uid = pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID
    orthanc.clear()
    good = ClientTLS(ca=stow_pki.ca, cert=stow_pki.client.cert, key=stow_pki.client.key)
    async with StowClient(StowConfig(https_dicomweb, tls=good, timeout=60.0)) as c:
        echo = await c.echo()
        assert echo.ok, echo.reason
        out = await c.store([Part(uid, ct)])
    assert [r.outcome for r in out.results] == [Outcome.DELIVERED]
    assert orthanc.find_instance(uid) is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["untrusted server", "no client certificate"])
async def test_https_failures_are_retried(https_dicomweb: str, stow_pki: Pki, case: str) -> None:
    if case == "untrusted server":
        tls = ClientTLS(ca=stow_pki.other_ca, cert=stow_pki.client.cert, key=stow_pki.client.key)
    else:
        tls = ClientTLS(ca=stow_pki.ca)
    async with StowClient(StowConfig(https_dicomweb, tls=tls, timeout=60.0)) as c:
        assert not (await c.echo()).ok
        out = await c.store([Part("1.2.3", b"\0" * 200)])
    assert out.http_status is None
    assert out.destination_down
    assert [r.outcome for r in out.results] == [Outcome.TRANSIENT]


@pytest.mark.asyncio
async def test_orthanc_xml_answer_gives_the_same_results(orthanc: Orthanc) -> None:
    """The client asks for DICOM JSON; servers that answer XML are read the same way.
    Orthanc's own XML answer to a mixed request, read by classify_response."""
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    bad = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del bad.SeriesInstanceUID
    uids = [pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID, bad.SOPInstanceUID]
    body = MultipartBody([Part(uids[0], good), Part(uids[1], _part10(bad))])
    data = b"".join([chunk async for chunk in body])
    orthanc.clear()
    req = urllib.request.Request(orthanc.dicomweb + "/studies", data=data, method="POST")
    req.add_header("Content-Type", body.content_type)
    req.add_header("Accept", "application/dicom+xml")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, answer = resp.status, resp.read()
    except urllib.error.HTTPError as e:  # Orthanc answers 400 when one instance fails
        with e:
            status, answer = e.code, e.read()
    assert answer.lstrip().startswith(b"<?xml")
    out = classify_response(status, answer, uids)
    assert [(r.outcome, r.status) for r in out.results] == [
        (Outcome.DELIVERED, None),
        (Outcome.PERMANENT, 0xC000),
    ]

"""The conversion engine on pydicom's own test files (local, inside the pydicom wheel)."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import UID, generate_uid

from router import syntaxes
from router.store.spool import part10_header
from router.syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    NATIVE,
    RLE_LOSSLESS,
)
from router.transcode import Transcoded, TranscodeError, transcode

from .helpers import Stored, catalogue, files_in, read_data_set, read_output, source_ds, stored

# pydicom's test files that no installed decoder (nor python-gdcm) can decode: pydicom's
# own tests expect these to fail; here they must become a TranscodeError, not a crash
UNDECODABLE = {
    "JPEG-lossy.dcm": "JPEG Extended with a corrupt codestream (libjpeg and gdcm refuse it)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "a fragment cut by a sequence delimiter",
}
COMPRESSED = files_in(compressed=True)
DECODABLE_FILES = [n for n in COMPRESSED if n not in UNDECODABLE]
NATIVE_FILES = [
    n
    for n in files_in(compressed=False)
    # no Image Pixel module / truncated / broken on purpose in pydicom's test data
    if n not in {"nested_priv_SQ.dcm", "MR_truncated.dcm", "badVR.dcm"}
]

pytestmark = pytest.mark.filterwarnings(
    # pydicom warns (it does not fail) about quirks of some of its own test files, e.g. a
    # JFIF marker in an RGB JPEG or a J2K sign mismatch; the assertions below are the test
    "ignore::UserWarning"
)


@pytest.fixture
def tmp_out(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "out"
    d.mkdir()
    yield d
    # every output was discarded by the test, and nothing else was left behind
    assert list(d.iterdir()) == []


def run(s: Stored, target: str, tmp: Path, **kw: Any) -> Transcoded:
    return transcode(
        s.data, s.transfer_syntax, target, data_offset=s.data_offset, tmp_dir=tmp, **kw
    )


def pixels(ds: Dataset, as_rgb: bool = False) -> np.ndarray[Any, Any]:
    return pixel_array(ds, as_rgb=as_rgb)


def test_the_catalogue_is_what_we_think() -> None:
    assert len(DECODABLE_FILES) >= 35, DECODABLE_FILES
    assert set(UNDECODABLE) <= set(COMPRESSED)


def check_image(src: Dataset, out: Dataset, source_ts: str, target_ts: str) -> None:
    assert out.SOPInstanceUID == src.SOPInstanceUID
    assert out.SOPClassUID == src.SOPClassUID
    # pixels: equal to the source's decoded pixels (as_rgb=False: YCbCr stays YCbCr);
    # the same decoder decodes both, so lossy sources compare exactly too
    a, b = pixels(src), pixels(out)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b)
    # the Photometric Interpretation written says what the pixels are: converting both
    # to RGB through what each data set declares gives the same image
    if int(src.SamplesPerPixel) == 3:
        assert np.array_equal(pixels(src, as_rgb=True), pixels(out, as_rgb=True))
        assert out.PlanarConfiguration == 0
    assert out.PhotometricInterpretation != "YBR_FULL_422" or source_ts in NATIVE
    # lossy stays lossy
    if src.get("LossyImageCompression") == "01" or source_ts in syntaxes.ALWAYS_LOSSY:
        assert out.LossyImageCompression == "01"
    elif "LossyImageCompression" in src:
        assert out.LossyImageCompression == src.LossyImageCompression
    # the rest of the data set is untouched
    changed = {
        "PixelData",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "LossyImageCompression",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
    }
    for elem in src:
        if elem.keyword in changed or elem.tag.element == 0:
            continue  # group lengths (retired) are not written: they would be wrong
        if elem.tag.is_private and target_ts == IMPLICIT_VR_LE:
            continue  # implicit VR keeps the bytes of a private element, not its VR
        assert elem.tag in out, elem
        assert out[elem.tag].value == elem.value, elem


@pytest.mark.parametrize("target", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
@pytest.mark.parametrize("name", DECODABLE_FILES)
def test_every_decodable_compressed_file(name: str, target: str, tmp_out: Path) -> None:
    s = stored(name)
    out = run(s, target, tmp_out)
    try:
        assert out.transfer_syntax == target
        assert out.length == out.path.stat().st_size
        ds = read_output(out)
        src = source_ds(s)
        # native pixel data, of exactly the size the header describes (padded to even)
        elem = ds["PixelData"]
        assert not elem.is_undefined_length
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated // 8
        assert len(elem.value) == size + size % 2
        check_image(src, ds, s.transfer_syntax, target)
        if s.transfer_syntax != EXPLICIT_VR_LE and "PhotometricInterpretation" in out.changes:
            assert src.PhotometricInterpretation in out.changes[0]
    finally:
        out.discard()


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_undecodable_test_files_are_refused_with_a_reason(name: str, tmp_out: Path) -> None:
    s = stored(name)
    with pytest.raises(TranscodeError, match="cannot decode") as e:
        run(s, EXPLICIT_VR_LE, tmp_out)
    assert syntaxes.name(s.transfer_syntax) in e.value.reason


def test_ybr_full_422_jpeg_decodes_to_ybr_full_without_rgb(tmp_out: Path) -> None:
    s = stored("examples_ybr_color.dcm")
    out = run(s, EXPLICIT_VR_LE, tmp_out)
    try:
        ds = read_output(out)
        assert ds.PhotometricInterpretation == "YBR_FULL"
        assert out.changes == ("PhotometricInterpretation: YBR_FULL_422 -> YBR_FULL",)
        assert ds.LossyImageCompression == "01"
        # still YCbCr: not the RGB pydicom would have made by default
        assert not np.array_equal(pixels(ds), pixels(ds, as_rgb=True))
    finally:
        out.discard()


def test_ycbcr_rct_j2k_decodes_to_rgb(tmp_out: Path) -> None:
    s = stored("examples_jpeg2k.dcm")
    out = run(s, EXPLICIT_VR_LE, tmp_out)
    try:
        assert read_output(out).PhotometricInterpretation == "RGB"
        assert out.changes == ("PhotometricInterpretation: YBR_RCT -> RGB",)
    finally:
        out.discard()


def test_missing_lossy_flag_is_set_for_dct_jpeg(tmp_out: Path) -> None:
    s = stored("SC_rgb_jpeg_gdcm.dcm")  # lossless JPEG: no flag, none added
    out = run(s, EXPLICIT_VR_LE, tmp_out)
    try:
        assert "LossyImageCompression" not in read_output(out)
    finally:
        out.discard()
    src = source_ds(stored("JPGExtended.dcm"))
    del src.LossyImageCompression
    s2 = synthetic(src, "1.2.840.10008.1.2.4.51")
    out = run(s2, EXPLICIT_VR_LE, tmp_out)
    try:
        assert read_output(out).LossyImageCompression == "01"
        assert "LossyImageCompression: absent -> 01" in out.changes
    finally:
        out.discard()


TO_COMPRESSED = [
    "MR_small.dcm",  # 16-bit signed, explicit LE
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_jpeg_gdcm.dcm",  # lossless JPEG RGB
    "SC_rgb_jpeg_dcmtk.dcm",  # lossy YCbCr -> lossless compressed (allowed)
    "ExplVR_BigEnd.dcm",  # RGB, Planar Configuration 1
    "SC_ybr_full_422_uncompressed.dcm",
    "image_dfl.dcm",
]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (n, t)
        for n in TO_COMPRESSED
        for t in (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS)
        if catalogue()[n][0] != t
    ],
)
def test_to_lossless_compressed(name: str, target: str, tmp_out: Path) -> None:
    s = stored(name)
    assert s.transfer_syntax != target
    out = run(s, target, tmp_out)
    try:
        ds = read_output(out)
        assert ds["PixelData"].is_undefined_length
        src = source_ds(s)
        assert ds.SOPInstanceUID == src.SOPInstanceUID
        a, b = pixels(src), pixels(ds)
        assert np.array_equal(a, b)
        if int(src.SamplesPerPixel) == 3:
            assert np.array_equal(pixels(src, as_rgb=True), pixels(ds, as_rgb=True))
    finally:
        out.discard()


def test_encoder_limits_are_a_transcode_error(tmp_out: Path) -> None:
    s = stored("rtdose.dcm")  # 32-bit: beyond JPEG-LS
    with pytest.raises(TranscodeError, match="cannot encode JPEG-LS"):
        run(s, JPEG_LS_LOSSLESS, tmp_out)


# -- native <-> native: no pixel decoding, element values preserved -------------------------


def values(ds: Dataset) -> dict[int, Any]:
    """Every element's value, recursively (sequences as lists of dicts)."""
    out: dict[int, Any] = {}
    for elem in ds:
        if elem.tag.element == 0:
            continue  # retired group lengths are dropped (they would be wrong)
        if elem.VR == "SQ":
            out[int(elem.tag)] = [values(item) for item in elem.value]
        else:
            out[int(elem.tag)] = elem.value
    return out


NATIVE_TARGETS = [EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE]


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (n, t)
        for n in NATIVE_FILES
        for t in NATIVE_TARGETS
        if t != (catalogue()[n][0] if n in catalogue() else None)
    ],
)
def test_native_round_trip_preserves_every_value(name: str, target: str, tmp_out: Path) -> None:
    s = stored(name)
    there = run(s, target, tmp_out)
    try:
        ds = read_output(there)
        src = source_ds(s)
        assert np.array_equal(pixels(src), pixels(ds))
        # and back: the element values are those received, byte for byte
        back_in = Stored(name, s.sop_class, s.sop_instance, target, there.path.read_bytes(), 0)
        back = run(back_in, s.transfer_syntax, tmp_out)
        try:
            got, want = values(read_output(back)), values(src)
            if read_output(back)["PixelData"].VR != src["PixelData"].VR:
                # implicit VR does not carry Pixel Data's VR: big endian 8-bit pixels received
                # as OW (words, so pairs swapped) come back as OB; the pixels are the same
                assert np.array_equal(pixels(read_output(back)), pixels(src))
                del got[0x7FE00010], want[0x7FE00010]
            assert got == want
            assert there.changes == back.changes == ()
        finally:
            back.discard()
    finally:
        there.discard()


def test_big_endian_twin_matches_the_little_endian_file(tmp_out: Path) -> None:
    """MR_small_bigendian.dcm is MR_small.dcm in explicit VR big endian: converted to
    little endian its pixel data is MR_small's, byte for byte."""
    out = run(stored("MR_small_bigendian.dcm"), EXPLICIT_VR_LE, tmp_out)
    try:
        got = read_output(out)
        want = source_ds(stored("MR_small.dcm"))
        assert got.PixelData == want.PixelData
        assert got.SOPInstanceUID == want.SOPInstanceUID
    finally:
        out.discard()


def test_rtdose_big_endian_twin(tmp_out: Path) -> None:
    """32-bit dose grid: big endian to implicit LE gives rtdose.dcm's pixel bytes."""
    out = run(stored("rtdose_expb.dcm"), IMPLICIT_VR_LE, tmp_out)
    try:
        assert read_output(out).PixelData == source_ds(stored("rtdose.dcm")).PixelData
    finally:
        out.discard()


def test_deflated_output_is_read_by_pydicom_itself(tmp_out: Path, tmp_path: Path) -> None:
    s = stored("CT_small.dcm")
    out = run(s, DEFLATED_EXPLICIT_VR_LE, tmp_out)
    try:
        f = tmp_path / "deflated.dcm"
        header = part10_header(s.sop_class, s.sop_instance, DEFLATED_EXPLICIT_VR_LE)
        f.write_bytes(header + out.path.read_bytes())
        ds = pydicom.dcmread(f)  # pydicom inflates on its own
        assert values(ds) == values(source_ds(s))
    finally:
        out.discard()


def test_deflated_input_from_a_spooled_file(tmp_out: Path, tmp_path: Path) -> None:
    s = stored("image_dfl.dcm")
    path = s.write(tmp_path)
    out = transcode(
        path, s.transfer_syntax, EXPLICIT_VR_LE, data_offset=s.data_offset, tmp_dir=tmp_out
    )
    try:
        ds = read_output(out)
        src = source_ds(s)
        assert values(ds) == values(src)
    finally:
        out.discard()


def test_data_set_without_pixel_data_in_a_compressed_syntax(tmp_out: Path) -> None:
    s = stored("UN_sequence.dcm")  # JPEG Lossless syntax, no Pixel Data
    out = run(s, IMPLICIT_VR_LE, tmp_out)
    try:
        assert values(read_output(out)).keys() == values(source_ds(s)).keys()
    finally:
        out.discard()


# -- refusals ---------------------------------------------------------------------------------


def synthetic(ds: Dataset, ts: str) -> Stored:
    """``ds`` encoded in ``ts`` as the spool would hold it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    uid = UID(ts)
    fp.is_implicit_VR, fp.is_little_endian = uid.is_implicit_VR, uid.is_little_endian
    write_dataset(fp, ds)
    header = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ts)
    return Stored(
        "synthetic", ds.SOPClassUID, ds.SOPInstanceUID, ts, header + fp.getvalue(), len(header)
    )


def band(rows: int, cols: int) -> np.ndarray[Any, Any]:
    return np.repeat((np.arange(rows, dtype="<u2") // 16 * 100)[:, None], cols, axis=1)


def multiframe_rle(frames: int, rows: int = 256, cols: int = 256) -> Stored:
    """A 16-bit multi-frame RLE image (bands of rows, so it compresses well)."""
    from pydicom.pixels.encoders.base import get_encoder

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.NumberOfFrames = frames
    ramp = band(rows, cols)
    encoder = get_encoder(RLE_LOSSLESS)
    opts = dict(
        rows=rows,
        columns=cols,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
    fragments = [encoder.encode(ramp + i, **opts) for i in range(frames)]
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return synthetic(ds, RLE_LOSSLESS)


def test_too_large_is_refused_before_decoding(tmp_out: Path) -> None:
    s = multiframe_rle(4)
    decoded = 4 * 256 * 256 * 2
    with pytest.raises(TranscodeError, match="too large to transcode"):
        run(s, EXPLICIT_VR_LE, tmp_out, max_decoded_bytes=decoded - 1)
    out = run(s, EXPLICIT_VR_LE, tmp_out, max_decoded_bytes=decoded)
    out.discard()


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm"]
)
def test_too_large_for_every_kind_of_source(name: str, tmp_out: Path) -> None:
    with pytest.raises(TranscodeError, match="too large to transcode"):
        run(stored(name), IMPLICIT_VR_LE, tmp_out, max_decoded_bytes=1000)


def test_decoding_is_frame_by_frame(tmp_out: Path, tmp_path: Path) -> None:
    """From a spooled file, peak Python/numpy allocations while decoding 64 frames of
    128 KiB stay near a few frames, not the 8 MiB of the whole image."""
    s = multiframe_rle(64)
    path = s.write(tmp_path)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = transcode(
            path, s.transfer_syntax, EXPLICIT_VR_LE, data_offset=s.data_offset, tmp_dir=tmp_out
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    try:
        assert out.length > 64 * 256 * 256 * 2
        assert len(s.data) < 1024 * 1024
        assert peak < 2 * 1024 * 1024, peak
        decoded = pixels(read_output(out))
        assert np.array_equal(decoded[63], band(256, 256) + 63)
    finally:
        out.discard()


def test_corrupt_codestream_is_a_transcode_error(tmp_out: Path) -> None:
    src = source_ds(stored("MR_small_jpeg_ls_lossless.dcm"))
    # well-formed encapsulation around a fragment that is no JPEG-LS codestream
    src.PixelData = encapsulate([b"\xff\xd8" + bytes(range(256)) * 8])
    src["PixelData"].VR = "OB"
    src["PixelData"].is_undefined_length = True
    bad = synthetic(src, JPEG_LS_LOSSLESS)
    with pytest.raises(TranscodeError, match="cannot decode JPEG-LS Lossless"):
        run(bad, EXPLICIT_VR_LE, tmp_out)


def test_syntax_nobody_decodes(tmp_out: Path) -> None:
    s = stored("CT_small.dcm")
    mpeg = Stored(
        s.name, s.sop_class, s.sop_instance, "1.2.840.10008.1.2.4.100", s.data, s.data_offset
    )
    with pytest.raises(TranscodeError, match="no installed decoder for MPEG2"):
        run(mpeg, EXPLICIT_VR_LE, tmp_out)


def test_garbage_is_a_transcode_error(tmp_out: Path) -> None:
    for data in (
        b"\x08\x00\x05\x00XX\x04\x00abcd",  # no such VR
        b"\x08\x00\x05\x00UL\x02\x00\x01\x00",  # a UL of 2 bytes
    ):
        garbage = Stored("x", "1.2", "1.2.3", EXPLICIT_VR_LE, data, 0)
        with pytest.raises(TranscodeError, match="cannot parse"):
            run(garbage, IMPLICIT_VR_LE, tmp_out)
    deflated = Stored("x", "1.2", "1.2.3", DEFLATED_EXPLICIT_VR_LE, b"not deflate", 0)
    with pytest.raises(TranscodeError, match="inflate"):
        run(deflated, EXPLICIT_VR_LE, tmp_out)


def test_missing_file_is_a_transcode_error(tmp_out: Path, tmp_path: Path) -> None:
    with pytest.raises(TranscodeError, match="cannot read"):
        transcode(tmp_path / "gone", RLE_LOSSLESS, EXPLICIT_VR_LE, tmp_dir=tmp_out)


def test_contract_errors() -> None:
    s = stored("CT_small.dcm")
    with pytest.raises(ValueError, match="same"):
        transcode(s.data, EXPLICIT_VR_LE, EXPLICIT_VR_LE, data_offset=s.data_offset)
    with pytest.raises(ValueError, match="not a target"):
        transcode(s.data, EXPLICIT_VR_LE, "1.2.840.10008.1.2.4.50", data_offset=s.data_offset)


def test_output_written_where_asked_and_unaffected_by_deflate_level(tmp_out: Path) -> None:
    s = stored("CT_small.dcm")
    out = run(s, DEFLATED_EXPLICIT_VR_LE, tmp_out)
    try:
        assert out.path.parent == tmp_out
        assert out.path.name.startswith("transcode-")
        assert zlib.decompress(out.path.read_bytes(), -zlib.MAX_WBITS)
        assert read_data_set(out.path.read_bytes(), out.transfer_syntax).SOPInstanceUID
    finally:
        out.discard()
        out.discard()  # idempotent

"""Invariant 4 end to end: bytes go out as received when the destination accepts their
syntax; otherwise the router converts them losslessly, keeps the SOP Instance UID, and
says so (log line, metric)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from tests.integration.peers import (
    dataset_bytes,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("dcmtk")

# compressed test files of pydicom and the storescu option proposing their syntax
CASES = {
    "MR_small_RLE.dcm": "-xr",
    "SC_rgb_rle.dcm": "-xr",
    "JPEG2000.dcm": "-xw",
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",
    "MR_small_jpeg_ls_lossless.dcm": "-xt",
}
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def test_converted_for_an_uncompressed_only_destination_original_for_the_other(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = {n: Path(shutil.copy(pydicom.data.get_testdata_file(n), src / n)) for n in CASES}
    plain = start_storescp(tmp_path / "plain", "PLAIN", accept_all=False)
    full = start_storescp(tmp_path / "full", "FULL")
    # storescu re-encodes what it reads: the reference for "the same bytes" is what the
    # same storescu delivers straight to a storescp
    direct = start_storescp(tmp_path / "direct", "ROUTER")
    try:
        for name, option in CASES.items():
            assert storescu(direct.port, [files[name]], extra=[option]).returncode == 0
        router = write_config(
            tmp_path,
            {
                "plain": {"ae_title": "PLAIN", "host": "127.0.0.1", "port": plain.port},
                "full": {"ae_title": "FULL", "host": "127.0.0.1", "port": full.port},
            },
        )
        with running(router):
            for name, option in CASES.items():
                res = storescu(router.port, [files[name]], extra=[option])
                assert res.returncode == 0, (name, res.stderr)
            # two of the files share a SOP Instance UID: storescp keeps the last one
            distinct = len(
                {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files.values()}
            )
            plain.wait_files(distinct)
            full.wait_files(distinct)
            wait_for(
                lambda: (
                    router.metric(
                        "dicom_router_transcoded_instances_total", destination="plain", result="ok"
                    )
                    == len(CASES)
                ),
                30,
                "conversions counted",
            )
            assert router.metric("dicom_router_transcoded_instances_total", destination="full") == 0
        by_uid = {str(dcmread(p).SOPInstanceUID): p for p in files.values()}
        for got in plain.files():
            ds = dcmread(got)
            source = dcmread(by_uid[str(ds.SOPInstanceUID)])
            assert str(ds.file_meta.TransferSyntaxUID) in NATIVE, got.name
            assert np.array_equal(ds.pixel_array, source.pixel_array), got.name
        # accepted as received: the very same bytes as without the router
        assert [p.name for p in full.files()] == [p.name for p in direct.files()]
        for got, reference in zip(full.files(), direct.files(), strict=True):
            assert dataset_bytes(got) == dataset_bytes(reference), got.name
        events = [json.loads(line) for line in router.log().splitlines()]
        said = [e for e in events if e.get("event") == "transcoded"]
        assert len(said) == len(CASES)
        assert {e["destination"] for e in said} == {"plain"}
    finally:
        plain.stop()
        full.stop()
        direct.stop()


# storescu's option proposing each compressed syntax; a syntax without one is a syntax
# DCMTK cannot send
STORESCU_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def _compressed_test_files() -> list[Path]:
    out = []
    for name in sorted(os.listdir(TEST_FILES)):
        path = TEST_FILES / name
        if not path.is_file():  # dicomdirtests/
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # pydicom's test data has files without a file meta
            continue
        ts = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", ""))
        if ts in STORESCU_OPTION:
            out.append(path)
    return out


def _pixels(path: Path) -> Any:
    """The decoded pixels of a source, or None for one no installed decoder reads."""
    ds = dcmread(path)
    if "PixelData" not in ds:
        return None
    try:
        return ds.pixel_array
    except RuntimeError:  # pydicom: "unable to decode ... by all available plugins"
        return None


TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on some of its own test files
def test_every_compressed_test_file_dcmtk_sends_arrives_uncompressed(tmp_path: Path) -> None:
    """Every compressed file of pydicom's test data that storescu can send, through the
    router to a storescp taking only uncompressed syntaxes: same SOP Instance UID, an
    uncompressed syntax, and the source's decoded pixels."""
    plain = start_storescp(tmp_path / "plain", "PLAIN", accept_all=False, bit_preserving=False)
    sent: list[Path] = []
    refused_by_storescu: list[str] = []
    try:
        router = write_config(
            tmp_path, {"plain": {"ae_title": "PLAIN", "host": "127.0.0.1", "port": plain.port}}
        )
        with running(router):
            for path in _compressed_test_files():
                ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                res = storescu(router.port, [path], extra=["-v", STORESCU_OPTION[ts]])
                if "Received Store Response (Success)" in res.stdout + res.stderr:
                    sent.append(path)
                else:  # storescu could not send it (its own refusal): never reached us
                    refused_by_storescu.append(path.name)
            assert len(sent) >= 25, refused_by_storescu
            assert router.metric("dicom_router_received_instances_total") == len(sent)

            def ended() -> float:
                return router.metric(
                    "dicom_router_forwarded_instances_total",
                    destination="plain",
                    outcome="delivered",
                ) + router.metric(
                    "dicom_router_forwarded_instances_total",
                    destination="plain",
                    outcome="failed",
                )

            wait_for(lambda: ended() == len(sent), 60, "every delivery to end")
            delivered = router.metric(
                "dicom_router_forwarded_instances_total",
                destination="plain",
                outcome="delivered",
            )
            plain.wait_files(int(delivered))
        # what could not be converted is a dead letter that says why, never dropped
        dead = [json.loads(line) for line in router.log().splitlines() if '"dead_letter"' in line]
        assert len(dead) + delivered == len(sent)
        assert len(dead) <= 2, [d["error"] for d in dead]  # the two no decoder can read
        assert all(d["error"].startswith("PLAIN: ") or "cannot convert" in d["error"] for d in dead)
        sources: dict[str, list[Path]] = {}
        for path in sent:
            sources.setdefault(
                str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), []
            ).append(path)
        for got in plain.files():
            ds = dcmread(got)
            assert str(ds.file_meta.TransferSyntaxUID) in NATIVE, got.name
            candidates = sources[str(ds.SOPInstanceUID)]
            assert any(np.array_equal(ds.pixel_array, _pixels(p)) for p in candidates), (
                got.name,
                [p.name for p in candidates],
            )
    finally:
        plain.stop()

"""Profiles end to end: storescu -> the router process -> two storescp destinations, one
plain and one de-identifying; the output checked by dciodvfy and stored into a real Orthanc.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.forward.stow.orthanc_server import Orthanc, start_orthanc, stop_orthanc
from tests.integration.peers import (
    dataset_bytes,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)
from tests.profiles.helpers import IDENTIFYING, ct_instance, new_uid, part10

pytestmark = pytest.mark.usefixtures("dcmtk")

CT = "1.2.840.10008.5.1.4.1.1.2"
KEY = b"an end-to-end test key, 32 bytes"
PRIVATE_VALUE = "Smithson private copy"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), users=None)
    yield server
    stop_orthanc(server)


def _reference(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = uid
    item.add_new(0x00091010, "LO", "PRIVCREATOR")
    item.add_new(0x00091002, "LO", PRIVATE_VALUE)  # a private value inside a sequence
    return item


def build_study(directory: Path) -> tuple[list[Path], Path, set[str]]:
    """Two series of one study (the first with a large instance that the router spools to
    a file), references between instances and from the second series to the first; plus
    one instance marked BurnedInAnnotation YES. Returns (files, burned-in file, every
    original UID)."""
    directory.mkdir()
    study, frame = new_uid(), new_uid()
    series = [new_uid(), new_uid()]
    first = [new_uid() for _ in range(3)]
    second = [new_uid() for _ in range(2)]
    files: list[Path] = []
    for number, (s, uids) in enumerate(zip(series, (first, second), strict=True), 1):
        for i, uid in enumerate(uids):
            rows = 300 if (number, i) == (1, 0) else 4
            pixels = (bytes(range(256)) * 2400)[: rows * 2000] if rows == 300 else b"\x07\x01" * 8
            ds = ct_instance(study, s, frame, uid, pixels, rows=rows)
            ds.SeriesNumber = number
            ds.InstanceNumber = i + 1
            if i:
                ds.ReferencedImageSequence = Sequence([_reference(uids[i - 1])])
            if number == 2:
                ds.SourceImageSequence = Sequence([_reference(first[i])])
            files.append(part10(ds, directory / f"{number}-{i}.dcm"))
    burned = ct_instance(study, series[1], frame, new_uid(), b"\x01\x02" * 8)
    burned.BurnedInAnnotation = "YES"
    burned_path = part10(burned, directory / "burned.dcm")
    originals = {study, frame, *series, *first, *second, str(burned.SOPInstanceUID)}
    return files, burned_path, originals


def iod_errors(dciodvfy: str, path: Path) -> set[str]:
    """dciodvfy's errors, values blanked (they change with de-identification), without
    those of the Clinical Trial Subject module: the profile's ``set`` adds attributes of
    that module on purpose and not all of it (docs/deidentification.md)."""
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return {
        re.sub(r"<[^>]*>", "<>", line)
        for line in lines
        if "Error" in line and "Module=<ClinicalTrialSubject>" not in line
    }


def pixel_element(data: bytes) -> bytes:
    """The pixel data element as encoded (the last element of these data sets)."""
    import io

    fp = io.BytesIO(data)
    pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    return data[fp.tell() :]


def test_a_study_goes_as_received_to_one_destination_and_deidentified_to_the_other(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    files, burned, originals = build_study(tmp_path / "src")
    (tmp_path / "research.key").write_bytes(KEY)
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    research = start_storescp(tmp_path / "research", "RESEARCH")
    try:
        router = write_config(
            tmp_path,
            {
                "plain": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                "research": {
                    "ae_title": "RESEARCH",
                    "host": "127.0.0.1",
                    "port": research.port,
                    "profile": "research",
                },
            },
            profiles={
                "research": {
                    "deidentify": {"secret_file": "research.key"},  # relative to the config
                    "set": {"ClinicalTrialSiteID": "SITE-A"},
                }
            },
        )
        with running(router):
            res = storescu(router.port, [*files, burned])
            assert res.returncode == 0, res.stderr
            plain_got = pacs.wait_files(len(files) + 1)
            research_got = research.wait_files(len(files))
            wait_for(
                lambda: (
                    router.metric(
                        "dicom_router_forwarded_instances_total",
                        destination="research",
                        outcome="failed",
                    )
                    == 1
                ),
                30,
                "the burned-in instance to be a dead letter",
            )
            assert router.terminate() == 0
        log = [json.loads(line) for line in router.log().splitlines() if line.startswith("{")]
        dead = [e for e in log if e.get("event") == "dead_letter"]
        assert len(dead) == 1 and dead[0]["destination"] == "research"
        assert "BurnedInAnnotation is YES" in dead[0]["error"]

        # the plain destination: every data set byte for byte, the burned-in one too
        sent = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in [*files, burned]}
        got = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in plain_got}
        assert got.keys() == sent.keys()
        for uid, path in sent.items():
            assert dataset_bytes(got[uid]) == dataset_bytes(path), uid

        # the de-identified destination
        received = [pydicom.dcmread(p) for p in research_got]
        new_uids = {str(ds.SOPInstanceUID) for ds in received}
        assert len(new_uids) == len(files)
        for path in research_got:
            raw = path.read_bytes()
            for value in (*IDENTIFYING, PRIVATE_VALUE, "PRIVCREATOR", *originals):
                assert value.encode() not in raw, (path.name, value)
        assert len({str(ds.StudyInstanceUID) for ds in received}) == 1
        assert len({str(ds.SeriesInstanceUID) for ds in received}) == 2
        assert len({str(ds.FrameOfReferenceUID) for ds in received}) == 1
        references = [
            str(item.ReferencedSOPInstanceUID)
            for ds in received
            for name in ("ReferencedImageSequence", "SourceImageSequence")
            for item in ds.get(name, [])
        ]
        assert len(references) == 5 and set(references) <= new_uids
        assert all(ds.PatientIdentityRemoved == "YES" for ds in received)
        assert all(ds.ClinicalTrialSiteID == "SITE-A" for ds in received)
        assert len({str(ds.PatientID) for ds in received}) == 1
        by_number = {
            (int(ds.SeriesNumber), int(ds.InstanceNumber)): p
            for ds, p in zip(received, research_got, strict=True)
        }
        for path in files:
            src = pydicom.dcmread(path)
            out = by_number[(int(src.SeriesNumber), int(src.InstanceNumber))]
            assert pixel_element(dataset_bytes(out)) == pixel_element(dataset_bytes(path))

        # valid: no IOD error the original had not, and a real archive stores it
        dciodvfy = shutil.which("dciodvfy")
        assert dciodvfy, "dciodvfy is not installed: run `make test`"
        for path in files:
            src = pydicom.dcmread(path)
            out = by_number[(int(src.SeriesNumber), int(src.InstanceNumber))]
            before, after = iod_errors(dciodvfy, path), iod_errors(dciodvfy, out)
            assert after <= before, (out.name, sorted(after - before))
            stored = orthanc.post_instance(out.read_bytes())
            tags = orthanc.get_json(f"/instances/{stored}/simplified-tags")
            assert isinstance(tags, dict)
            assert tags["SOPInstanceUID"] in new_uids
            assert tags["PatientID"].startswith("ANON")

        # the same instance again after a restart: the same new UIDs
        first_uid = {
            (int(ds.SeriesNumber), int(ds.InstanceNumber)): str(ds.SOPInstanceUID)
            for ds in received
        }
        for p in research.files():
            p.unlink()
        with running(router):
            res = storescu(router.port, [files[1]])
            assert res.returncode == 0, res.stderr
            (again,) = research.wait_files(1)
            assert router.terminate() == 0
        again_ds = pydicom.dcmread(again)
        assert str(again_ds.SOPInstanceUID) == first_uid[(1, 2)]
        assert str(again_ds.StudyInstanceUID) == str(received[0].StudyInstanceUID)
    finally:
        pacs.stop()
        research.stop()

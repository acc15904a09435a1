"""pynetdicom as sender and destination, and a rule set that uses every operator: each
instance arrives at exactly the destinations an independent oracle computes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt

from router.samples import make_dataset
from tests.integration.peers import running, start_storescp, wait_for, write_config
from tests.ports import bound_port

pytestmark = pytest.mark.usefixtures("dcmtk")


class PynetdicomSCP:
    """A destination: pynetdicom's AE storing the raw data set bytes it receives."""

    def __init__(self, ae_title: str) -> None:
        self.port = 0  # bound in __enter__
        self.ae_title = ae_title
        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        for sop in (CTImageStorage, MRImageStorage):
            self.ae.add_supported_context(sop, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])
        self.ae.add_supported_context("1.2.840.10008.1.1")

    def _store(self, event: Any) -> int:
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = bytes(
                event.request.DataSet.getvalue()
            )
        return 0

    @staticmethod
    def _nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> PynetdicomSCP:
        self.server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._nodelay)],
        )
        self.port = bound_port(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def send_with_pynetdicom(port: int, datasets: list[Dataset], calling_ae: str) -> list[int]:
    ae = AE(ae_title=calling_ae)
    for sop in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


RULES: list[dict[str, Any]] = [
    {"name": "qa-stop", "match": {"PatientID": {"glob": "QA*"}}, "stop": True},
    {
        "name": "chest-regex",
        "match": {"BodyPartExamined": {"regex": "(?i)chest|thorax"}},
        "forward": ["ai"],
    },
    {"name": "brain-glob", "match": {"StudyDescription": {"glob": "*brain?"}}, "forward": ["ai"]},
    {
        "name": "accession-present",
        "match": {"AccessionNumber": {"present": True}},
        "forward": ["archive"],
    },
    {
        "name": "instance-range",
        "match": {"InstanceNumber": {"ge": 5, "lt": 8}},
        "forward": ["archive"],
    },
    {"name": "not-ct-by-tag", "match": {"(0008,0060)": {"not": "CT"}}, "forward": ["pacs"]},
    {"name": "mr-or-us-list", "match": {"Modality": ["MR", "US"]}, "forward": ["ai"]},
    {
        "name": "combinators",
        "match": {
            "any": [
                {"calling_ae": "CT_2"},
                {"all": [{"SOPClassUID": "CT Image Storage"}, {"not": {"called_ae": "NOBODY"}}]},
            ]
        },
        "forward": ["pacs"],
    },
]


def oracle(ds: Dataset, calling_ae: str) -> list[str]:
    """The expected destinations, computed independently of the rule engine."""
    if str(ds.get("PatientID", "")).startswith("QA"):
        return []
    out: list[str] = []

    def add(*names: str) -> None:
        out.extend(n for n in names if n not in out)

    part = str(ds.get("BodyPartExamined", "")).lower()
    if "chest" in part or "thorax" in part:
        add("ai")
    desc = str(ds.get("StudyDescription", ""))
    if len(desc) >= 6 and desc[-6:-1] == "brain":  # *brain?
        add("ai")
    if str(ds.get("AccessionNumber", "")).strip():
        add("archive")
    if 5 <= int(ds.InstanceNumber) < 8:
        add("archive")
    if ds.Modality != "CT":
        add("pacs")
    if ds.Modality in ("MR", "US"):
        add("ai")
    if calling_ae == "CT_2" or ds.SOPClassUID == CTImageStorage:
        add("pacs")
    return out


def _cases() -> list[tuple[Dataset, str]]:
    cases: list[tuple[Dataset, str]] = []
    variants: list[dict[str, Any]] = [
        {"BodyPartExamined": "CHEST"},
        {"BodyPartExamined": "THORAX", "AccessionNumber": "A1"},
        {"BodyPartExamined": "HEAD", "StudyDescription": "mri brain2"},
        {"BodyPartExamined": "HEAD", "StudyDescription": "brain"},
        {"PatientID": "QA123", "BodyPartExamined": "CHEST"},
        {"AccessionNumber": ""},
        {"Modality": "MR", "sop_class_uid": MRImageStorage},
        {"Modality": "OT"},
    ]
    for i, v in enumerate(variants * 2):
        v = dict(v)
        sop = v.pop("sop_class_uid", CTImageStorage)
        ds = make_dataset(4_000, sop_class_uid=sop, InstanceNumber=i, **v)
        cases.append((ds, "CT_2" if i % 3 == 0 else "CT_1"))
    return cases


@pytest.fixture
def scps() -> Iterator[tuple[PynetdicomSCP, PynetdicomSCP]]:
    with PynetdicomSCP("PACS") as pacs, PynetdicomSCP("ARCHIVE") as archive:
        yield pacs, archive


def test_every_operator_routes_to_exactly_the_right_destinations(
    tmp_path: Path, scps: tuple[PynetdicomSCP, PynetdicomSCP]
) -> None:
    pacs, archive = scps
    ai = start_storescp(tmp_path / "ai", "AI")
    try:
        router = write_config(
            tmp_path,
            {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port},
                "ai": {"ae_title": "AI", "host": "127.0.0.1", "port": ai.port},
            },
            RULES,
        )
        cases = _cases()
        expected: dict[str, set[str]] = {"pacs": set(), "archive": set(), "ai": set()}
        for ds, calling in cases:
            for dest in oracle(ds, calling):
                expected[dest].add(str(ds.SOPInstanceUID))
        assert all(expected.values()), "the cases must exercise every destination"
        with running(router):
            for calling in ("CT_1", "CT_2"):
                batch = [ds for ds, c in cases if c == calling]
                assert send_with_pynetdicom(router.port, batch, calling) == [0] * len(batch)

            def uid_of(p: Path) -> str:
                return str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)

            wait_for(lambda: set(pacs.received) == expected["pacs"], 30, "pacs deliveries")
            wait_for(lambda: set(archive.received) == expected["archive"], 30, "archive")
            wait_for(lambda: {uid_of(p) for p in ai.complete_files()} == expected["ai"], 30, "ai")
            unrouted = sum(1 for ds, c in cases if not oracle(ds, c))
            assert router.metric("dicom_router_unrouted_instances_total") == unrouted
        # the bytes a pynetdicom destination got are the bytes pydicom encoded
        by_uid = {str(ds.SOPInstanceUID): ds for ds, _ in cases}
        for uid, raw in pacs.received.items():
            assert dcmread_raw(raw) == by_uid[uid].PixelData
    finally:
        ai.stop()


def dcmread_raw(raw: bytes) -> bytes:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    ds = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    return bytes(ds.PixelData)

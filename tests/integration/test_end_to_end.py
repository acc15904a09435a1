"""The product, end to end: real senders -> the router process -> real destinations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from router.samples import write_dataset, write_many
from tests.integration.peers import (
    dataset_bytes,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("dcmtk")

# storescu's option that proposes a transfer syntax first
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def _by_uid(paths: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def test_storescu_to_router_to_storescp_byte_identical(tmp_path: Path) -> None:
    src = write_many(tmp_path / "src", 20, size=30_000)
    src += [write_dataset(tmp_path / "src" / "big.dcm", 700_000)]  # spilled to a file
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    try:
        router = write_config(
            tmp_path, {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}}
        )
        with running(router):
            res = storescu(router.port, src)
            assert res.returncode == 0, res.stderr
            got = pacs.wait_files(len(src))
            assert router.metric("dicom_router_received_instances_total") == len(src)
            wait_for(
                lambda: (
                    router.metric(
                        "dicom_router_forwarded_instances_total",
                        destination="pacs",
                        outcome="delivered",
                    )
                    == len(src)
                ),
                30,
                "delivered counter",
            )
            assert router.terminate() == 0
        sent, arrived = _by_uid(src), _by_uid(got)
        assert sent.keys() == arrived.keys()
        for uid, path in sent.items():
            assert dataset_bytes(arrived[uid]) == dataset_bytes(path), uid
        # delivered everywhere: nothing left in the spool
        assert not [p for p in (router.storage / "spool").rglob("*.dcm")]
    finally:
        pacs.stop()


def test_destination_outage_holds_then_delivers(tmp_path: Path) -> None:
    src = write_many(tmp_path / "src", 10, size=10_000)
    dest_port_holder = start_storescp(tmp_path / "probe", "X")
    port = dest_port_holder.port
    dest_port_holder.stop()  # nothing listens there now: the destination is down
    router = write_config(
        tmp_path, {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port}}
    )
    with running(router):
        res = storescu(router.port, src)
        assert res.returncode == 0, res.stderr  # acknowledged although the PACS is down
        wait_for(
            lambda: router.metric("dicom_router_forward_retries_total", destination="pacs") > 0,
            30,
            "a retry to be scheduled",
        )
        pacs = start_storescp(tmp_path / "pacs", "PACS", port=port)
        try:
            got = pacs.wait_files(len(src), timeout=60)
            assert _by_uid(got).keys() == _by_uid(src).keys()
        finally:
            pacs.stop()
    # Within two backoff periods of the destination's return: each instance went out at
    # most two attempts after its last failed one (the breaker spends no attempts
    # while the destination is down).
    failed: dict[str, int] = {}
    delivered: dict[str, int] = {}
    for line in router.log().splitlines():
        event = json.loads(line)
        if event.get("event") == "retry_scheduled":
            failed[event["instance"]] = max(failed.get(event["instance"], 0), event["attempt"])
        elif event.get("event") == "forwarded":
            delivered[event["instance"]] = event["attempt"]
    assert len(delivered) == len(src)
    for instance, attempt in delivered.items():
        assert attempt <= failed.get(instance, 0) + 2, (instance, attempt, failed.get(instance))


def test_rules_route_each_instance_to_exactly_its_destinations(tmp_path: Path) -> None:
    chest = [
        write_dataset(tmp_path / "src" / f"chest{i}.dcm", 8_000, BodyPartExamined="CHEST")
        for i in range(3)
    ]
    head = [
        write_dataset(tmp_path / "src" / f"head{i}.dcm", 8_000, BodyPartExamined="HEAD")
        for i in range(3)
    ]
    mr = [
        write_dataset(
            tmp_path / "src" / f"mr{i}.dcm",
            8_000,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            Modality="MR",
        )
        for i in range(2)
    ]
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    ai = start_storescp(tmp_path / "ai", "AI")
    try:
        rules = [
            {"name": "mr-nowhere", "match": {"SOPClassUID": "MRImageStorage"}, "stop": True},
            {
                "name": "chest-ai",
                "match": {"BodyPartExamined": {"regex": "(?i)chest|thorax"}},
                "forward": ["ai"],
            },
            {"name": "ct-pacs", "match": {"SOPClassUID": "CT Image Storage"}, "forward": ["pacs"]},
        ]
        router = write_config(
            tmp_path,
            {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                "ai": {"ae_title": "AI", "host": "127.0.0.1", "port": ai.port},
            },
            rules,
        )
        with running(router):
            res = storescu(router.port, chest + head + mr)
            assert res.returncode == 0, res.stderr
            got_pacs = pacs.wait_files(len(chest + head))
            got_ai = ai.wait_files(len(chest))
            wait_for(
                lambda: router.metric("dicom_router_unrouted_instances_total") == len(mr),
                10,
                "unrouted count",
            )
            assert router.metric("dicom_router_rule_matches_total", rule="chest-ai") == 3
        assert _by_uid(got_pacs).keys() == _by_uid(chest + head).keys()
        assert _by_uid(got_ai).keys() == _by_uid(chest).keys()
    finally:
        pacs.stop()
        ai.stop()


def test_pydicom_test_files_forwarded_unchanged(tmp_path: Path) -> None:
    """A real-world mix: pydicom's own test files across SOP classes and syntaxes
    (two of them share a SOP Instance UID: each receipt is forwarded)."""
    import pydicom.data

    src_dir = tmp_path / "src"
    src_dir.mkdir()
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "image_dfl.dcm",
    ]
    files = [Path(shutil.copy(pydicom.data.get_testdata_file(n), src_dir / n)) for n in names]
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    # the reference: the same storescu straight to a storescp. storescu re-encodes
    # what it reads, so "unchanged" means: what arrives through the router is what
    # arrives without it.
    direct = start_storescp(tmp_path / "direct", "ROUTER")
    try:
        for f in files:
            ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            res = storescu(direct.port, [f], extra=[PROPOSE.get(ts, "-xe")])
            assert res.returncode == 0, res.stderr
        router = write_config(
            tmp_path, {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}}
        )
        with running(router):
            for f in files:  # each in its own syntax: storescu converts nothing
                ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                res = storescu(router.port, [f], extra=[PROPOSE.get(ts, "-xe")])
                assert res.returncode == 0, res.stderr
            received = router.metric("dicom_router_received_instances_total")
            assert received == len(files)
            wait_for(
                lambda: (
                    router.metric(
                        "dicom_router_forwarded_instances_total",
                        destination="pacs",
                        outcome="delivered",
                    )
                    == len(files)
                ),
                60,
                "every receipt delivered",
            )
        # storescp names files by SOP Instance UID: a repeated UID overwrites its file
        # (the same way on both paths: the same order of receipt)
        assert [p.name for p in pacs.files()] == [p.name for p in direct.files()]
        for via_router, reference in zip(pacs.files(), direct.files(), strict=True):
            assert dataset_bytes(via_router) == dataset_bytes(reference), reference.name
    finally:
        pacs.stop()
        direct.stop()

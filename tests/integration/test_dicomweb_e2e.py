"""DICOMweb destinations end to end: storescu -> the router process -> a real Orthanc
with its DICOMweb plugin (STOW-RS), started by the tests (tests/forward/stow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from router.samples import make_dataset, write_dataset
from router.store.spool import part10_header
from tests.forward.stow.conftest import orthanc, orthanc_auth  # noqa: F401  (fixtures)
from tests.forward.stow.orthanc_server import (
    PASSWORD,
    USER,
    Orthanc,
    start_orthanc,
    stop_orthanc,
)
from tests.forward.stow.test_stow_orthanc import data_set_offset, write_large_instance
from tests.integration.peers import (
    RouterProcess,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)
from tests.integration.test_end_to_end import PROPOSE
from tests.ports import reserve_port, unreserved_port

pytestmark = pytest.mark.usefixtures("dcmtk")

# pydicom's test files in several transfer syntaxes (distinct SOP Instance UIDs)
SYNTAX_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "rtdose.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_rle.dcm",  # RLE lossless
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
]


def dicomweb(url: str, **more: Any) -> dict[str, Any]:
    return {"dicomweb": {"url": url, "timeout": "60s", **more}}


def delivered(router: RouterProcess, name: str = "web") -> float:
    return router.metric(
        "dicom_router_forwarded_instances_total", destination=name, outcome="delivered"
    )


def dead_letters(router: RouterProcess, name: str = "web") -> float:
    return router.metric(
        "dicom_router_forwarded_instances_total", destination=name, outcome="failed"
    )


def queue_cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "queue", *args, "--config", str(router.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def failed_rows(router: RouterProcess) -> list[dict[str, Any]]:
    res = queue_cli(router, "list", "--state", "failed", "--json")
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)
    return rows


def send_to(port: int, files: list[Path]) -> None:
    """Each file with storescu, proposing its own transfer syntax first."""
    for f in files:
        ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        res = storescu(port, [f], extra=[PROPOSE.get(ts, "-xe")])
        assert res.returncode == 0, res.stderr


def send(router: RouterProcess, files: list[Path]) -> None:
    send_to(router.port, files)


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_test_files_arrive_as_orthanc_stores_them_given_directly(
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = [
        Path(shutil.copy(pydicom.data.get_testdata_file(n), src / n))  # type: ignore[arg-type]
        for n in SYNTAX_FILES
    ]
    # storescu re-encodes what it reads: the reference is what it sends (caught by a
    # bit-preserving storescp) given to Orthanc directly
    capture = start_storescp(tmp_path / "capture", "ROUTER")
    try:
        send_to(capture.port, files)
        sent = capture.wait_files(len(files))
    finally:
        capture.stop()
    orthanc.clear()
    reference: dict[str, bytes] = {}
    for f in sent:
        direct_id = orthanc.post_instance(f.read_bytes())
        stored = orthanc.instance_file(direct_id)
        reference[uid_of(f)] = stored[data_set_offset(stored) :]
        orthanc.delete_instance(direct_id)
    router = write_config(tmp_path, {"web": dicomweb(orthanc.dicomweb)})
    with running(router):
        send(router, files)
        wait_for(lambda: delivered(router) == len(files), 60, "every instance delivered")
        assert router.metric("dicom_router_transcoded_instances_total") == 0
        assert router.terminate() == 0
    for f in files:
        found = orthanc.find_instance(uid_of(f))
        assert found is not None, f.name
        stowed = orthanc.instance_file(found)
        assert stowed[data_set_offset(stowed) :] == reference[uid_of(f)], f.name


def test_orthanc_down_then_up_holds_back_and_then_delivers(tmp_path: Path) -> None:
    port = unreserved_port()
    files = [write_dataset(tmp_path / "src" / f"{i}.dcm", 5_000) for i in range(6)]
    router = write_config(tmp_path, {"web": dicomweb(f"http://127.0.0.1:{port}/dicom-web/")})
    server: Orthanc | None = None
    try:
        with running(router):
            send(router, files)  # acknowledged with the destination down
            wait_for(
                lambda: router.metric("dicom_router_forward_retries_total", destination="web") >= 3,
                60,
                "retries while Orthanc is down",
            )
            assert router.metric("dicom_router_destination_up", destination="web") == 0.0
            # the breaker opened after three failures: the router probes, it does not send
            wait_for(lambda: '"event":"probe_failed"' in router.log(), 60, "a failed probe")
            assert delivered(router) == 0
            status = queue_cli(router, "status")
            assert status.returncode == 0 and "web" in status.stdout, status.stderr
            server = start_orthanc(tmp_path / "orthanc", users=None, port=port)
            wait_for(lambda: delivered(router) == len(files), 60, "delivery once Orthanc is up")
            assert router.metric("dicom_router_destination_up", destination="web") == 1.0
            assert dead_letters(router) == 0
        for f in files:
            assert server.find_instance(uid_of(f)) is not None
    finally:
        if server is not None:
            stop_orthanc(server)


def test_basic_auth_good_credentials_deliver_a_wrong_password_dead_letters(
    orthanc_auth: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "good.pw").write_text(PASSWORD + "\n")
    (tmp_path / "bad.pw").write_text("not-" + PASSWORD + "\n")
    few_attempts = {"max_attempts": 2, "initial_backoff": "100ms", "max_backoff": "200ms"}
    destinations = {
        "good": {
            **dicomweb(orthanc_auth.dicomweb, auth={"username": USER, "password_file": "good.pw"}),
        },
        "bad": {
            **dicomweb(orthanc_auth.dicomweb, auth={"username": USER, "password_file": "bad.pw"}),
            "retry": few_attempts,
            "circuit_breaker": {"failures": 1000},
        },
    }
    good_files = [write_dataset(tmp_path / "src" / f"g{i}.dcm", 4_000) for i in range(3)]
    bad_file = write_dataset(tmp_path / "src" / "b.dcm", 4_000)
    rules = [
        {"name": "good", "match": {"PatientID": uid_ids(good_files)}, "forward": ["good"]},
        {"name": "bad", "match": {"PatientID": uid_ids([bad_file])}, "forward": ["bad"]},
    ]
    router = write_config(tmp_path, destinations, rules=rules)
    orthanc_auth.clear()
    with running(router):
        send(router, [*good_files, bad_file])
        wait_for(lambda: delivered(router, "good") == 3, 60, "deliveries with good credentials")
        wait_for(lambda: dead_letters(router, "bad") == 1, 60, "the wrong password dead-lettered")
        assert router.metric("dicom_router_forward_retries_total", destination="bad") == 1
        (row,) = failed_rows(router)
        assert row["destination"] == "bad"
        assert "HTTP 401" in row["last_error"], row
        assert "attempts" in row["last_error"], row
    for f in good_files:
        assert orthanc_auth.find_instance(uid_of(f)) is not None
    assert orthanc_auth.find_instance(uid_of(bad_file)) is None


def uid_ids(files: list[Path]) -> list[str]:
    return [str(dcmread(f, stop_before_pixels=True).PatientID) for f in files]


def test_one_refused_instance_among_good_ones_is_a_dead_letter_with_orthancs_reason(
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    study = pydicom.uid.generate_uid()
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(4):
        ds = make_dataset(4_000, StudyInstanceUID=study)
        if i == 2:
            del ds.SeriesInstanceUID  # Orthanc cannot index an instance without its series
        path = src / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    bad = files[2]
    router = write_config(tmp_path, {"web": dicomweb(orthanc.dicomweb)})
    orthanc.clear()
    with running(router):
        res = storescu(router.port, files)  # one association: one batch, one study
        assert res.returncode == 0, res.stderr
        wait_for(lambda: delivered(router) == 3, 60, "the good ones delivered")
        wait_for(lambda: dead_letters(router) == 1, 60, "the bad one dead-lettered")
        (row,) = failed_rows(router)
        assert row["sop_instance_uid"] == uid_of(bad)
        assert "FailureReason 0xC000" in row["last_error"], row
        listing = queue_cli(router, "list", "--state", "failed")
        assert listing.returncode == 0, listing.stderr
        assert row["instance_id"] in listing.stdout
        assert "FailureReason 0xC000" in listing.stdout
    for f in files:
        assert (orthanc.find_instance(uid_of(f)) is None) == (f == bad), f.name


def test_echo_on_a_dicomweb_destination(orthanc: Orthanc, tmp_path: Path) -> None:  # noqa: F811
    router = write_config(
        tmp_path,
        {"web": dicomweb(orthanc.dicomweb), "gone": dicomweb(f"http://127.0.0.1:{reserve_port()}")},
    )
    ok = subprocess.run(
        [sys.executable, "-m", "router", "echo", "web", "--config", str(router.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"web ({orthanc.dicomweb}): HTTP 200, round trip" in ok.stdout
    down = subprocess.run(
        [sys.executable, "-m", "router", "echo", "gone", "--config", str(router.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1
    assert "failed: cannot connect" in down.stderr, down.stderr


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_1gb_instance_is_streamed_through_in_bounded_memory(
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    size = 1024**3
    free = shutil.disk_usage(tmp_path).free
    if free < 5 * size:
        pytest.skip(f"needs 5 GB free in {tmp_path} (the file, the spool, Orthanc): {free} free")
    path = tmp_path / "large.dcm"
    uid = write_large_instance(path, size)
    router = write_config(
        tmp_path,
        {"web": {"dicomweb": {"url": orthanc.dicomweb, "timeout": "10m"}}},
    )
    orthanc.clear()
    with running(router):
        assert router.proc is not None
        res = storescu(router.port, [path], extra=["-xe"], timeout=1200)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: delivered(router) == 1, 1200, "the large instance delivered", step=0.5)
        peak = _peak_rss_kib(router.proc.pid) * 1024
        print(f"router peak RSS {peak / 1024**2:.0f} MiB")  # shown by pytest -rP
        assert router.terminate() == 0
    stored = orthanc.find_instance(uid)
    assert stored is not None
    info = orthanc.get_json(f"/instances/{stored}")
    assert isinstance(info, dict)
    # Orthanc keeps the Part-10 file as sent: the router's file meta and the data set
    with path.open("rb") as f:
        offset = data_set_offset(f.read(64 * 1024))
    header = part10_header(SecondaryCaptureImageStorage, uid, ExplicitVRLittleEndian)
    assert info["FileSize"] == len(header) + path.stat().st_size - offset
    assert peak < 150 * 1024**2, f"peak RSS {peak / 1024**2:.0f} MiB"
    orthanc.clear()
    os.unlink(path)

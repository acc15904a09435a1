"""Invariant 1 and 2 under kill -9: every acknowledged instance reaches every matched
destination after a restart, and nothing half-received is ever forwarded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from router.samples import write_many
from router.store.queue import count_by_sql
from tests.integration.peers import (
    NODELAY_ENV,
    dataset_bytes,
    running,
    start_storescp,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("dcmtk")


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _acknowledged(output: str, files: list[Path]) -> list[Path]:
    """storescu -v sends in order and reports each response: the first n were acked."""
    n = output.count("Received Store Response (Success)")
    return files[:n]


@pytest.mark.parametrize("size", [12_000, 400_000], ids=["inline", "spilled"])
def test_kill9_mid_stream_loses_no_acknowledged_instance(tmp_path: Path, size: int) -> None:
    files = write_many(tmp_path / "src", 60, size=size)
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    ai = start_storescp(tmp_path / "ai", "AI")
    acked: list[Path] = []
    try:
        router = write_config(
            tmp_path,
            {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                "ai": {"ae_title": "AI", "host": "127.0.0.1", "port": ai.port},
            },
        )
        for round_, kill_after in enumerate((7, 3, 12)):  # receipts before the kill
            batch = files[round_ * 20 : (round_ + 1) * 20]
            with running(router):
                sender = subprocess.Popen(
                    [
                        "storescu",
                        "-v",
                        "-aet",
                        "CT_1",
                        "-aec",
                        "ROUTER",
                        "--no-halt",
                        "127.0.0.1",
                        str(router.port),
                        *map(str, batch),
                    ],
                    env=NODELAY_ENV,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                wait_for(
                    lambda k=kill_after, s=sender: (
                        router.metric("dicom_router_received_instances_total") >= k
                        or s.poll() is not None
                    ),
                    60,
                    "instances to arrive",
                )
                router.kill9()  # mid-stream: the sender and the forwarders are busy
                out, _ = sender.communicate(timeout=60)
                acked += _acknowledged(out, batch)
        assert len(acked) > 5, "the router was killed before acknowledging anything"
        with running(router):
            want = {_uid(p) for p in acked}
            for dest in (pacs, ai):
                wait_for(
                    lambda d=dest: want <= {_uid(p) for p in d.complete_files()},
                    60,
                    f"every acknowledged instance at {dest.ae_title}",
                )
            wait_for(lambda: count_by_sql(router.storage)[2] == 0, 30, "every delivery to end")
            # a graceful stop: the file of the last instance is unlinked just after the
            # commit that ended it (a kill -9 in between leaves it to the next recovery)
            assert router.terminate() == 0
        # nothing half-received was forwarded: every file that arrived is whole
        by_uid = {_uid(p): p for p in files}
        for dest in (pacs, ai):
            for p in dest.files():
                assert dataset_bytes(p) == dataset_bytes(by_uid[_uid(p)]), p.name
        # and nothing was left behind: no temp file, no spool file
        assert not list((router.storage / "tmp").iterdir())
        assert not list((router.storage / "spool").rglob("*.dcm"))
    finally:
        pacs.stop()
        ai.stop()


def test_kill9_while_destination_down_then_delivered(tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 15, size=9_000)
    holder = start_storescp(tmp_path / "x", "X")
    port = holder.port
    holder.stop()
    router = write_config(
        tmp_path, {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port}}
    )
    with running(router):
        res = subprocess.run(
            ["storescu", "-aec", "ROUTER", "127.0.0.1", str(router.port), *map(str, files)],
            env=NODELAY_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        router.kill9()
    _, _, active = count_by_sql(router.storage)
    assert active == len(files)
    pacs = start_storescp(tmp_path / "pacs", "PACS", port=port)
    try:
        with running(router):
            pacs.wait_files(len(files))
        assert {_uid(p) for p in pacs.files()} == {_uid(p) for p in files}
    finally:
        pacs.stop()

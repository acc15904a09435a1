"""A700 when storage is low or the queue is full; graceful SIGTERM under load."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from router.samples import write_many
from router.store.queue import count_by_sql
from tests.integration.peers import (
    NODELAY_ENV,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("dcmtk")


def _down_port(tmp_path: Path) -> int:
    holder = start_storescp(tmp_path / "x", "X")
    holder.stop()
    return holder.port


def test_low_storage_answers_a700_and_keeps_nothing(tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 3, size=300_000)
    router = write_config(
        tmp_path,
        {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": _down_port(tmp_path)}},
        storage={"min_free_bytes": "1000000GiB"},
    )
    with running(router, ready=False):
        status, body = router.http("/readyz")
        assert status == 503 and "min_free_bytes" in body
        res = storescu(router.port, files, extra=["-v"])
        assert (res.stdout + res.stderr).count("Refused: OutOfResources") == 3, res.stderr
        assert router.metric("dicom_router_store_responses_total", status="a700") == 3
        assert router.metric("dicom_router_received_instances_total") == 0
    assert count_by_sql(router.storage)[2] == 0
    assert not list((router.storage / "tmp").iterdir())
    assert not list((router.storage / "spool").rglob("*.dcm"))


def test_full_queue_answers_a700(tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 6, size=5_000)
    router = write_config(
        tmp_path,
        {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": _down_port(tmp_path)}},
        storage={"max_queue_instances": 4},
    )
    with running(router):
        storescu(router.port, files)
        assert router.metric("dicom_router_store_responses_total", status="0000") == 4
        assert router.metric("dicom_router_store_responses_total", status="a700") == 2
    assert count_by_sql(router.storage)[2] == 4


def test_sigterm_under_load_finishes_in_flight_and_loses_nothing(tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 150, size=40_000)
    router = write_config(
        tmp_path,
        {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": _down_port(tmp_path)}},
    )
    with running(router):
        sender = subprocess.Popen(
            [
                "storescu",
                "-v",
                "-aec",
                "ROUTER",
                "--no-halt",
                "127.0.0.1",
                str(router.port),
                *map(str, files),
            ],
            env=NODELAY_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(
            lambda: (
                router.metric("dicom_router_received_instances_total") >= 20
                or sender.poll() is not None
            ),
            60,
            "the sender to be under way",
        )
        assert router.terminate(timeout=60) == 0  # graceful: exit code 0
        out, _ = sender.communicate(timeout=60)
    acked = out.count("Received Store Response (Success)")
    assert acked >= 20
    _, _, active = count_by_sql(router.storage)
    assert active == acked  # every acknowledged instance is queued, nothing else is
    assert not list((router.storage / "tmp").iterdir())
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:acked]}
    assert len(uids) == acked

"""Fault matrix, destinations that misbehave (cases 15 and 16): DCMTK storescp
refusing, aborting and sleeping, and a pynetdicom destination answering chosen statuses.
Related, already covered: tests/integration/test_end_to_end.py
(test_destination_outage_holds_then_delivers: a destination that is down)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from router.samples import write_many
from tests.faults.faultlib import dest, echo_ok, instance_count, make_router, rows, status_scp
from tests.integration.peers import (
    RouterProcess,
    running,
    start_storescp,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("dcmtk")


def _uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.mark.parametrize(
    "mode",
    [
        ["--refuse"],
        ["--abort-during"],
        ["--abort-after"],
        ["--sleep-during", "2"],
        ["--reject"],
    ],
    ids=lambda m: m[0].lstrip("-"),
)
def test_15_misbehaving_storescp_retried_kept_counted_then_delivered(
    tmp_path: Path, mode: list[str]
) -> None:
    """Case 15: while storescp refuses the association, aborts during or after the
    C-STORE, or sleeps past our dimse_timeout, the instances are retried with backoff
    (counted in forward_retries_total), kept in the queue, and delivered once a well
    behaved storescp listens on the same port. (`--reject` rejects only requestors
    without an Implementation Class UID; ours sends one, so it is served at once.)"""
    files = write_many(tmp_path / "src", 3, size=12_000)
    bad = start_storescp(tmp_path / "bad", "PACS", extra=mode)
    port = bad.port
    router = make_router(tmp_path, {"pacs": dest("PACS", port, dimse_timeout="1s")})
    try:
        with running(router):
            res = storescu(router.port, files)
            assert res.returncode == 0, res.stderr  # acknowledged whatever the destination
            if mode[0] == "--reject":
                wait_for(lambda: instance_count(router) == 0, 30, "delivery")
                assert router.metric("dicom_router_forward_retries_total", destination="pacs") == 0
                return
            wait_for(
                lambda: (
                    router.metric("dicom_router_forward_retries_total", destination="pacs") >= 2
                ),
                30,
                "retries to be scheduled",
            )
            assert instance_count(router) == 3  # kept
            assert router.metric("dicom_router_forwarded_instances_total", outcome="failed") == 0
            bad.stop()
            good = start_storescp(tmp_path / "good", "PACS", port=port)
            try:
                wait_for(lambda: _uids(good.complete_files()) == _uids(files), 60, "every instance")
                wait_for(lambda: instance_count(router) == 0, 30, "every delivery to end")
            finally:
                good.stop()
            assert (
                router.metric(
                    "dicom_router_forwarded_instances_total",
                    destination="pacs",
                    outcome="delivered",
                )
                >= 3
            )
    finally:
        bad.stop()


def _cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "queue", *args, "--config", str(router.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_16_a7xx_retried_a9xx_cxxx_0122_dead_letters_visible_and_replayable(
    tmp_path: Path,
) -> None:
    """Case 16: A700 from the destination is retried until it accepts; A900, C000 and
    0122 make a dead letter at once, with the status kept, listed by `dicom-router
    queue list --state failed` and replayed by `dicom-router queue retry`."""
    files = write_many(tmp_path / "src", 5, size=9_000)
    uid = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with status_scp(ae_title="PACS", status=0xA700) as scp:
        router = make_router(tmp_path, {"pacs": dest("PACS", scp.port)})
        with running(router):
            assert storescu(router.port, files[:2]).returncode == 0
            wait_for(lambda: scp.answered().count(0xA700) >= 4, 30, "A700 answered and retried")
            assert instance_count(router) == 2
            assert router.metric("dicom_router_forward_retries_total", destination="pacs") >= 2
            scp.status = 0x0000
            wait_for(lambda: set(uid[:2]) <= set(scp.ok_uids()), 30, "delivery after A700")
            wait_for(lambda: instance_count(router) == 0, 30, "those deliveries to end")

            for f, status in zip(files[2:], (0xA900, 0xC000, 0x0122), strict=True):
                scp.status = status
                assert storescu(router.port, [f]).returncode == 0
                wait_for(
                    lambda s=status: rows(
                        router,
                        "SELECT 1 FROM delivery WHERE state = 'failed' AND last_status = ?",
                        s,
                    ),
                    30,
                    f"a dead letter with status {status:04x}",
                )
            assert scp.answered().count(0xA900) == 1  # no retry of a permanent failure
            assert scp.answered().count(0xC000) == 1
            assert scp.answered().count(0x0122) == 1
            listed = _cli(router, "list", "--state", "failed", "--json")
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)
            assert {e["sop_instance_uid"]: e["last_status"] for e in entries} == {
                uid[2]: 0xA900,
                uid[3]: 0xC000,
                uid[4]: 0x0122,
            }
            text = _cli(router, "list", "--state", "failed")
            for code in ("a900", "c000", "0122"):
                assert code in text.stdout, text.stdout
            assert router.metric("dicom_router_forwarded_instances_total", outcome="failed") == 3
            scp.status = 0x0000
            replay = _cli(router, "retry", "--destination", "pacs")
            assert replay.returncode == 0, replay.stderr
            assert "3 dead letter(s) back to pending" in replay.stdout
            wait_for(lambda: set(uid) <= set(scp.ok_uids()), 30, "the replayed dead letters")
            wait_for(lambda: instance_count(router) == 0, 30, "every delivery to end")


def test_a_spool_file_cut_short_is_a_dead_letter_and_the_router_serves_on(
    tmp_path: Path,
) -> None:
    """A spooled data set whose file was cut under the router (a damaged disk, a
    mistaken hand) is never sent as if whole: its delivery is a dead letter naming the
    damage, the router stays up, and the other instances are delivered."""
    files = write_many(tmp_path / "src", 2, size=600_000)
    uid = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with status_scp(ae_title="PACS", status=0xA700) as scp:
        router = make_router(tmp_path, {"pacs": dest("PACS", scp.port)})
        with running(router):
            assert storescu(router.port, files).returncode == 0
            wait_for(lambda: scp.answered().count(0xA700) >= 2, 30, "both tried once")
            ((ident,),) = rows(router, "SELECT id FROM instance WHERE sop_instance_uid = ?", uid[0])
            spooled = router.storage / "spool" / ident[5:7] / f"{ident}.dcm"
            os.truncate(spooled, spooled.stat().st_size // 2)
            scp.status = 0x0000
            wait_for(lambda: uid[1] in scp.ok_uids(), 30, "the whole instance delivered")
            wait_for(
                lambda: rows(
                    router,
                    "SELECT last_error FROM delivery WHERE state = 'failed'",
                ),
                30,
                "a dead letter for the cut one",
            )
            ((error,),) = rows(router, "SELECT last_error FROM delivery WHERE state = 'failed'")
            assert "stored data damaged" in error, error
            assert uid[0] not in scp.ok_uids()
            assert router.proc is not None and router.proc.poll() is None
            assert echo_ok(router.port)

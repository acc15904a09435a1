"""Fault matrix, durability (cases 7, 8, 9, 20): storage running low during a
receipt, kill -9 just after and just before the response, SIGTERM under load. The
router runs as a real process; kills are real SIGKILLs. Related, already covered:
tests/integration/test_crash.py (kill -9 mid-stream, three times, with forwarding in
flight; kill -9 while the destination is down) and tests/integration/test_limits.py
(A700 when storage is low before a C-STORE; graceful SIGTERM with one sender)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from router.samples import write_many
from tests.faults.faultlib import (
    CT,
    RawPeer,
    dataset,
    dest,
    down_port,
    echo_ok,
    instance_count,
    make_router,
    partials,
    spool_files,
)
from tests.integration.peers import (
    NODELAY_ENV,
    dataset_bytes,
    running,
    start_storescp,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("dcmtk")

GiB = 1024**3
BIG = 3 * 1024 * 1024  # spilled to storage/tmp/<id>.part while it comes in


def test_7_storage_below_min_free_during_receipt_a700_then_recovers(tmp_path: Path) -> None:
    """Case 7: min_free_bytes sits 3 GiB below the free space; a 6 GiB ballast file on
    the same file system appears while a data set is coming in: A700, the partial is
    removed, /readyz says why, the next C-STORE is refused too; the ballast goes and the
    same association stores again, without a restart."""
    free = shutil.disk_usage(tmp_path).free
    if free < 8 * GiB:
        pytest.skip(f"needs 8 GiB free on {tmp_path} for the ballast, has {free}")
    router = make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port())},
        storage={"min_free_bytes": free - 3 * GiB},
    )
    ballast = tmp_path / "ballast"
    uid = "1.2.826.0.1.3680043.8.498.700"
    data = dataset(CT, uid, pixels=BIG)
    try:
        with running(router), RawPeer(router.port) as peer:
            peer.established()
            peer.command(CT, uid)
            peer.data(data[: BIG // 2], last=False)
            wait_for(lambda: partials(router), 10, "the partial receipt")
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, 6 * GiB)
            finally:
                os.close(fd)
            peer.data(data[BIG // 2 :])
            assert int(peer.response().get("Status")) == 0xA700
            wait_for(lambda: not partials(router), 10, "the partial to be removed")
            status, body = router.http("/readyz")
            assert status == 503 and "min_free_bytes" in body, (status, body)
            assert peer.store(CT, uid, data, mid=2)[0] == 0xA700
            ballast.unlink()
            wait_for(router.ready, 10, "/readyz to recover")
            assert peer.store(CT, uid, data, mid=3) == (0, "")
            peer.release()
            assert router.metric("dicom_router_store_responses_total", status="a700") == 2
        assert instance_count(router) == 1
        assert not partials(router)
    finally:
        ballast.unlink(missing_ok=True)


@pytest.mark.parametrize("pixels", [4_000, BIG], ids=["inline", "spilled"])
def test_8_kill9_right_after_success_delivered_after_restart(tmp_path: Path, pixels: int) -> None:
    """Case 8: SIGKILL the moment the Success is read; after a restart the instance
    reaches the destination, byte for byte."""
    port = down_port()
    router = make_router(tmp_path, {"pacs": dest("PACS", port)})
    uids = [f"1.2.826.0.1.3680043.8.498.80{i}" for i in range(3)]
    with running(router), RawPeer(router.port) as peer:
        peer.established()
        for i, uid in enumerate(uids):
            assert peer.store(CT, uid, dataset(CT, uid, pixels=pixels), mid=i + 1) == (0, "")
        router.kill9()  # right after the last Success, the association still open
    pacs = start_storescp(tmp_path / "pacs", "PACS", port=port)
    try:
        with running(router):
            pacs.wait_files(len(uids))
            # a file appears when its receipt starts: read them once every delivery has
            # ended, or a kill below could cut the last one mid-write
            wait_for(lambda: instance_count(router) == 0, 60, "every delivery to end")
            got = pacs.files()
        by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in got}
        assert set(by_uid) == set(uids)
        for uid in uids:
            assert dataset_bytes(by_uid[uid]) == dataset(CT, uid, pixels=pixels)
    finally:
        pacs.stop()


@pytest.mark.parametrize("when", ["mid_data_set", "after_last_fragment"])
def test_9_kill9_before_the_response(tmp_path: Path, when: str) -> None:
    """Case 9: SIGKILL while the data set comes in (its .part file exists): after a
    restart there is no queue row, no temp file, no spool file, nothing forwarded.
    SIGKILL right after the last fragment (the response unread): the instance is either
    wholly queued and then delivered, or not there at all; never half."""
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    try:
        router = make_router(tmp_path, {"pacs": dest("PACS", pacs.port)})
        uid = "1.2.826.0.1.3680043.8.498.900"
        data = dataset(CT, uid, pixels=BIG)
        with running(router), RawPeer(router.port) as peer:
            peer.established()
            peer.command(CT, uid)
            if when == "mid_data_set":
                peer.data(data[: BIG // 2], last=False)
                wait_for(lambda: partials(router), 10, "the partial receipt")
            else:
                peer.data(data)
            router.kill9()
        assert instance_count(router) <= 1
        with running(router):
            queued = instance_count(router)
            if when == "mid_data_set":
                assert queued == 0
            if queued:
                got = pacs.wait_files(1)
                assert dataset_bytes(got[0]) == data
            wait_for(lambda: instance_count(router) == 0, 30, "every delivery to end")
            assert router.terminate() == 0  # graceful: the last unlink follows its commit
        assert not partials(router)
        assert not spool_files(router)
        if when == "mid_data_set":
            assert pacs.files() == []
    finally:
        pacs.stop()


def test_sender_gone_before_the_response_the_instance_is_kept_and_logged(
    tmp_path: Path,
) -> None:
    """A sender that resets the connection right after its last fragment: the data set
    was complete, so it is committed and forwarded, and its ``stored`` line is written
    although the Success could not be sent (the line is written after the response,
    whether or not the response went out)."""
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    try:
        router = make_router(tmp_path, {"pacs": dest("PACS", pacs.port)})
        uid = "1.2.826.0.1.3680043.8.498.901"
        data = dataset(CT, uid)
        with running(router):
            peer = RawPeer(router.port)
            peer.established()
            peer.command(CT, uid)
            peer.data(data)
            peer.reset()
            got = pacs.wait_files(1)
            assert dataset_bytes(got[0]) == data

            def stored_logged() -> bool:
                return any(
                    e.get("event") == "stored" and e.get("sop_instance_uid") == uid
                    for e in _events(router.log())
                )

            wait_for(stored_logged, 10, "the stored line")
            assert echo_ok(router.port)  # and the router goes on
    finally:
        pacs.stop()


def _events(log: str) -> list[dict[str, object]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def test_20_sigterm_under_heavy_load(tmp_path: Path) -> None:
    """Case 20: four senders streaming; SIGTERM. No association is accepted after the
    router logs `stopping`; C-STOREs in flight finish or are cut at the grace (then
    discarded, unacknowledged); the process exits 0 within shutdown_grace (plus start-
    up slack of the poll); every acknowledged instance is queued whole, and nothing
    else but at most the one C-STORE per sender whose commit the grace cut short."""
    grace = 2.0
    senders_n, per_sender = 4, 400
    router = make_router(tmp_path, {"pacs": dest("PACS", down_port())}, shutdown_grace=f"{grace}s")
    batches = [write_many(tmp_path / f"src{i}", per_sender, size=30_000) for i in range(senders_n)]
    with running(router):
        senders = [
            subprocess.Popen(
                ["storescu", "-v", "-aec", "ROUTER", "--no-halt", "127.0.0.1", str(router.port)]
                + [str(f) for f in batch],
                env=NODELAY_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for batch in batches
        ]
        wait_for(
            lambda: (
                router.metric("dicom_router_received_instances_total") >= 100
                or all(s.poll() is not None for s in senders)
            ),
            60,
            "the senders to be under way",
        )
        assert router.proc is not None
        t0 = time.monotonic()
        router.proc.send_signal(signal.SIGTERM)
        try:
            code = router.proc.wait(grace + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit {grace + 10}s after SIGTERM:\n{router.log()}") from None
        stopped_after = time.monotonic() - t0
        outputs = [s.communicate(timeout=60)[0] for s in senders]
    assert code == 0, router.log()
    events = _events(router.log())
    names = [e.get("event") for e in events]
    assert "stopping" in names
    after_stop = names[names.index("stopping") :]
    assert "association_opened" not in after_stop
    acked: list[Path] = []
    for out, batch in zip(outputs, batches, strict=True):
        acked += batch[: out.count("Received Store Response (Success)")]
    conn = sqlite3.connect(router.storage / "queue.db")
    try:
        stored = {
            uid: (data, spooled, ident, offset)
            for ident, uid, data, spooled, offset in conn.execute(
                "SELECT id, sop_instance_uid, data, spooled, data_offset FROM instance"
            )
        }
    finally:
        conn.close()
    by_uid = {
        str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
        for f in itertools.chain(*batches)
    }
    for f in acked:  # nothing acknowledged is lost
        assert str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) in stored
    assert len(acked) <= len(stored) <= len(acked) + senders_n
    for uid, (data, spooled, ident, offset) in stored.items():  # each one whole
        raw = (
            bytes(data)
            if not spooled
            else (router.storage / "spool" / ident[5:7] / f"{ident}.dcm").read_bytes()
        )
        assert raw[offset:] == dataset_bytes(by_uid[uid]), uid
    assert not partials(router)
    print(
        f"acked {len(acked)} of {senders_n * per_sender}, stored {len(stored)},"
        f" exit {stopped_after:.2f}s after SIGTERM (grace {grace}s)"
    )


def test_20_after_sigterm_real_senders_find_the_port_closed(tmp_path: Path) -> None:
    """Case 20, the other side: once stopping, new associations are not accepted (the
    listener is closed) while an idle association in flight holds the stop until the
    grace ends; then the process exits 0."""
    router = make_router(tmp_path, {"pacs": dest("PACS", down_port())}, shutdown_grace="1500ms")
    files = write_many(tmp_path / "src", 2, size=10_000)
    with running(router):
        held = RawPeer(router.port).established()  # idle, in flight
        assert router.proc is not None
        router.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping" in router.log(), 10, "the router to begin stopping")
        res = storescu(router.port, files)
        assert res.returncode != 0
        assert "Received Store Response" not in res.stdout + res.stderr
        assert router.proc.wait(15) == 0
        assert held.until_closed(timeout=5)[:1] in (b"", b"\x07")
        held.close()
    assert instance_count(router) == 0

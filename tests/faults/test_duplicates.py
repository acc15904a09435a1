"""Fault matrix, the same SOP Instance UID twice (case 10).

Policy (README "Reliability"): by default (`duplicates: forward_each`) every receipt is
queued and forwarded, in order of receipt; with `duplicates: drop_identical` a receipt
whose SOP class, instance UID, transfer syntax and data set bytes (BLAKE2b digest)
equal those of an instance still pending or leased for a destination is acknowledged
but not queued again for it. A sender whose acknowledgement was lost and who sends
again is such a receipt. Either way no half-received data set is ever forwarded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.faultlib import (
    CT,
    RawPeer,
    dataset,
    dest,
    down_port,
    instance_count,
    make_router,
    partials,
    rows,
    status_scp,
)
from tests.integration.peers import running, wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")

UID = "1.2.826.0.1.3680043.8.498.1010"
V1 = dataset(CT, UID, pixels=4000, patient_id="DUP1")
V2 = dataset(CT, UID, pixels=4000, patient_id="DUP2")  # same UID, other bytes
BIG = dataset(CT, UID, pixels=3 * 1024 * 1024)  # spilled


def _ack_lost(port: int, data: bytes) -> None:
    """A whole C-STORE whose response the sender never reads: it hangs up at once."""
    peer = RawPeer(port).established()
    peer.command(CT, UID)
    peer.data(data)
    peer.reset()


def _half_sent(port: int, data: bytes) -> None:
    peer = RawPeer(port).established()
    peer.command(CT, UID)
    peer.data(data[: len(data) // 2], last=False)
    peer.reset()


def test_10_default_each_receipt_is_forwarded_in_order_of_receipt(tmp_path: Path) -> None:
    with status_scp(ae_title="PACS") as scp:
        router = make_router(tmp_path, {"pacs": dest("PACS", scp.port)})
        with running(router):
            with RawPeer(router.port) as peer:
                peer.established()
                for i, data in enumerate((V1, V2, V1)):
                    assert peer.store(CT, UID, data, mid=i + 1) == (0, "")
                peer.release()
            _ack_lost(router.port, V2)  # the sender never saw this Success ...
            with RawPeer(router.port) as peer:  # ... so it sends again
                peer.established()
                assert peer.store(CT, UID, V2) == (0, "")
                peer.release()
            _half_sent(router.port, BIG)  # and one it gave up on half way
            wait_for(lambda: len(scp.ok_uids()) == 5, 30, "five deliveries")
            wait_for(lambda: instance_count(router) == 0, 30, "every delivery to end")
        assert [data for _uid, data, _status in scp.received] == [V1, V2, V1, V2, V2]
        assert not partials(router)


def test_10_drop_identical_keeps_one_copy_per_destination(tmp_path: Path) -> None:
    port = down_port()  # the destination is down: the first copy stays pending
    router = make_router(tmp_path, {"pacs": dest("PACS", port)}, duplicates="drop_identical")
    with running(router):
        with RawPeer(router.port) as peer:
            peer.established()
            assert peer.store(CT, UID, V1, mid=1) == (0, "")
            assert peer.store(CT, UID, V1, mid=2) == (0, "")  # identical: acknowledged, dropped
            assert peer.store(CT, UID, V2, mid=3) == (0, "")  # other bytes: queued
            assert peer.store(CT, UID, BIG, mid=4) == (0, "")  # spilled, queued
            assert peer.store(CT, UID, BIG, mid=5) == (0, "")  # spilled, dropped
            peer.release()
        _ack_lost(router.port, V1)
        with RawPeer(router.port) as peer:
            peer.established()
            assert peer.store(CT, UID, V1) == (0, "")  # the retry: dropped too
            peer.release()
        _half_sent(router.port, V2)
        wait_for(lambda: "duplicate_dropped" in router.log(), 10, "the log line")
        assert instance_count(router) == 3
        assert router.metric("dicom_router_received_instances_total") == 7
        assert router.log().count('"duplicate_dropped"') == 4
        stored = rows(router, "SELECT count(*) FROM instance WHERE digest IS NOT NULL")
        assert stored == [(3,)]
        spooled = list((router.storage / "spool").rglob("*.dcm"))
        assert len(spooled) == 1  # the dropped spilled copy left no file
        router.kill9()
    with status_scp(ae_title="PACS", port=port) as scp, running(router):
        wait_for(lambda: len(scp.ok_uids()) == 3, 30, "three deliveries")
        wait_for(lambda: instance_count(router) == 0, 30, "every delivery to end")
        assert sorted(data for _u, data, _s in scp.received) == sorted([V1, V2, BIG])
    assert not partials(router)


def test_10_drop_identical_is_per_destination(tmp_path: Path) -> None:
    """An identical copy still queued for one destination but not another is queued
    for the other only (rules route by calling AE here)."""
    router = make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port()), "ai": dest("AI", down_port())},
        rules=[
            {"name": "ct1", "match": {"calling_ae": "CT_1"}, "forward": ["pacs"], "stop": True},
            {"name": "all", "forward": ["pacs", "ai"]},
        ],
        duplicates="drop_identical",
    )
    with running(router):
        for calling in ("CT_1", "CT_2", "CT_2"):
            with RawPeer(router.port) as peer:
                peer.established(calling=calling)
                assert peer.store(CT, UID, V1) == (0, "")
                peer.release()
        wait_for(lambda: router.log().count('"duplicate_dropped"') == 2, 10, "two drops")
    deliveries = rows(router, "SELECT destination, count(*) FROM delivery GROUP BY destination")
    assert dict(deliveries) == {"pacs": 1, "ai": 1}
    assert instance_count(router) == 2

"""Fault matrix, peers that misbehave on the wire (cases 1, 2, 4, 18).

Each test runs the router as a real process and talks to it with a raw socket peer.
In-process versions of some of these against the bare acceptor live in
tests/dicom/test_hostile.py (test_sender_vanishes_mid_data_set,
test_stall_mid_pdu_times_out_and_frees_the_slot,
test_huge_pdu_length_is_aborted_before_buffering, test_aborted_mid_data_set); these
check the whole product: the spool, the queue and the metrics.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from router.dicom import pdu
from router.samples import write_many
from tests.faults.faultlib import (
    A_ABORT,
    CT,
    RawPeer,
    dataset,
    dest,
    down_port,
    echo_ok,
    instance_count,
    make_router,
    partials,
    pid_of,
    proc_kib,
    spool_files,
)
from tests.integration.peers import running, storescu, wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")

BIG = 3 * 1024 * 1024  # above inline_max_bytes: received into storage/tmp/<id>.part


def _router(tmp_path: Path, **listen: object):  # type: ignore[no-untyped-def]
    return make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port())},
        listen={"max_associations": 1, **listen},
    )


def _in_active(router) -> float:  # type: ignore[no-untyped-def]
    return router.metric("dicom_router_associations_active", direction="in")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_1_sender_drops_mid_data_set(tmp_path: Path, how: str) -> None:
    """Case 1: temp file removed, nothing queued, the slot (max_associations: 1) freed."""
    router = _router(tmp_path)
    files = write_many(tmp_path / "src", 2, size=20_000)
    with running(router):
        peer = RawPeer(router.port).established()
        peer.command(CT, "1.2.826.0.1.3680043.8.498.101")
        peer.data(dataset(CT, "1.2.826.0.1.3680043.8.498.101", pixels=BIG)[: BIG // 2], last=False)
        wait_for(lambda: partials(router), 10, "the partial receipt in storage/tmp")
        assert _in_active(router) == 1
        peer.reset() if how == "reset" else peer.close()
        wait_for(lambda: not partials(router), 10, "the partial receipt to be removed")
        wait_for(lambda: _in_active(router) == 0, 10, "the association slot to be freed")
        res = storescu(router.port, files)  # the one slot serves a real sender again
        assert res.returncode == 0, res.stderr
        assert router.metric("dicom_router_received_instances_total") == 2
        assert router.metric("dicom_router_associations_total", direction="in", how="aborted") == 1
    assert instance_count(router) == 2
    assert len(spool_files(router)) == 0  # the two real ones are inline; the partial left nothing


@pytest.mark.parametrize(
    "where",
    ["before_associate", "mid_header", "mid_command_pdu", "mid_data_pdu"],
)
def test_2_partial_pdu_then_stall_is_aborted_while_others_are_served(
    tmp_path: Path, where: str
) -> None:
    """Case 2: aborted within the network timeout; a real sender is served meanwhile."""
    router = make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port())},
        listen={
            "max_associations": 4,
            "network_timeout": "1s",
            "acse_timeout": "1s",
            "dimse_timeout": "1s",
        },
    )
    files = write_many(tmp_path / "src", 5, size=20_000)
    with running(router):
        stalled = RawPeer(router.port)
        if where == "before_associate":
            stalled.send(b"\x01\x00\x00\x00")  # 4 bytes of an A-ASSOCIATE-RQ header
        else:
            stalled.established()
            if where == "mid_header":
                stalled.send(b"\x04\x00\x00")
            elif where == "mid_command_pdu":
                cmd = bytes(pdu.pdata_pdus(1, b"\x00" * 200, 16384, pdu.COMMAND, True))
                stalled.send(cmd[:100])
            else:
                stalled.command(CT, "1.2.826.0.1.3680043.8.498.102")
                data = bytes(
                    pdu.pdata_pdus(1, dataset(CT, "1.2.826.0.1.3680043.8.498.102"), 16384, 0, True)
                )
                stalled.send(data[: len(data) // 2])
        res = storescu(router.port, files)  # served while the stalled peer holds its slot
        assert res.returncode == 0, res.stderr
        got = stalled.until_closed(timeout=15)  # ends by itself: the router timed it out
        stalled.close()
        if where == "before_associate":
            assert got in (b"",) or got[:1] == bytes([A_ABORT]), got
        else:
            assert got[:1] == bytes([A_ABORT]), got
        assert router.metric("dicom_router_received_instances_total") == 5
        wait_for(lambda: _in_active(router) == 0, 10, "every slot free")
        assert echo_ok(router.port)
    assert not partials(router)
    assert instance_count(router) == 5


def test_4_oversized_pdu_lengths_abort_before_buffering_memory_flat(tmp_path: Path) -> None:
    """Case 4: a PDU length above listen.max_pdu_length, or 4 GiB, gets an A-ABORT at
    once (the body is never sent, so an answer proves nothing was waited for or
    buffered); the router's RSS stays flat over 300 such attempts."""
    router = make_router(
        tmp_path, {"pacs": dest("PACS", down_port())}, listen={"max_pdu_length": 65536}
    )
    with running(router):
        pid = pid_of(router)

        def attack(length: int, associated: bool) -> None:
            with RawPeer(router.port) as p:
                if associated:
                    p.established()
                    p.send(struct.pack(">BxL", 4, length))
                else:
                    p.send(struct.pack(">BxL", 1, length))
                got = p.until_closed(timeout=5)
                assert got[:1] == bytes([A_ABORT]), (length, associated, got)

        for length, associated in [(65537, True), (0xFFFFFFFF, True), (0xFFFFFFFF, False)]:
            attack(length, associated)  # warm-up: imports, allocator pools
        before = proc_kib(pid, "VmRSS")
        for i in range(100):
            attack(65537 + i * 4096, True)
            attack(0xFFFFFFFF, True)
            attack(0xFFFFFFFF - i, False)
        after = proc_kib(pid, "VmRSS")
        assert after - before < 16 * 1024, (before, after)  # KiB: not one 64 KiB body each
        assert router.metric("dicom_router_protocol_errors_total", kind="pdu_too_large") >= 200
        assert echo_ok(router.port)


@pytest.mark.parametrize("how", ["release", "abort"])
def test_18_release_or_abort_mid_pdata_stream(tmp_path: Path, how: str) -> None:
    """Case 18: no deadlock (the router answers and closes), the partial is discarded."""
    router = _router(tmp_path)
    with running(router):
        uid = "1.2.826.0.1.3680043.8.498.118"
        peer = RawPeer(router.port).established()
        peer.command(CT, uid)
        peer.data(dataset(CT, uid, pixels=BIG)[: BIG // 2], last=False)
        wait_for(lambda: partials(router), 10, "the partial receipt in storage/tmp")
        peer.send(pdu.RELEASE_RQ if how == "release" else pdu.encode_abort(0, 0))
        got = peer.until_closed(timeout=10)
        peer.close()
        if how == "release":  # a release inside a message is a protocol error: A-ABORT
            assert got[:1] == bytes([A_ABORT]), got
        else:
            assert got == b"", got
        wait_for(lambda: not partials(router), 10, "the partial receipt to be removed")
        wait_for(lambda: _in_active(router) == 0, 10, "the slot to be freed")
        with RawPeer(router.port) as p:  # the one slot works again, for a whole C-STORE
            p.established()
            assert p.store(CT, uid, dataset(CT, uid)) == (0, "")
            p.release()
    assert instance_count(router) == 1

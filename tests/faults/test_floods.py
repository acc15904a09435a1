"""Fault matrix, floods (cases 5 and 19): slow-loris senders filling every
association slot, and 10,000 malformed association requests and unknown PDUs, against
the router as a real process. See also tests/dicom/test_hostile.py
(test_connection_flood_is_shed, test_bytes_before_association) for the bare acceptor."""

from __future__ import annotations

import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from router.dicom import pdu
from router.samples import write_many
from tests.faults.faultlib import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    CT,
    EXPLICIT,
    RawPeer,
    _item,
    associate_rq,
    context_item,
    dest,
    down_port,
    echo_ok,
    make_router,
    open_fds,
    pid_of,
    proc_kib,
    rejection,
)
from tests.integration.peers import running, storescu, wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


class Loris(threading.Thread):
    """An established association that dribbles a P-DATA PDU one byte at a time, each
    byte well within the router's per-receive timeout; records what the router sends."""

    def __init__(self, port: int, every: float) -> None:
        super().__init__(daemon=True)
        self.peer = RawPeer(port).established()
        self.every = every
        self.got: bytes | None = None
        self.stop = threading.Event()
        body = struct.pack(">LBB", 1002, 1, 0) + bytes(1000)
        self.pdu = struct.pack(">BxL", 4, len(body)) + body

    def run(self) -> None:
        sock = self.peer.sock
        sock.settimeout(self.every)
        for i in range(len(self.pdu)):
            if self.stop.is_set():
                break
            try:
                sock.sendall(self.pdu[i : i + 1])
                data = sock.recv(64)  # waits `every` seconds: the dribble's pace
            except TimeoutError:
                continue
            except OSError:
                data = b""
            self.got = data
            break
        self.peer.close()


def test_5_slow_loris_senders_time_out_and_full_means_reject_2_3_2(tmp_path: Path) -> None:
    """Case 5: slow-loris senders take every slot; while they hold them a new
    association gets A-ASSOCIATE-RJ (2,3,2); they are aborted (the whole PDU must arrive
    within listen.network_timeout of its first byte, however slowly it trickles); then
    real senders succeed."""
    router = make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port())},
        listen={"max_associations": 3, "network_timeout": "1500ms", "dimse_timeout": "1500ms"},
    )
    files = write_many(tmp_path / "src", 4, size=20_000)
    with running(router):
        lorises = [Loris(router.port, every=0.3) for _ in range(3)]
        for loris in lorises:
            loris.start()
        try:
            with RawPeer(router.port) as late:
                kind, whole = late.associate()
                assert kind == A_ASSOCIATE_RJ
                assert rejection(whole) == (2, 3, 2)
            for loris in lorises:
                loris.join(timeout=20)
                assert not loris.is_alive(), "a slow-loris association was never timed out"
                assert loris.got is not None and loris.got[:1] == bytes([A_ABORT]), loris.got
        finally:
            for loris in lorises:
                loris.stop.set()
        assert router.metric("dicom_router_associations_total", direction="in", how="timeout") == 3
        assert (
            router.metric(
                "dicom_router_associations_rejected_total", reason="too_many_associations"
            )
            >= 1
        )
        res = storescu(router.port, files)
        assert res.returncode == 0, res.stderr
        assert router.metric("dicom_router_received_instances_total") == 4


def _payloads() -> list[tuple[str, bytes]]:
    many = [context_item((2 * i + 1) & 0xFF, CT, [EXPLICIT]) for i in range(200)]
    return [
        ("context_item_too_long", associate_rq(contexts=[context_item(1, CT, [EXPLICIT], 0xFFFF)])),
        ("context_item_too_short", associate_rq(contexts=[context_item(1, CT, [EXPLICIT], 3)])),
        ("pdu_length_short", associate_rq(length=20)),
        ("user_item_too_long", associate_rq(user_info=_item(0x50, _item(0x51, b"\0\0", 0x4000)))),
        ("no_contexts", associate_rq(contexts=[])),
        ("200_contexts", associate_rq(contexts=many)),
        ("non_ascii_called_ae", associate_rq(called=b"\xff\xfe\xc3\xa9ROUTER")),
        ("non_ascii_calling_ae", associate_rq(calling=b"\xff\xfe\x00\x01")),
        ("wrong_application_context", associate_rq(app_context=b"1.2.3")),
        ("no_user_information", associate_rq(user_info=b"")),
        ("unknown_pdu_0x00", b"\x00\x00\x00\x00\x00\x02ab"),
        ("unknown_pdu_0x08", b"\x08\x00\x00\x00\x00\x02ab"),
        ("unknown_pdu_0xff", b"\xff\x00\x00\x00\x00\x00"),
        ("associate_ac_first", b"\x02\x00\x00\x00\x00\x02ab"),
        ("p_data_first", b"\x04\x00\x00\x00\x00\x02ab"),
    ]


def _hit(port: int, payload: bytes) -> int:
    """Send one payload; return the type of the router's answer."""
    with RawPeer(port) as p:
        p.send(payload)
        kind, _ = p.recv_pdu(timeout=10)
        if kind == A_ASSOCIATE_AC:
            p.send(pdu.encode_abort(0, 0))
        p.sock.shutdown(socket.SHUT_WR)
        p.until_closed(timeout=10)
        return kind


def test_19_ten_thousand_malformed_associations_answered_without_leaks(tmp_path: Path) -> None:
    """Case 19: every one gets an A-ASSOCIATE-AC/RJ or an A-ABORT and the connection
    ends; afterwards the router holds no more descriptors, associations or memory than
    before (tasks hold sockets: a leaked task shows as a leaked descriptor)."""
    router = make_router(tmp_path, {"pacs": dest("PACS", down_port())}, logging={"level": "error"})
    payloads = _payloads()
    with running(router):
        pid = pid_of(router)
        for _name, p in payloads * 20:  # warm-up: imports, codec caches, allocator pools
            _hit(router.port, p)
        wait_for(lambda: echo_ok(router.port), 10, "the router to answer")
        fds_before = open_fds(pid)
        rss_before = proc_kib(pid, "VmRSS")
        n = 10_000
        with ThreadPoolExecutor(4) as pool:
            kinds = list(
                pool.map(lambda i: _hit(router.port, payloads[i % len(payloads)][1]), range(n))
            )
        answers = {payloads[i % len(payloads)][0]: kinds[i] for i in range(len(payloads))}
        assert set(kinds) <= {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT}, answers
        assert len(kinds) == n
        wait_for(
            lambda: router.metric("dicom_router_associations_active", direction="in") == 0,
            10,
            "every association to end",
        )
        wait_for(lambda: open_fds(pid) <= fds_before, 10, f"descriptors back to {fds_before}")
        rss_after = proc_kib(pid, "VmRSS")
        assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)  # KiB
        assert echo_ok(router.port)
    # what each kind gets, for the record (and so a change of answer is noticed)
    assert answers["wrong_application_context"] == A_ASSOCIATE_RJ
    assert answers["unknown_pdu_0x08"] == A_ABORT
    assert answers["context_item_too_long"] == A_ABORT

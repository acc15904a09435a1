"""One line per event: the acceptor logs the association's lifecycle, the ingest logs the
instances, and no event is written twice (the router as its own process, JSON logs)."""

from __future__ import annotations

import collections
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from router.samples import write_many
from tests.integration.peers import running, storescu, write_config
from tests.ports import reserve_port

pytestmark = pytest.mark.usefixtures("dcmtk")


def _events(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def _garbage(port: int) -> None:
    """A peer that sends no DICOM at all: the router aborts and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x09\x00\x00\x00\x00\x04abcd")  # an unknown PDU type
        while s.recv(4096):
            pass


def test_each_association_and_instance_event_is_logged_once(tmp_path: Path) -> None:
    files = write_many(tmp_path / "src", 2, size=8_000)
    router = write_config(
        tmp_path, {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": reserve_port()}}
    )
    with running(router):
        res = storescu(router.port, files, calling="CT_1")
        assert res.returncode == 0, res.stderr
        assert storescu(router.port, files[:1], called="NOT_ROUTER").returncode != 0
        _garbage(router.port)
        assert router.terminate() == 0
        events = _events(router.log())

    counts = collections.Counter(e["event"] for e in events)
    # three connections: one association, one rejection, one protocol error
    assert counts["association_opened"] == 1, counts
    assert counts["association_closed"] == 1, counts
    assert counts["association_rejected"] == 1, counts
    assert counts["protocol_error"] == 1, counts
    assert counts["stored"] == 2, counts
    assert "association_accepted" not in counts  # the old name of association_opened

    by_name = {e["event"]: e for e in events}
    opened, closed = by_name["association_opened"], by_name["association_closed"]
    assert opened["logger"] == closed["logger"] == "router.dicom.acceptor"
    assert opened["calling_ae"] == "CT_1" and opened["called_ae"] == "ROUTER"
    assert opened["peer"].startswith("127.0.0.1:")
    assert closed["assoc"] == opened["assoc"] and closed["how"] == "released"
    assert closed["stored"] == 2
    # the instance lines name the association they came in on
    stored = [e for e in events if e["event"] == "stored"]
    assert {e["logger"] for e in stored} == {"router.ingest"}
    assert {e["assoc"] for e in stored} == {opened["assoc"]}

    rejected = by_name["association_rejected"]
    assert rejected["reason"] == "called_ae_not_recognized"
    assert (rejected["result"], rejected["source"], rejected["code"]) == (1, 1, 7)
    assert rejected["called_ae"] == "NOT_ROUTER" and rejected["peer"].startswith("127.0.0.1:")
    assert by_name["protocol_error"]["kind"] == "unknown_pdu_type"

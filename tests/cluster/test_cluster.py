"""Several router nodes on one PostgreSQL database and one storage directory, as real
processes: a node killed, a node frozen past its lease, the database killed, a node
killed mid-ingest. Nothing acknowledged is lost; a fenced-off node records nothing."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from router.samples import write_many
from tests.cluster.nodes import acknowledged, node, rows, send, uid
from tests.integration.peers import running, start_storescp, wait_for
from tests.pg.server import PgServer
from tests.ports import reserve_port

pytestmark = pytest.mark.usefixtures("dcmtk")


def _dest(port: int, **kw: object) -> dict[str, dict[str, object]]:
    return {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port, **kw}}


def test_a_killed_node_s_instances_are_delivered_by_the_other(tmp_path: Path, pg_dsn: str) -> None:
    files = write_many(tmp_path / "src", 16, size=30_000)
    pacs_port = reserve_port()  # nobody listens yet: the destination is down
    a = node(tmp_path, "a", pg_dsn, _dest(pacs_port))
    b = node(tmp_path, "b", pg_dsn, _dest(pacs_port))
    with running(a), running(b):
        out_a, _ = send(a.port, files[:8]).communicate(timeout=60)
        out_b, _ = send(b.port, files[8:]).communicate(timeout=60)
        acked = acknowledged(out_a) + acknowledged(out_b)
        assert len(acked) == 16, out_a + out_b
        a.kill9()  # its leased and pending deliveries stay in the database
        pacs = start_storescp(tmp_path / "pacs", "PACS", port=pacs_port)
        try:
            got = pacs.wait_files(16, timeout=60)
            assert {uid(p) for p in got} >= {uid(f) for f in acked}  # 0 lost
            wait_for(
                lambda: rows(pg_dsn, "SELECT count(*) FROM instance")[0][0] == 0,
                30,
                "every instance settled",
            )
        finally:
            pacs.stop()


def test_a_frozen_node_past_its_lease_is_fenced_off(tmp_path: Path, pg_dsn: str) -> None:
    files = write_many(tmp_path / "src", 3, size=20_000)
    pacs = start_storescp(tmp_path / "pacs", "PACS", extra=["--fork", "--sleep-during", "2"])
    # retention keeps the delivered rows, so their final state can be read
    keep = {"retention": "1h"}
    a = node(tmp_path, "a", pg_dsn, _dest(pacs.port, batch_size=8), storage=keep)
    b = node(tmp_path, "b", pg_dsn, _dest(pacs.port, batch_size=8), storage=keep)
    try:
        with running(a):
            out, _ = send(a.port, files).communicate(timeout=60)
            assert len(acknowledged(out)) == 3, out
            # a leases the first and is stuck in the destination's sleep: freeze it
            held = wait_for(
                lambda: rows(
                    pg_dsn, "SELECT id FROM delivery WHERE leased_by = 'a' AND state = 'leased'"
                ),
                30,
                "node a to lease a delivery",
            )
            assert a.proc is not None
            a.proc.send_signal(signal.SIGSTOP)
            try:
                with running(b):
                    wait_for(
                        lambda: (
                            rows(pg_dsn, "SELECT count(*) FROM delivery WHERE state = 'delivered'")[
                                0
                            ][0]
                            == 3
                        ),
                        60,
                        "node b to deliver what a held",
                    )
                    final = rows(
                        pg_dsn,
                        "SELECT id, state, attempts, leased_by, lease_token, updated_at"
                        " FROM delivery ORDER BY id",
                    )
                    taken = {r[0]: r for r in final}[held[0][0]]
                    assert taken[2] == 2, final  # a's attempt, then b's
                    a.proc.send_signal(signal.SIGCONT)
                    # a wakes up and finishes its send: its outcome is fenced off
                    wait_for(lambda: '"event":"forwarded"' in a.log(), 30, "a's late outcome")
                    after = rows(
                        pg_dsn,
                        "SELECT id, state, attempts, leased_by, lease_token, updated_at"
                        " FROM delivery ORDER BY id",
                    )
                    assert after == final  # the late outcome changed nothing
            finally:
                a.proc.send_signal(signal.SIGCONT)
    finally:
        pacs.stop()


def test_the_database_killed_and_back_while_a_sender_sends(
    tmp_path: Path, pg_dsn: str, pg_server: PgServer
) -> None:
    files = write_many(tmp_path / "src", 150, size=12_000)
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    a = node(tmp_path, "a", pg_dsn, _dest(pacs.port))
    try:
        with running(a):
            sender = send(a.port, files)
            wait_for(
                lambda: (
                    a.metric("dicom_router_received_instances_total") >= 5
                    or sender.poll() is not None
                ),
                60,
                "instances to arrive",
            )
            pg_server.kill()
            try:
                wait_for(lambda: a.http("/readyz")[0] == 503, 30, "/readyz to say 503")
                assert "queue database is unreachable" in a.http("/readyz")[1]
            finally:
                pg_server.start()
            out, _ = sender.communicate(timeout=120)
            acked = acknowledged(out)
            assert len(acked) >= 5, out
            wait_for(a.ready, 30, "the node to be ready again")
            # every acknowledged instance is committed and reaches the destination
            got = pacs.wait_files(len(set(acked)), timeout=60)
            assert {uid(p) for p in got} >= {uid(f) for f in acked}
    finally:
        pacs.stop()


def test_a_node_killed_mid_ingest_leaves_no_row_and_its_partial_is_swept(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOM_ROUTER_ORPHAN_GRACE", "2")
    # large ones in a row (about the largest the sample generator makes): one of them
    # is being received whenever the kill comes
    bigs = write_many(tmp_path / "src", 6, size=32_000_000)
    pacs_port = reserve_port()
    a = node(tmp_path, "a", pg_dsn, _dest(pacs_port))
    b = node(tmp_path, "b", pg_dsn, _dest(pacs_port))
    partials = tmp_path / "shared" / "tmp" / "a"
    with running(b):
        with running(a):
            sender = send(a.port, bigs)
            wait_for(
                lambda: any(p.stat().st_size > 0 for p in partials.glob("*.part")),
                60,
                "a partial receipt on node a",
            )
            a.kill9()
            out, _ = sender.communicate(timeout=60)
        acked = {uid(f) for f in acknowledged(out)}
        stored = {r[0] for r in rows(pg_dsn, "SELECT sop_instance_uid FROM instance")}
        assert stored == acked  # the one cut off has no row
        wait_for(lambda: not list(partials.glob("*.part")), 30, "node b to sweep a's partial")

"""The queue on PostgreSQL, one node, on a real server: what this backend does its own
way (a node's restart and its old leases, drop_identical, wake-ups by NOTIFY, a bad row
in a pipelined batch, sweeping orphan files and other nodes' partial receipts, no
database at start). The semantics both backends share (states, attempts, settling,
retention, dead letters, unrouted, filters) run for both in tests/store/test_queue.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from router.store.queue import Filter, InstanceRecord, QueueClosed
from router.store.spool import new_id
from tests.pg.helpers import (
    CT,
    EXPLICIT,
    Req,
    check_counters,
    commit,
    payload,
    read_source,
    running,
)


@pytest.mark.asyncio
async def test_commit_then_restart_the_node(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        small = await commit(q, 1000, ["pacs", "ai"], seed=1)
        big = await commit(q, 50_000, ["pacs"], seed=2)
        lost = await commit(q, 10, [], seed=3)
        await check_counters(q)
        assert q.stats().counts == {("pacs", "pending"): 2, ("ai", "pending"): 1}
        assert q.stats().unrouted == 1 and q.stats().instances == 3
    assert q.spool.path_for(big).exists()
    assert not q.spool.path_for(small).exists()  # inline: inside the row
    async with running(pg_dsn, storage) as q2:
        leases = await q2.lease("pacs", 10, 60)
        assert [le.instance_id for le in leases] == [small, big]
        assert isinstance(leases[0].source, bytes) and isinstance(leases[1].source, Path)
        assert read_source(leases[0]) == payload(1000, 1)
        assert read_source(leases[1]) == payload(50_000, 2)
        assert all(le.attempt == 1 and le.sop_class_uid == CT for le in leases)
        entries = await q2.list_deliveries(Filter(state="unrouted"))
        assert [e.instance_id for e in entries] == [lost]
    assert os.listdir(storage / "tmp" / "node-a") == []


@pytest.mark.asyncio
async def test_a_restarted_node_takes_back_its_own_leases(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        await commit(q, 10, ["pacs"], seed=1)
        await commit(q, 9000, ["pacs"], seed=2)
        assert len(await q.lease("pacs", 10, 3600)) == 2
    async with running(pg_dsn, storage) as q2:
        await check_counters(q2)
        assert q2.stats().counts == {("pacs", "pending"): 2}
        leases = await q2.lease("pacs", 10, 3600)
        assert [le.attempt for le in leases] == [2, 2]  # the interrupted attempt counts


@pytest.mark.asyncio
async def test_drop_identical_while_queued(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        first = await commit(q, 9000, ["pacs", "ai"], seed=4, digest="d1")
        sink = q.new_sink(Req(sop_instance_uid="1.2.3.4"))
        sink.write(payload(9000, 4))
        rec = InstanceRecord(CT, "1.2.3.4", EXPLICIT, "1.2.9", digest="d1")
        res = await q.commit(rec, sink, ["pacs", "ai"])
        assert (res.id, res.stored, res.dropped) == (first, False, ("pacs", "ai"))
        assert not q.spool.path_for(sink.id).exists()  # the copy's file is gone
        (le,) = await q.lease("pacs", 1, 30)
        await q.delivered([le.delivery_id])
        sink = q.new_sink(Req(sop_instance_uid="1.2.3.4"))
        sink.write(payload(9000, 4))
        res = await q.commit(rec, sink, ["pacs", "ai"])  # pacs has it no more: queued again
        assert res.stored and res.queued == ("pacs",) and res.dropped == ("ai",)


@pytest.mark.asyncio
async def test_wait_for_work_woken_by_a_commit(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        assert await q.wait_for_work("pacs", timeout=0.01) is False
        woke = anyio.Event()

        async def waiter() -> None:
            assert await q.wait_for_work("pacs", timeout=30)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            await commit(q, 10, ["pacs"])
            with anyio.fail_after(10):
                await woke.wait()
        assert await q.wait_for_work("ai", timeout=0.01) is False


@pytest.mark.asyncio
async def test_closed_queue_refuses(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        await commit(q, 10, ["pacs"])
    with pytest.raises(QueueClosed):
        await commit(q, 10, ["pacs"])
    with pytest.raises(QueueClosed):
        await q.lease("pacs", 1, 30)
    assert os.listdir(storage / "tmp" / "node-a") == []


@pytest.mark.asyncio
async def test_a_bad_row_fails_its_commit_only(pg_dsn: str, storage: Path) -> None:
    import psycopg

    async with running(pg_dsn, storage) as q:
        sink = q.new_sink(Req())
        sink.write(b"x" * 10_000)
        bad = InstanceRecord(CT, None, EXPLICIT)  # type: ignore[arg-type]  # NOT NULL
        with pytest.raises(psycopg.errors.NotNullViolation):
            await q.commit_instance(bad, sink, ["pacs"])
        assert not q.spool.path_for(sink.id).exists()
        ok = await commit(q, 10, ["pacs"])  # the queue goes on
        assert [e.instance_id for e in await q.list_deliveries()] == [ok]


@pytest.mark.asyncio
async def test_old_orphan_spool_files_are_swept_young_ones_kept(pg_dsn: str, storage: Path) -> None:
    async with running(pg_dsn, storage) as q:
        kept = await commit(q, 9000, ["pacs"], seed=1)
        old_orphan, young_orphan = new_id(), new_id()
        for ident in (old_orphan, young_orphan):
            q.spool.path_for(ident).write_bytes(b"left behind")
        week_ago = time.time() - 7 * 86_400
        for ident in (old_orphan, kept):
            os.utime(q.spool.path_for(ident), (week_ago, week_ago))
        assert await q.sweep_orphans(min_age=86_400) == 1
        assert sorted(q.spool.iter_ids()) == sorted([kept, young_orphan])


@pytest.mark.asyncio
async def test_a_node_sweeps_only_its_own_partial_receipts(pg_dsn: str, storage: Path) -> None:
    theirs = storage / "tmp" / "node-b" / f"{new_id()}.part"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"being received by node-b")
    mine = storage / "tmp" / "node-a" / f"{new_id()}.part"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"left by node-a's previous run")
    async with running(pg_dsn, storage, node_id="node-a"):
        assert theirs.exists() and not mine.exists()


@pytest.mark.asyncio
async def test_no_database_at_start_is_a_clear_error(tmp_path: Path, storage: Path) -> None:
    from router.store.postgres import DatabaseUnavailable, PgQueue

    q = PgQueue(f"host={tmp_path} port=5432 user=router dbname=none", storage, connect_timeout=1)
    with pytest.raises(DatabaseUnavailable, match="cannot connect to the queue database"):
        await q.run()


@pytest.mark.asyncio
async def test_a_bad_row_in_a_batch_fails_only_its_commit(pg_dsn: str, storage: Path) -> None:
    import psycopg

    async with running(pg_dsn, storage) as q:
        outcomes: dict[int, str | BaseException] = {}

        async def one(i: int) -> None:
            sink = q.new_sink(Req(sop_instance_uid=f"1.2.3.{i}"))
            sink.write(payload(100 if i % 2 else 6000, i))
            uid = None if i == 20 else f"1.2.3.{i}"
            rec = InstanceRecord(CT, uid, EXPLICIT)  # type: ignore[arg-type]  # NOT NULL
            try:
                outcomes[i] = await q.commit_instance(rec, sink, ["pacs"])
            except psycopg.Error as e:
                outcomes[i] = e

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert isinstance(outcomes.pop(20), psycopg.errors.NotNullViolation)
        assert all(isinstance(v, str) for v in outcomes.values())
        assert q.stats().transactions < 39  # batched: the others shared transactions
        listed = {e.instance_id for e in await q.list_deliveries()}
        assert listed == set(outcomes.values())
        assert set(q.spool.iter_ids()) == {v for k, v in outcomes.items() if k % 2 == 0}

"""Two router nodes on one PostgreSQL queue: concurrent leases, takeover of expired
leases with fencing, group commit, migrations racing, a database crash, wake-ups and
counts across nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import psycopg
import pytest

from router.store.postgres import SCHEMA_VERSION, DatabaseUnavailable, PgQueue, migrate
from router.store.postgres.admin import PgAdmin
from router.store.postgres.schema import MIGRATIONS, schema_version
from router.store.queue import Filter, Lease
from router.store.records import SchemaError
from tests.async_peers import until_awaited
from tests.pg.helpers import (
    Clock,
    check_counters,
    commit,
    payload,
    read_source,
    running,
    triple,
)
from tests.pg.server import PgServer


@pytest.mark.asyncio
async def test_two_nodes_leasing_together_never_share_a_delivery(
    pg_dsn: str, storage: Path
) -> None:
    async with (
        running(pg_dsn, storage, node_id="a") as a,
        running(pg_dsn, storage, node_id="b") as b,
    ):
        ids = [await commit(a, 100 if i % 3 else 6000, ["pacs", "ai"], seed=i) for i in range(60)]
        got: dict[str, list[Lease]] = {"a": [], "b": []}

        async def worker(q: PgQueue, dest: str) -> None:
            while leases := await q.lease(dest, 7, 60):
                got[q.node_id].extend(leases)
                for le in leases:
                    assert read_source(le) == payload(
                        le.size - le.data_offset, int(le.sop_instance_uid.rsplit(".", 1)[1])
                    )
                assert await q.delivered([le.delivery_id for le in leases]) == len(leases)

        async with anyio.create_task_group() as tg:
            for q in (a, b, a, b):
                for dest in ("pacs", "ai"):
                    tg.start_soon(worker, q, dest)
        leased = [le.delivery_id for le in got["a"] + got["b"]]
        assert len(leased) == len(set(leased)) == 120  # each delivery exactly once
        assert got["a"] and got["b"]  # both nodes did some of the work
        assert {le.instance_id for le in got["a"] + got["b"]} == set(ids)
        # every instance settled once, by one node: rows and files gone
        assert triple(await b.counts()) == ({}, 0, 0)
        assert a.spool.iter_ids() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("retention", [0.0, 1000.0])
async def test_the_last_two_deliveries_ended_at_once_on_two_nodes_settle_once(
    pg_dsn: str, storage: Path, retention: float
) -> None:
    async with (
        running(pg_dsn, storage, node_id="a", retention=retention) as a,
        running(pg_dsn, storage, node_id="b", retention=retention) as b,
    ):
        ids = [await commit(a, 6000, ["pacs", "ai"], seed=i) for i in range(20)]
        on_a = await a.lease("pacs", 100, 60)
        on_b = await b.lease("ai", 100, 60)
        delivered = await asyncio.gather(
            *(a.delivered([le.delivery_id]) for le in on_a),
            *(b.delivered([le.delivery_id]) for le in on_b),
        )
        assert delivered == [1] * 40
        by_state, unrouted, active = triple(await a.counts())
        assert (unrouted, active) == (0, 0)  # every instance done
        if retention:
            assert by_state == {("pacs", "delivered"): 20, ("ai", "delivered"): 20}
            assert sorted(a.spool.iter_ids()) == sorted(ids)  # kept for the retention
        else:
            assert by_state == {}
            assert a.spool.iter_ids() == []  # removed, once


@pytest.mark.asyncio
async def test_an_unexpired_lease_is_not_taken_over(pg_dsn: str, storage: Path) -> None:
    async with (
        running(pg_dsn, storage, node_id="a") as a,
        running(pg_dsn, storage, node_id="b") as b,
    ):
        await commit(a, 10, ["pacs"])
        (le,) = await a.lease("pacs", 1, 3600)
        assert await b.lease("pacs", 1, 3600) == []
        assert await b.delivered([le.delivery_id]) == 0  # b holds no lease on it
        assert await a.delivered([le.delivery_id]) == 1


@pytest.mark.asyncio
async def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced_off(
    pg_dsn: str, storage: Path
) -> None:
    clock = Clock()  # the nodes' clock stands still: expiry is on the database's clock
    # a renews nothing (max_hold=0): a node fallen silent, as far as the database sees
    async with (
        running(pg_dsn, storage, node_id="a", clock=clock, max_hold=0) as a,
        running(pg_dsn, storage, node_id="b", clock=clock) as b,
    ):
        ident = await commit(a, 6000, ["pacs"], seed=5)
        other = await commit(a, 10, ["pacs"], seed=6)
        first = await a.lease("pacs", 2, 0.2)
        assert [le.instance_id for le in first] == [ident, other]
        taken: list[Lease] = []

        async def b_takes_over() -> bool:
            taken.extend(await b.lease("pacs", 2, 3600))
            return len(taken) == 2

        await until_awaited(b_takes_over, 30.0, 0.05)
        assert [(le.delivery_id, le.attempt) for le in taken] == [
            (le.delivery_id, 2) for le in first
        ]
        # a comes back late: none of its outcomes lands over b's leases
        assert await a.delivered([first[0].delivery_id]) == 0
        assert not await a.retry(first[1].delivery_id, clock.t, 0xA700, "busy")
        assert not await a.failed(first[1].delivery_id, 0xC000, "late")
        assert await a.release([first[0].delivery_id]) == 0
        rows = await b.list_deliveries(Filter(destination="pacs"))
        assert [(e.state, e.attempts, e.last_error) for e in rows] == [("leased", 2, None)] * 2
        assert a.spool.path_for(ident).exists()
        # b's outcomes do land
        assert await b.delivered([taken[0].delivery_id]) == 1
        assert await b.retry(taken[1].delivery_id, clock.t + 30, 0xA700, "busy")
        assert not a.spool.path_for(ident).exists()
        (left,) = await a.list_deliveries()
        assert (left.instance_id, left.state, left.last_error) == (other, "pending", "busy")


@pytest.mark.asyncio
async def test_a_live_node_renews_its_leases_past_their_length(pg_dsn: str, storage: Path) -> None:
    async with (
        running(pg_dsn, storage, node_id="a") as a,
        running(pg_dsn, storage, node_id="b") as b,
    ):
        await commit(a, 10, ["pacs"])
        (le,) = await a.lease("pacs", 1, 3.0)
        conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        try:
            cur = await conn.execute(b"SELECT lease_until FROM delivery")
            row = await cur.fetchone()
            assert row is not None
            first_until = row[0]

            async def past_first_lease() -> bool:
                cur = await conn.execute(b"SELECT now() > %s", (first_until,))
                row = await cur.fetchone()
                return row is not None and bool(row[0])

            await until_awaited(past_first_lease, 30.0, 0.05)
            cur = await conn.execute(b"SELECT lease_until > now(), leased_by FROM delivery")
            assert await cur.fetchone() == (True, "a")  # renewed while a sends
        finally:
            await conn.close()
        assert await b.lease("pacs", 1, 60) == []
        assert await a.delivered([le.delivery_id]) == 1


@pytest.mark.asyncio
async def test_group_commit_of_many_concurrent_inserts(pg_dsn: str, storage: Path) -> None:
    async with (
        running(pg_dsn, storage, node_id="a") as a,
        running(pg_dsn, storage, node_id="b") as b,
    ):
        ids: list[str] = []

        async def one(q: PgQueue, i: int) -> None:
            ids.append(await commit(q, 200 if i % 2 else 6000, ["pacs"], seed=i))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, a if i % 4 else b, i)
        assert len(set(ids)) == 200
        assert a.stats().commits + b.stats().commits == 200
        assert a.stats().transactions < 75, a.stats().transactions  # batched, not 150
        await check_counters(a)
        assert a.stats().counts == {("pacs", "pending"): 200}
        listed = {e.instance_id for e in await b.list_deliveries()}
        assert listed == set(ids)
        spooled = set(a.spool.iter_ids())
        assert len(spooled) == 100 and spooled <= listed  # the large half: files, synced


@pytest.mark.asyncio
async def test_migrations_racing_from_two_connections(pg_dsn: str) -> None:
    c1 = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    c2 = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        assert await schema_version(c1) == 0
        applied = await asyncio.gather(migrate(c1), migrate(c2))
        assert sorted(applied) == [[], list(range(1, SCHEMA_VERSION + 1))]
        assert await schema_version(c2) == SCHEMA_VERSION
        assert await migrate(c1) == []
        await c1.execute(b"INSERT INTO schema_migration (version) VALUES (999)")
        with pytest.raises(RuntimeError, match="newer than this router"):
            await migrate(c2)
    finally:
        await c1.close()
        await c2.close()


@pytest.mark.asyncio
async def test_the_administration_refuses_a_schema_of_another_release(
    pg_dsn: str, storage: Path
) -> None:
    conn = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        # what a node of the first release left: version 1 only
        await conn.execute(
            b"CREATE TABLE schema_migration (version integer PRIMARY KEY,"
            b" applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(MIGRATIONS[0][1].encode())
        await conn.execute(b"INSERT INTO schema_migration (version) VALUES (1)")
        with pytest.raises(SchemaError, match="version 1, older than this router's"):
            await anyio.to_thread.run_sync(lambda: PgAdmin(pg_dsn, storage, write=False))
        assert await migrate(conn) == list(range(2, SCHEMA_VERSION + 1))  # a node starting
        with await anyio.to_thread.run_sync(lambda: PgAdmin(pg_dsn, storage)) as admin:
            assert await anyio.to_thread.run_sync(admin.counts) is not None
        await conn.execute(b"INSERT INTO schema_migration (version) VALUES (999)")
        with pytest.raises(SchemaError, match="version 999, newer than this router's"):
            await anyio.to_thread.run_sync(lambda: PgAdmin(pg_dsn, storage, write=False))
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_nodes_starting_together_on_an_empty_database(pg_dsn: str, storage: Path) -> None:
    nodes = [PgQueue(pg_dsn, storage, node_id=f"n{i}") for i in range(3)]
    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as starting:
            for q in nodes:
                starting.start_soon(tg.start, q.run)
        ident = await commit(nodes[0], 10, ["pacs"])
        (le,) = await nodes[2].lease("pacs", 1, 60)
        assert le.instance_id == ident
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_a_commit_wakes_the_other_nodes_waiter_and_counts_agree(
    pg_dsn: str, storage: Path
) -> None:
    async with (
        running(pg_dsn, storage, node_id="a") as a,
        running(pg_dsn, storage, node_id="b", poll_interval=3600) as b,
    ):
        woke = anyio.Event()

        async def waiter() -> None:
            assert await b.wait_for_work("pacs", timeout=30)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await commit(a, 10, ["pacs", "ai"], seed=1)
            with anyio.fail_after(10):
                await woke.wait()  # by NOTIFY: b's poll is an hour away
        await commit(a, 10, [], seed=2)
        (le,) = await b.lease("ai", 1, 60)
        await b.failed(le.delivery_id, 0xC000, "refused")
        for q in (a, b):
            await check_counters(q)
            assert q.stats().counts == {("pacs", "pending"): 1, ("ai", "failed"): 1}
            assert q.stats().unrouted == 1 and q.stats().instances == 2
            assert set(q.stats().oldest_pending_age) == {"pacs"}


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # crash recovery and reconnection on a busy machine
async def test_the_database_killed_mid_commit_then_back(
    pg_server: PgServer, pg_dsn: str, storage: Path
) -> None:
    async with running(pg_dsn, storage, node_id="a", connect_timeout=3) as q:
        before = await commit(q, 6000, ["pacs"], seed=1)
        assert q.listener is not None and q.listener.connections == 1
        blocker = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        watcher = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        outcome: list[BaseException | str] = []

        async def in_flight() -> None:
            try:
                outcome.append(await commit(q, 6000, ["pacs"], seed=2))
            except Exception as e:
                outcome.append(e)

        async def insert_waits() -> bool:  # outside a transaction: a fresh view each time
            cur = await watcher.execute(
                b"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                b" AND query LIKE 'INSERT INTO instance%'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 1

        try:
            await blocker.execute(b"BEGIN")
            await blocker.execute(b"LOCK TABLE instance IN EXCLUSIVE MODE")  # inserts wait
            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                try:
                    await until_awaited(insert_waits, 30.0, 0.05)
                    await anyio.to_thread.run_sync(pg_server.kill)
                finally:
                    await blocker.close()  # whatever happened, the commit is not held
        finally:
            await watcher.close()
        (err,) = outcome
        assert isinstance(err, DatabaseUnavailable), err  # never reported as committed
        with pytest.raises(DatabaseUnavailable):
            await q.lease("pacs", 1, 60)
        await anyio.to_thread.run_sync(pg_server.start)

        after: list[str] = []

        async def commits_again() -> bool:
            try:
                after.append(await commit(q, 6000, ["pacs"], seed=3))
            except DatabaseUnavailable:
                return False
            return True

        await until_awaited(commits_again, 30.0, 0.05)  # the pool reconnected by itself

        async def listening_again() -> bool:
            return q.listener is not None and q.listener.connected

        await until_awaited(listening_again, 30.0, 0.05)
        assert q.listener.connections == 2
        listed = [e.instance_id for e in await q.list_deliveries()]
        assert listed == [before, after[0]]  # the in-flight one is not there, the first is
        assert sorted(q.spool.iter_ids()) == sorted([before, after[0]])  # nor its file
        (le,) = await q.lease("pacs", 1, 60)
        assert le.instance_id == before and read_source(le) == payload(6000, 1)

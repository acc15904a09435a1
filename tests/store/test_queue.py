"""The queue's contract, run for every backend (the ``backend`` fixture): durability
across restarts, group commit, leases and outcomes, recovery, retention, dead letters,
counters and operator commands, and the standalone administration."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.store.backend import QueueBackend
from router.store.records import Filter, InstanceRecord, Lease, QueueClosed, QueueStats, State
from router.store.spool import new_id
from tests.store.helpers import (
    CT,
    EXPLICIT,
    INLINE_MAX,
    Backend,
    Clock,
    Req,
    commit,
    data_gone,
    payload,
    read_source,
)


async def settled_stats(q: QueueBackend) -> None:
    """A cluster queue's stats() are the cluster's as of its last poll (by design: other
    nodes change the rows too); read them now before comparing."""
    refresh = getattr(q, "refresh", None)
    if refresh is not None:
        await refresh()


async def stats(q: QueueBackend) -> QueueStats:
    await settled_stats(q)
    return q.stats()


async def check_counters(q: QueueBackend) -> None:
    """The in-memory counters (metrics) equal a fresh count of the stored rows."""
    st_ = await stats(q)
    counts = await q.counts()
    assert st_.counts == counts.by_state()
    assert st_.unrouted == counts.unrouted.count
    assert st_.instances == counts.instances


@pytest.mark.asyncio
async def test_commit_then_reopen(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        small = await commit(q, 1000, ["pacs", "ai"], seed=1)
        big = await commit(q, 50_000, ["pacs"], seed=2)
        lost = await commit(q, 10, [], seed=3)
        assert (await stats(q)).counts == {("pacs", "pending"): 2, ("ai", "pending"): 1}
        await check_counters(q)
    assert q.spool.path_for(big).exists()
    assert not q.spool.path_for(small).exists()  # inline: inside the database
    async with backend.running(storage) as q2:
        await check_counters(q2)
        assert (await stats(q2)).unrouted == 1
        leases = await q2.lease("pacs", 10, 60)
        assert [le.instance_id for le in leases] == [small, big]
        assert isinstance(leases[0].source, bytes) and isinstance(leases[1].source, Path)
        assert read_source(leases[0]) == payload(1000, 1)
        assert read_source(leases[1]) == payload(50_000, 2)
        assert all(le.attempt == 1 and le.sop_class_uid == CT for le in leases)
        entries = await q2.list_deliveries(Filter(state="unrouted"))
        assert [e.instance_id for e in entries] == [lost]
    assert os.listdir(q.spool.tmp_dir) == []


@pytest.mark.asyncio
async def test_group_commit_batches(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        ids: list[str] = []

        async def one(i: int) -> None:
            ids.append(await commit(q, 200 if i % 2 else 20_000, ["pacs"], seed=i))

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert len(ids) == 200
        st_ = await stats(q)
        assert st_.commits == 200
        assert st_.transactions < 100, st_.transactions
        assert st_.counts == {("pacs", "pending"): 200}
        await check_counters(q)


@pytest.mark.asyncio
async def test_lease_outcome_transitions(backend: Backend, storage: Path) -> None:
    clock = Clock()
    async with backend.running(storage, clock=clock) as q:
        a = await commit(q, 100, ["pacs"], seed=1)
        b = await commit(q, 9000, ["pacs"], seed=2)
        c = await commit(q, 100, ["pacs"], seed=3)
        assert q.next_due("pacs") == clock.t
        la, lb, lc = await q.lease("pacs", 10, 30)
        assert (la.instance_id, lb.instance_id, lc.instance_id) == (a, b, c)
        assert (await stats(q)).counts == {("pacs", "leased"): 3}
        assert q.next_due("pacs") is None
        assert await q.lease("pacs", 10, 30) == []

        # a: retried later, then delivered
        assert await q.retry(la.delivery_id, clock.t + 10, 0xA700, "busy")
        assert not await q.retry(la.delivery_id, clock.t + 10, 0xA700, "busy")  # not leased
        assert q.next_due("pacs") == clock.t + 10
        assert await q.lease("pacs", 10, 30) == []
        clock.t += 10
        (la2,) = await q.lease("pacs", 10, 30)
        assert la2.delivery_id == la.delivery_id and la2.attempt == 2
        assert await q.delivered([la2.delivery_id]) == 1
        # b: dead letter; the data stays
        assert await q.failed(lb.delivery_id, 0xC000, "cannot understand")
        assert q.spool.path_for(b).exists()
        # c: delivered with a warning
        assert await q.delivered([lc.delivery_id], status=0xB000) == 1
        assert await q.delivered([lc.delivery_id]) == 0  # already delivered
        assert (await stats(q)).counts == {("pacs", "failed"): 1}
        assert (await stats(q)).instances == 1
        (dead,) = await q.list_deliveries(Filter(destination="pacs"))
        assert (dead.instance_id, dead.state, dead.attempts) == (b, "failed", 1)
        assert (dead.last_status, dead.last_error) == (0xC000, "cannot understand")
        await check_counters(q)


@pytest.mark.asyncio
async def test_instance_done_only_when_every_destination_delivered(
    backend: Backend, storage: Path
) -> None:
    async with backend.running(storage) as q:
        ident = await commit(q, 9000, ["pacs", "ai"])
        (lp,) = await q.lease("pacs", 1, 30)
        (la,) = await q.lease("ai", 1, 30)
        await q.delivered([lp.delivery_id])
        assert q.spool.path_for(ident).exists()
        assert (await stats(q)).instances == 1
        await q.delivered([la.delivery_id])
        assert await data_gone(q, ident)
        assert (await stats(q)).instances == 0 and (await stats(q)).counts == {}
        await check_counters(q)


@pytest.mark.asyncio
async def test_a_lease_records_what_was_delivered_first(backend: Backend, storage: Path) -> None:
    """``lease(..., delivered)``: a session's delivered marks and its next lease in one
    call. The marks are recorded as ``delivered`` would (each with its status; the
    instance done with its last delivery), and only then is the next batch leased."""
    async with backend.running(storage) as q:
        a = await commit(q, 9000, ["pacs"], seed=1)
        b = await commit(q, 100, ["pacs", "ai"], seed=2)
        c = await commit(q, 100, ["pacs"], seed=3)
        first = await q.lease("pacs", 2, 30)
        assert [le.instance_id for le in first] == [a, b]
        done = [(first[0].delivery_id, 0x0000), (first[1].delivery_id, 0xB000)]
        (nxt,) = await q.lease("pacs", 5, 30, done)
        assert nxt.instance_id == c
        assert await data_gone(q, a)  # a is done: its data is gone
        entries = await q.list_deliveries(Filter(destination="pacs"))
        # b waits for "ai"; its "pacs" delivery is recorded with the warning received
        assert {e.instance_id: (e.state, e.last_status) for e in entries} == {
            b: (State.DELIVERED, 0xB000),
            c: (State.LEASED, None),
        }
        assert (await stats(q)).counts == {
            ("pacs", "leased"): 1,
            ("pacs", "delivered"): 1,
            ("ai", "pending"): 1,
        }
        (la,) = await q.lease("ai", 1, 30)
        assert await q.lease("ai", 0, 30, [(la.delivery_id, 0x0000)]) == []
        assert (await stats(q)).instances == 1  # only c is left
        await check_counters(q)


@pytest.mark.asyncio
async def test_release_does_not_count_the_attempt(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        await commit(q, 10, ["pacs"])
        (le,) = await q.lease("pacs", 1, 30)
        assert await q.release([le.delivery_id]) == 1
        (le2,) = await q.lease("pacs", 1, 30)
        assert le2.attempt == 1


@pytest.mark.asyncio
async def test_expired_lease_is_leased_again(backend: Backend, storage: Path) -> None:
    if backend.clustered:
        pytest.skip("cluster leases expire on the database's clock: tests/pg/test_pg_cluster.py")
    clock = Clock()
    async with backend.running(storage, clock=clock) as q:
        await commit(q, 10, ["pacs"])
        (le,) = await q.lease("pacs", 1, 30)
        clock.t += 29
        assert await q.lease("pacs", 1, 30) == []
        clock.t += 1
        (again,) = await q.lease("pacs", 1, 30)
        assert again.delivery_id == le.delivery_id and again.attempt == 2
        await check_counters(q)


@pytest.mark.asyncio
async def test_recovery_returns_leases_to_pending(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        await commit(q, 10, ["pacs"])
        await commit(q, 9000, ["pacs"])
        assert len(await q.lease("pacs", 10, 3600)) == 2
    async with backend.running(storage) as q2:
        assert (await stats(q2)).counts == {("pacs", "pending"): 2}
        leases = await q2.lease("pacs", 10, 3600)
        assert [le.attempt for le in leases] == [2, 2]  # the interrupted attempt counts
        await check_counters(q2)


@pytest.mark.asyncio
async def test_orphans_swept_and_missing_files_failed_loudly(
    backend: Backend, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with backend.running(storage) as q:
        kept = await commit(q, 9000, ["pacs"], seed=1)
        gone = await commit(q, 9000, ["pacs", "ai"], seed=2)
    orphan = new_id()
    q.spool.path_for(orphan).write_bytes(b"half")
    hour_ago = time.time() - 3600  # a cluster node sweeps only old orphans
    os.utime(q.spool.path_for(orphan), (hour_ago, hour_ago))
    (q.spool.tmp_dir / f"{new_id()}.part").write_bytes(b"partial")
    q.spool.path_for(gone).unlink()
    with caplog.at_level(logging.ERROR, logger="router.store"):
        async with backend.running(storage) as q2:
            assert not q2.spool.path_for(orphan).exists()
            assert q2.spool.path_for(kept).exists()
            assert os.listdir(q.spool.tmp_dir) == []
            assert (await stats(q2)).counts == {
                ("pacs", "pending"): 1,
                ("pacs", "failed"): 1,
                ("ai", "failed"): 1,
            }
            failed = await q2.list_deliveries(Filter(state="failed"))
            assert {e.instance_id for e in failed} == {gone}
            assert all(e.last_error == "spool file missing" for e in failed)
            await check_counters(q2)
    assert any(gone in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_unrouted_instances_are_kept_counted_and_purgeable(
    backend: Backend, storage: Path
) -> None:
    async with backend.running(storage) as q:
        a = await commit(q, 9000, [], seed=1, study="1.9.1")
        b = await commit(q, 10, [], seed=2, study="1.9.2")
        await commit(q, 10, ["pacs"], seed=3, study="1.9.1")
        st_ = await stats(q)
        assert st_.unrouted == 2 and st_.instances == 3
        everything = await q.list_deliveries()
        assert [e.state for e in everything] == ["pending", "unrouted", "unrouted"]
        assert [e.instance_id for e in await q.list_deliveries(Filter(state="unrouted"))] == [
            a,
            b,
        ]
        assert await q.purge(Filter(state="unrouted", study_uid="1.9.1")) == 1
        assert await data_gone(q, a)
        assert (await stats(q)).unrouted == 1
        await check_counters(q)


@pytest.mark.asyncio
async def test_retention_keeps_then_housekeeping_removes(backend: Backend, storage: Path) -> None:
    clock = Clock()
    async with backend.running(storage, clock=clock, retention=100.0) as q:
        ident = await commit(q, 9000, ["pacs"])
        (le,) = await q.lease("pacs", 1, 30)
        await q.delivered([le.delivery_id])
        assert q.spool.path_for(ident).exists()
        assert (await stats(q)).counts == {("pacs", "delivered"): 1}
        assert (await stats(q)).instances == 0
        clock.t += 99
        assert await q.housekeeping() == 0
        clock.t += 1
        assert await q.housekeeping() == 1
        assert await data_gone(q, ident)
        assert (await stats(q)).counts == {}
        await check_counters(q)


@pytest.mark.asyncio
async def test_dead_letters_keep_data_and_can_be_retried(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        ident = await commit(q, 9000, ["pacs"], seed=7)
        for _ in range(3):
            (le,) = await q.lease("pacs", 1, 30)
            await q.retry(le.delivery_id, 0.0, 0xA700, "busy")
        (le,) = await q.lease("pacs", 1, 30)
        assert le.attempt == 4
        await q.failed(le.delivery_id, 0xA700, "gave up after 4 attempts")
        assert q.spool.path_for(ident).exists()
        with pytest.raises(ValueError):
            await q.retry_failed(Filter(state="pending"))
        assert await q.retry_failed(Filter(destination="ai")) == 0
        assert await q.retry_failed(Filter(destination="pacs")) == 1
        (le,) = await q.lease("pacs", 1, 30)
        assert le.attempt == 1 and read_source(le) == payload(9000, 7)
        await check_counters(q)


@pytest.mark.asyncio
async def test_operator_filters(backend: Backend, storage: Path) -> None:
    clock = Clock()
    async with backend.running(storage, clock=clock) as q:
        old = await commit(q, 10, ["pacs", "ai"], seed=1, study="1.9.1", received_at=clock.t - 600)
        new = await commit(q, 10, ["pacs"], seed=2, study="1.9.2")
        f_all = await q.list_deliveries()
        assert len(f_all) == 3
        assert [e.instance_id for e in await q.list_deliveries(Filter(min_age=300))] == [old, old]
        assert [e.instance_id for e in await q.list_deliveries(Filter(study_uid="1.9.2"))] == [new]
        assert len(await q.list_deliveries(Filter(destination="pacs", limit=1))) == 1
        assert await q.list_deliveries(Filter(state="failed")) == []
        # purge one destination of the old instance: its data stays for the other
        assert await q.purge(Filter(destination="ai")) == 1
        assert (await stats(q)).counts == {("pacs", "pending"): 2}
        assert await q.purge(Filter(instance_id=old)) == 1
        assert [e.instance_id for e in await q.list_deliveries()] == [new]
        assert (await stats(q)).instances == 1
        await check_counters(q)
    with pytest.raises(ValueError):
        Filter(state="bogus")


@pytest.mark.asyncio
async def test_purge_leaving_only_delivered_rows_completes_the_instance(
    backend: Backend, storage: Path
) -> None:
    async with backend.running(storage, retention=1000.0) as q:
        ident = await commit(q, 9000, ["pacs", "ai"])
        (le,) = await q.lease("pacs", 1, 30)
        await q.delivered([le.delivery_id])
        assert (await stats(q)).instances == 1
        await q.purge(Filter(destination="ai"))
        assert (await stats(q)).instances == 0  # done, kept for the retention
        assert q.spool.path_for(ident).exists()
        await check_counters(q)


@pytest.mark.asyncio
async def test_wait_for_work(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        assert await q.wait_for_work("pacs", timeout=0.01) is False
        woke = anyio.Event()

        async def waiter() -> None:
            assert await q.wait_for_work("pacs", timeout=10)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            await commit(q, 10, ["pacs"])
            with anyio.fail_after(5):
                await woke.wait()
        assert await q.wait_for_work("pacs", timeout=0)  # already due
        (le,) = await q.lease("pacs", 1, 30)
        # a retry due shortly: the waiter wakes at that time, without a new commit
        await q.retry(le.delivery_id, q.clock() + 0.05)
        start = anyio.current_time()
        assert await q.wait_for_work("pacs", timeout=10)
        assert 0.03 <= anyio.current_time() - start < 5
        # other destinations are not woken
        assert await q.wait_for_work("ai", timeout=0.01) is False


@pytest.mark.asyncio
async def test_is_full_and_closed(backend: Backend, storage: Path) -> None:
    async with backend.running(storage, max_queue_instances=2) as q:
        await commit(q, 10, ["pacs"])
        assert not q.is_full()
        await commit(q, 10, [])
        assert q.is_full()
        (le,) = await q.lease("pacs", 1, 30)
        await q.delivered([le.delivery_id])
        assert not q.is_full()
    with pytest.raises(QueueClosed):
        await commit(q, 10, ["pacs"])
    with pytest.raises(QueueClosed):
        await q.lease("pacs", 1, 30)
    assert os.listdir(q.spool.tmp_dir) == []


@pytest.mark.asyncio
async def test_aborted_sink_is_refused(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        sink = q.new_sink(Req())
        sink.write(b"x" * 10_000)
        sink.abort()
        with pytest.raises(ValueError):
            await q.commit_instance(InstanceRecord(CT, "1.2", EXPLICIT), sink, ["pacs"])
        assert (await stats(q)).commits == 0
    assert os.listdir(q.spool.tmp_dir) == []
    assert q.spool.iter_ids() == []


@pytest.mark.asyncio
async def test_failed_commit_leaves_nothing(backend: Backend, storage: Path) -> None:
    async with backend.running(storage) as q:
        sink = q.new_sink(Req())
        sink.write(b"x" * 10_000)
        bad = InstanceRecord(CT, None, EXPLICIT)  # type: ignore[arg-type]  # NOT NULL
        with pytest.raises(backend.integrity_error):
            await q.commit_instance(bad, sink, ["pacs"])
        ok = await commit(q, 10, ["pacs"])  # the queue goes on
        assert [e.instance_id for e in await q.list_deliveries()] == [ok]
        await check_counters(q)
    assert q.spool.iter_ids() == []


@pytest.mark.asyncio
async def test_admin_standalone(backend: Backend, storage: Path) -> None:
    """The command line's administration while no router serves the operator API."""
    async with backend.running(storage) as q:
        ident = await commit(q, 9000, ["pacs"])
        (le,) = await q.lease("pacs", 1, 30)
        await q.failed(le.delivery_id, 0xC000, "x")
        with backend.admin(storage) as reader:  # reading works next to the router
            assert reader.counts().by_state() == {("pacs", "failed"): 1}
            with pytest.raises(RuntimeError, match="read-only"):
                reader.purge(Filter())
    with backend.admin(storage, write=True) as admin:
        counts = admin.counts()
        assert (counts.by_state(), counts.unrouted.count, counts.instances) == (
            {("pacs", "failed"): 1},
            0,
            1,
        )
        assert [e.state for e in admin.list_deliveries()] == [State.FAILED]
        assert admin.retry_failed(Filter(destination="pacs")) == 1
        assert admin.counts().by_state() == {("pacs", "pending"): 1}
        assert admin.purge(Filter(destination="pacs")) == 1
        assert admin.counts().by_state() == {}
        assert admin.counts().instances == 0
        assert not q.spool.path_for(ident).exists()
    with pytest.raises(FileNotFoundError):
        backend.admin_without_queue(storage / "nowhere")


@pytest.mark.asyncio
async def test_counts_by_state_with_the_oldest(backend: Backend, storage: Path) -> None:
    """``counts``: what ``queue status`` shows, the same through the running queue and
    through the standalone administration."""
    clock = Clock()
    async with backend.running(storage, clock=clock) as q:
        await commit(q, 10, ["pacs", "ai"], seed=1, received_at=clock.t - 600)
        await commit(q, 9000, ["pacs"], seed=2, received_at=clock.t - 60)
        await commit(q, 10, [], seed=3, received_at=clock.t - 30)
        (le,) = await q.lease("ai", 1, 30)
        await q.failed(le.delivery_id, 0xC000, "bad")
        live = await q.counts()
        assert live.deliveries[("pacs", State.PENDING)].count == 2
        assert live.deliveries[("pacs", State.PENDING)].oldest == clock.t - 600
        assert live.deliveries[("ai", State.FAILED)].count == 1
        assert ("ai", State.PENDING) not in live.deliveries
        assert (live.unrouted.count, live.unrouted.oldest) == (1, clock.t - 30)
        assert live.instances == 3
    with backend.admin(storage) as admin:
        assert admin.counts() == live


# --------------------------------------------------------------- counters vs GROUP BY

OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("commit"),
            st.sampled_from([10, 9000]),
            st.lists(st.sampled_from(["a", "b"]), max_size=2),
        ),
        st.tuples(st.just("lease"), st.sampled_from(["a", "b"]), st.integers(1, 3)),
        st.tuples(st.just("outcome"), st.sampled_from(["delivered", "retry", "failed", "release"])),
        st.tuples(st.just("retry_failed"), st.sampled_from([None, "a"])),
        st.tuples(st.just("purge"), st.sampled_from([None, "a", "b", "unrouted"])),
        st.tuples(st.just("tick"), st.integers(0, 50)),
        st.tuples(st.just("housekeeping")),
        st.tuples(st.just("restart")),
    ),
    max_size=30,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=OPS, retention=st.sampled_from([0.0, 20.0]))
def test_counters_equal_group_by(
    backend: Backend, ops: list[tuple[Any, ...]], retention: float
) -> None:
    backend = backend.fresh()  # an empty database for each example

    async def scenario(storage: Path) -> None:
        clock = Clock()
        leased: list[Lease] = []
        restart = True
        while restart:
            restart = False
            async with backend.running(storage, clock=clock, retention=retention) as q:
                await check_counters(q)
                while ops:
                    op = ops.pop(0)
                    kind = op[0]
                    if kind == "commit":
                        await commit(q, op[1], op[2])
                    elif kind == "lease":
                        leased += await q.lease(op[1], op[2], 30)
                    elif kind == "outcome" and leased:
                        le = leased.pop(0)
                        if op[1] == "delivered":
                            await q.delivered([le.delivery_id])
                        elif op[1] == "retry":
                            await q.retry(le.delivery_id, clock.t + 5, 0xA700, "busy")
                        elif op[1] == "failed":
                            await q.failed(le.delivery_id, 0xC000, "bad")
                        else:
                            await q.release([le.delivery_id])
                    elif kind == "retry_failed":
                        await q.retry_failed(Filter(destination=op[1]))
                    elif kind == "purge":
                        if op[1] == "unrouted":
                            await q.purge(Filter(state="unrouted"))
                        else:
                            await q.purge(Filter(destination=op[1]))
                    elif kind == "tick":
                        clock.t += op[1]
                    elif kind == "housekeeping":
                        await q.housekeeping()
                    elif kind == "restart":
                        leased.clear()
                        restart = True
                        break
                    await check_counters(q)
        # data and rows agree: every spooled instance (the larger than inline_max) has
        # its file, and no file is extra
        with backend.admin(storage) as admin:
            entries = admin.list_deliveries()
        spooled = {e.instance_id for e in entries if e.size > INLINE_MAX}
        assert set(q.spool.iter_ids()) == spooled

    with tempfile.TemporaryDirectory() as d:
        anyio.run(scenario, Path(d))


@pytest.mark.asyncio
async def test_a_lease_carries_the_study_uid(backend: Backend, storage: Path) -> None:
    """A DICOMweb destination sends one study per request: the lease says which."""
    async with backend.running(storage, clock=Clock()) as q:
        a = await commit(q, 100, ["web"], study="1.2.840.1", seed=1)
        b = await commit(q, 9000, ["web"], study="1.2.840.2", seed=2)
        leases = await q.lease("web", 10, 30)
    assert [(x.instance_id, x.study_uid) for x in leases] == [(a, "1.2.840.1"), (b, "1.2.840.2")]

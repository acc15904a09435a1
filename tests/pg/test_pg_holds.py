"""Holds with two nodes on one queue: arrivals of one series committed on both nodes at
once all move the one group, and the group is released exactly once, whole, in its send
order (the backend-independent contract is tests/store/test_queue_holds.py)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import anyio
import pytest

from router.holds import Hold, HoldUntil
from router.store.postgres import PgQueue
from router.store.queue import Filter, InstanceRecord, State
from tests.pg.helpers import CT, EXPLICIT, Clock, Req, check_counters, payload, running

#: the nodes' own timers sleep (in real seconds) until the injected clock's release time:
#: a quiet of an hour keeps them out of the test, which releases by hand
QUIET = 3600.0
SERIES = Hold(HoldUntil.SERIES, quiet=QUIET, max_wait=86_400.0)
N = 240


async def commit(q: PgQueue, clock: Clock, number: int) -> str:
    clock.t += 0.25  # every arrival later than the one before, whichever node it reaches
    uid = f"1.2.3.{number}"
    sink = q.new_sink(Req(sop_instance_uid=uid))
    sink.write(payload(300 if number % 5 else 6000, number))  # some spooled as files
    rec = InstanceRecord(
        CT,
        uid,
        EXPLICIT,
        "1.2.9",
        "MOD",
        "ROUTER",
        series_instance_uid="1.2.8.1",
        series_number=1,
        instance_number=number,
    )
    return await q.commit_instance(rec, sink, ["ai"])


@pytest.mark.asyncio
async def test_one_series_committed_on_two_nodes_at_once_is_released_once_in_order(
    pg_dsn: str, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.store.queue")
    clock = Clock()
    numbers = list(range(1, N + 1))
    random.Random(7).shuffle(numbers)
    ids: dict[str, int] = {}
    async with (
        running(pg_dsn, storage, node_id="a", clock=clock, holds={"ai": SERIES}) as a,
        running(pg_dsn, storage, node_id="b", clock=clock, holds={"ai": SERIES}) as b,
    ):

        async def sender(q: PgQueue, part: list[int]) -> None:
            for n in part:
                ids[await commit(q, clock, n)] = n

        async with anyio.create_task_group() as tg:
            for k, q in enumerate((a, b, a, b, a, b, a, b)):  # four associations per node
                tg.start_soon(sender, q, numbers[k::8])
        last = clock.t

        # one group on the cluster, moved by every arrival: its release time is quiet
        # after the very last one, whichever node committed it
        entries = await b.list_deliveries(Filter(destination="ai", state=State.HELD))
        assert len(entries) == N
        assert {(e.release_at, e.release_reason) for e in entries} == {(last + QUIET, "quiet")}
        for q in (a, b):
            await q.refresh()
            assert q.next_release() == last + QUIET
        await check_counters(a)

        clock.t = last + QUIET - 0.1
        assert await a.release_due_holds() + await b.release_due_holds() == 0
        clock.t = last + QUIET
        got: dict[str, int] = {}

        async def release(q: PgQueue) -> None:
            got[q.node_id] = await q.release_due_holds()

        async with anyio.create_task_group() as tg:  # both nodes' timers at once
            for q in (a, b, a, b):
                tg.start_soon(release, q)
        assert sum(got.values()) == N and N in got.values()  # one node released it all

        for q in (a, b):  # the node that found the row taken knows it at its next poll
            await q.refresh()
            assert q.stats().counts == {("ai", "pending"): N}
            assert q.next_release() is None
        order: list[int] = []
        while leases := await a.lease("ai", 16, 60):
            order += [ids[le.instance_id] for le in leases]
            assert await a.delivered([le.delivery_id for le in leases]) == len(leases)
        assert order == sorted(numbers)
    events = [r for r in caplog.records if r.getMessage() == "hold_released"]
    assert len(events) == 1
    fields = vars(events[0])
    assert (fields["series_uid"], fields["count"], fields["reason"]) == ("1.2.8.1", N, "quiet")

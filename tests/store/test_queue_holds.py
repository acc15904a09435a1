"""Holds in the queue's contract, run for every backend (the ``backend`` fixture), with
an injected clock: held on commit, release times moved by arrivals and capped by
max_wait, the send order at release, a late instance opening a new group, holds across
a restart, the operator's release, and leases that never take a held delivery."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from router.holds import Hold, HoldUntil
from router.store.backend import QueueBackend
from router.store.records import Filter, InstanceRecord, State
from tests.async_peers import until_awaited
from tests.store.helpers import CT, EXPLICIT, Backend, Clock, Req, payload
from tests.store.test_queue import check_counters, stats

SERIES = Hold(HoldUntil.SERIES, quiet=30.0, max_wait=3600.0)
STUDY = Hold(HoldUntil.STUDY, quiet=30.0, max_wait=3600.0)

_seq = iter(range(1, 1_000_000))


async def commit(
    q: QueueBackend,
    dests: list[str],
    *,
    series: str = "1.2.8.1",
    study: str = "1.2.9",
    series_number: int | None = 1,
    number: int | None = None,
    size: int = 200,
    digest: str | None = None,
) -> str:
    n = next(_seq)
    uid = f"1.2.3.{n}"
    sink = q.new_sink(Req(sop_instance_uid=uid))
    sink.write(payload(size, n))
    rec = InstanceRecord(
        CT,
        uid,
        EXPLICIT,
        study,
        "MOD",
        "ROUTER",
        series_instance_uid=series,
        series_number=series_number,
        instance_number=number,
        digest=digest,
    )
    return await q.commit_instance(rec, sink, dests)


async def held(q: QueueBackend, dest: str) -> list[Any]:
    return await q.list_deliveries(Filter(destination=dest, state=State.HELD))


def released_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    keys = ("destination", "series_uid", "study_uid", "count", "reason")
    return [
        {k: getattr(r, k) for k in keys if hasattr(r, k)}
        for r in caplog.records
        if r.getMessage() == "hold_released"
    ]


@pytest.mark.asyncio
async def test_a_delivery_to_a_held_destination_is_held_on_commit(
    backend: Backend, storage: Path
) -> None:
    clock = Clock()
    async with backend.running(storage, clock=clock, holds={"ai": SERIES}) as q:
        inst = await commit(q, ["ai", "pacs"], number=1)
        assert (await stats(q)).counts == {("ai", "held"): 1, ("pacs", "pending"): 1}
        assert q.next_due("ai") is None  # nothing for its workers
        assert q.next_release() == clock.t + 30
        assert await q.lease("ai", 10, 60) == []
        (le,) = await q.lease("pacs", 10, 60)
        assert le.instance_id == inst  # the destination without a hold gets it at once
        (e,) = await held(q, "ai")
        assert (e.instance_id, e.state, e.series_uid) == (inst, State.HELD, "1.2.8.1")
        assert (e.release_at, e.release_reason) == (clock.t + 30, "quiet")
        await check_counters(q)
        clock.t += 1000  # long past its release time: still never leased while held
        assert await q.lease("ai", 10, 60) == []


@pytest.mark.asyncio
async def test_arrivals_move_the_release_time_and_max_wait_caps_it(
    backend: Backend, storage: Path
) -> None:
    clock = Clock()
    t0 = clock.t
    capped = Hold(HoldUntil.SERIES, quiet=30.0, max_wait=100.0)
    async with backend.running(storage, clock=clock, holds={"ai": capped}) as q:
        for at, release, reason in [
            (0, 30, "quiet"),
            (20, 50, "quiet"),
            (40, 70, "quiet"),
            (60, 90, "quiet"),
            (80, 100, "max_wait"),  # 110 would pass max_wait after the first arrival
            (95, 100, "max_wait"),
        ]:
            clock.t = t0 + at
            await commit(q, ["ai"], number=at)
            entries = await held(q, "ai")
            assert {(e.release_at, e.release_reason) for e in entries} == {(t0 + release, reason)}
            assert q.next_release() is not None and q.next_release() <= t0 + release
        clock.t = t0 + 99.5
        assert await q.release_due_holds() == 0
        assert (await stats(q)).counts == {("ai", "held"): 6}
        assert q.next_release() == t0 + 100
        clock.t = t0 + 100
        assert await q.release_due_holds() == 6
        assert (await stats(q)).counts == {("ai", "pending"): 6}
        assert q.next_release() is None
        await check_counters(q)


@pytest.mark.asyncio
async def test_a_release_sends_in_series_then_instance_number_then_receipt_order(
    backend: Backend, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="router.store.queue")
    async with backend.running(storage, clock=clock, holds={"ai": STUDY}) as q:
        sent = [  # (series number, instance number), in the order they arrive
            (2, 3), (1, 2), (2, 1), (None, 1), (1, None), (1, 1), (2, 2), (1, 3), (1, 2),
        ]  # fmt: skip
        ids = []
        for sn, num in sent:
            clock.t += 1
            ids.append(await commit(q, ["ai"], series=f"1.2.8.{sn}", series_number=sn, number=num))
        inf = float("inf")
        expected = [
            ids[i]
            for i in sorted(
                range(len(sent)),
                key=lambda i: (
                    inf if sent[i][0] is None else sent[i][0],
                    inf if sent[i][1] is None else sent[i][1],
                    i,
                ),
            )
        ]
        clock.t += 30
        assert await q.release_due_holds() == len(sent)
        order: list[str] = []
        while leases := await q.lease("ai", 2, 60):  # in small batches, as workers do
            order += [le.instance_id for le in leases]
        assert order == expected
    (event,) = released_events(caplog)
    assert event["destination"] == "ai" and event["study_uid"] == "1.2.9"
    assert (event["count"], event["reason"]) == (len(sent), "quiet")


@pytest.mark.asyncio
async def test_each_series_is_its_own_group_and_a_late_instance_starts_a_new_one(
    backend: Backend, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    t0 = clock.t
    caplog.set_level(logging.INFO, logger="router.store.queue")
    async with backend.running(storage, clock=clock, holds={"ai": SERIES}) as q:
        a = [await commit(q, ["ai"], series="1.2.8.1", number=i) for i in range(3)]
        clock.t = t0 + 20
        b = await commit(q, ["ai"], series="1.2.8.2", number=1)
        clock.t = t0 + 30
        assert await q.release_due_holds() == 3  # series 1 only: series 2 is not quiet yet
        assert [le.instance_id for le in await q.lease("ai", 10, 60)] == a
        clock.t = t0 + 40
        late = await commit(q, ["ai"], series="1.2.8.1", number=3)
        entries = {e.instance_id: e for e in await held(q, "ai")}
        assert set(entries) == {b, late}
        assert entries[late].release_at == t0 + 70  # a new group: quiet after it alone
        assert entries[b].release_at == t0 + 50
        clock.t = t0 + 50
        assert await q.release_due_holds() == 1
        assert [le.instance_id for le in await q.lease("ai", 10, 60)] == [b]
        clock.t = t0 + 70
        assert await q.release_due_holds() == 1
        assert [le.instance_id for le in await q.lease("ai", 10, 60)] == [late]
        await check_counters(q)
    events = released_events(caplog)
    assert [(e["series_uid"], e["count"]) for e in events] == [
        ("1.2.8.1", 3),
        ("1.2.8.2", 1),
        ("1.2.8.1", 1),
    ]


@pytest.mark.asyncio
async def test_holds_survive_a_restart_and_one_due_meanwhile_is_released_at_start(
    backend: Backend, storage: Path
) -> None:
    clock = Clock()
    t0 = clock.t
    holds = {"ai": SERIES}
    async with backend.running(storage, clock=clock, holds=holds) as q:
        first = [await commit(q, ["ai"], series="1.2.8.1", number=i) for i in (2, 1)]
        clock.t = t0 + 20
        second = await commit(q, ["ai"], series="1.2.8.2", number=1)
    clock.t = t0 + 10
    async with backend.running(storage, clock=clock, holds=holds) as q:
        assert (await stats(q)).counts == {("ai", "held"): 3}
        assert q.next_release() == t0 + 30
        assert {e.release_at for e in await held(q, "ai")} == {t0 + 30, t0 + 50}
    clock.t = t0 + 35  # series 1 came due while no router ran
    async with backend.running(storage, clock=clock, holds=holds) as q:

        async def released() -> bool:
            return (await stats(q)).counts.get(("ai", "pending")) == 2

        await until_awaited(released)  # series 1 released at start
        assert (await stats(q)).counts == {("ai", "pending"): 2, ("ai", "held"): 1}
        assert [le.instance_id for le in await q.lease("ai", 10, 60)] == first[::-1]
        (e,) = await held(q, "ai")
        assert (e.instance_id, e.release_at) == (second, t0 + 50)
        await check_counters(q)


@pytest.mark.asyncio
async def test_the_timer_releases_and_wakes_the_destination_workers(
    backend: Backend, storage: Path
) -> None:
    """The real clock: nobody calls release_due_holds; a waiting worker is woken."""
    quick = Hold(HoldUntil.SERIES, quiet=0.3, max_wait=60.0)
    async with backend.running(storage, holds={"ai": quick}) as q:
        start = time.time()
        inst = await commit(q, ["ai"], number=1)
        assert q.next_due("ai") is None
        assert await q.wait_for_work("ai", timeout=20)
        (le,) = await q.lease("ai", 10, 60)
        assert le.instance_id == inst
        assert time.time() - start >= 0.3  # not before its quiet passed
        assert q.next_release() is None


@pytest.mark.asyncio
async def test_operator_release_by_destination_study_and_series(
    backend: Backend, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="router.store.queue")
    holds = {"ai": SERIES, "pacs": STUDY}
    async with backend.running(storage, clock=clock, holds=holds) as q:
        s1 = [await commit(q, ["ai", "pacs"], series="1.2.8.1", study="1.9.1") for _ in range(2)]
        s2 = await commit(q, ["ai", "pacs"], series="1.2.8.2", study="1.9.1")
        s3 = await commit(q, ["ai", "pacs"], series="1.2.8.3", study="1.9.2")
        assert (await stats(q)).counts == {("ai", "held"): 4, ("pacs", "held"): 4}
        with pytest.raises(ValueError, match="held"):
            await q.release_holds(Filter(state=State.PENDING))

        # a series: its group at ai; at pacs the whole study holding it
        assert await q.release_holds(Filter(series_uid="1.2.8.1")) == 2 + 3
        assert {le.instance_id for le in await q.lease("ai", 10, 60)} == set(s1)
        assert {le.instance_id for le in await q.lease("pacs", 10, 60)} == {*s1, s2}
        # a study at one destination
        assert await q.release_holds(Filter(destination="ai", study_uid="1.9.1")) == 1
        assert [le.instance_id for le in await q.lease("ai", 10, 60)] == [s2]
        assert await q.release_holds(Filter(destination="ai", study_uid="1.9.1")) == 0
        # a destination
        assert await q.release_holds(Filter(destination="pacs")) == 1
        assert [le.instance_id for le in await q.lease("pacs", 10, 60)] == [s3]
        assert (await stats(q)).counts == {
            ("ai", "held"): 1,
            ("ai", "leased"): 3,
            ("pacs", "leased"): 4,
        }
        await check_counters(q)
    # standalone, while no router runs: everything left
    with backend.admin(storage, write=True, clock=clock) as admin:
        assert admin.release_holds(Filter()) == 1
        assert admin.counts().by_state() == {
            ("ai", "pending"): 1,
            ("ai", "leased"): 3,
            ("pacs", "leased"): 4,
        }
    assert {e["reason"] for e in released_events(caplog)} == {"operator"}
    clock.t += 10_000  # nothing left to release when the router comes back
    async with backend.running(storage, clock=clock, holds=holds) as q:
        assert q.next_release() is None
        assert (await stats(q)).counts == {("ai", "pending"): 4, ("pacs", "pending"): 4}


@pytest.mark.asyncio
async def test_purging_held_deliveries_closes_their_group(backend: Backend, storage: Path) -> None:
    clock = Clock()
    async with backend.running(storage, clock=clock, holds={"ai": SERIES}) as q:
        await commit(q, ["ai", "pacs"], number=1)
        assert q.next_release() == clock.t + 30
        assert await q.purge(Filter(destination="ai")) == 1
        assert q.next_release() is None
        assert (await stats(q)).counts == {("pacs", "pending"): 1}
        clock.t += 5
        await commit(q, ["ai"], number=2)  # a new group, its own quiet
        (e,) = await held(q, "ai")
        assert e.release_at == clock.t + 30
        await check_counters(q)


@pytest.mark.asyncio
async def test_an_identical_repeat_of_a_held_instance_is_dropped(
    backend: Backend, storage: Path
) -> None:
    async with backend.running(storage, clock=Clock(), holds={"ai": SERIES}) as q:
        sink = q.new_sink(Req(sop_instance_uid="1.2.3.77"))
        sink.write(payload(100))
        rec = InstanceRecord(CT, "1.2.3.77", EXPLICIT, "1.9", series_instance_uid="1.8", digest="d")
        first = await q.commit(rec, sink, ["ai"])
        sink = q.new_sink(Req(sop_instance_uid="1.2.3.77"))
        sink.write(payload(100))
        again = await q.commit(rec, sink, ["ai"])
        assert first.stored and not again.stored and again.dropped == ("ai",)
        assert (await stats(q)).counts == {("ai", "held"): 1}


@pytest.mark.asyncio
async def test_set_holds_applies_to_later_commits(backend: Backend, storage: Path) -> None:
    async with backend.running(storage, clock=Clock()) as q:
        await commit(q, ["ai"], number=1)
        q.set_holds({"ai": SERIES})
        await commit(q, ["ai"], number=2)
        q.set_holds({})
        await commit(q, ["ai"], number=3)
        assert (await stats(q)).counts == {("ai", "pending"): 2, ("ai", "held"): 1}
        (e,) = await held(q, "ai")
        assert e.release_at is not None

"""A study of 5,000 instances across 10 series held and released while another study is
committed: the release is one job among the commits, every commit completes, and the
study goes out whole in its send order (benchmarks/holds.py measures the ack rate of
the same with real peers)."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from router.holds import Hold, HoldUntil
from router.store.backend import QueueBackend
from router.store.records import InstanceRecord
from tests.store.helpers import CT, EXPLICIT, Backend, Clock, Req, payload
from tests.store.test_queue import check_counters, stats

STUDY = Hold(HoldUntil.STUDY, quiet=30.0, max_wait=3600.0)
SERIES, PER_SERIES = 10, 500


async def _commit(
    q: QueueBackend, uid: str, study: str, series: int, number: int, dests: list[str]
) -> str:
    sink = q.new_sink(Req(sop_instance_uid=uid))
    sink.write(payload(300, number))
    rec = InstanceRecord(
        CT,
        uid,
        EXPLICIT,
        study,
        series_instance_uid=f"{study}.{series}",
        series_number=series,
        instance_number=number,
    )
    return await q.commit_instance(rec, sink, dests)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_study_of_5000_instances_is_released_whole_while_ingest_goes_on(
    backend: Backend, storage: Path
) -> None:
    clock = Clock()
    items = [(s, i) for s in range(1, SERIES + 1) for i in range(1, PER_SERIES + 1)]
    random.Random(5).shuffle(items)
    ids: dict[str, tuple[int, int]] = {}
    async with backend.running(storage, clock=clock, holds={"ai": STUDY}) as q:

        async def sender(part: list[tuple[int, int]]) -> None:
            for s, i in part:
                ids[await _commit(q, f"1.2.3.{s}.{i}", "1.2.9", s, i, ["ai"])] = (s, i)

        async with anyio.create_task_group() as tg:
            for k in range(8):  # eight associations at once
                tg.start_soon(sender, items[k::8])
        assert (await stats(q)).counts == {("ai", "held"): SERIES * PER_SERIES}

        streamed: list[str] = []
        released = 0

        async def stream() -> None:
            for n in range(400):
                streamed.append(await _commit(q, f"1.2.4.{n}", "1.2.10", 1, n, ["pacs"]))

        clock.t += 30
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            await anyio.sleep(0)  # the stream is committing when the release starts

            async def release() -> None:
                nonlocal released
                released = await q.release_due_holds()

            tg.start_soon(release)
        assert released == SERIES * PER_SERIES
        assert len(streamed) == 400
        assert (await stats(q)).counts == {("ai", "pending"): 5000, ("pacs", "pending"): 400}
        await check_counters(q)
        order = []
        while leases := await q.lease("ai", 256, 60):
            order += [ids[le.instance_id] for le in leases]
        assert order == sorted(items)

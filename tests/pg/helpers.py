"""Helpers of the cluster queue's tests: a running node and its counters; commits and
payloads come from tests/store/helpers.py, shared with the SQLite backend's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from router.store.postgres import PgQueue
from router.store.queue import QueueCounts
from tests.store.helpers import (  # the commits and payloads both backends' tests share
    CT,
    EXPLICIT,
    INLINE_MAX,
    Clock,
    Req,
    commit,
    payload,
    read_source,
)

__all__ = [
    "CT",
    "EXPLICIT",
    "INLINE_MAX",
    "Clock",
    "Req",
    "check_counters",
    "commit",
    "payload",
    "read_source",
    "running",
    "triple",
]


@asynccontextmanager
async def running(dsn: str, storage: Path, **kw: Any) -> AsyncIterator[PgQueue]:
    """A node (``node_id`` default "node-a") serving until the block ends."""
    kw.setdefault("inline_max", INLINE_MAX)
    kw.setdefault("node_id", "node-a")
    q = PgQueue(dsn, storage, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(q.run)
        try:
            yield q
        finally:
            tg.cancel_scope.cancel()


async def check_counters(q: PgQueue) -> None:
    """The node's stats, refreshed, equal a fresh GROUP BY of the cluster."""
    await q.refresh()
    st = q.stats()
    counts, unrouted, active = triple(await q.counts())
    assert st.counts == counts
    assert st.unrouted == unrouted
    assert st.instances == active


def triple(c: QueueCounts) -> tuple[dict[tuple[str, str], int], int, int]:
    """(deliveries per (destination, state), unrouted, instances not done)."""
    return c.by_state(), c.unrouted.count, c.instances

"""Helpers of the cluster queue's tests: a running node, commits, payloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from router.store.postgres import PgQueue
from router.store.queue import InstanceRecord, Lease, QueueCounts

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
INLINE_MAX = 4096


@dataclass(frozen=True)
class Req:
    sop_class_uid: str = CT
    sop_instance_uid: str = "1.2.3.4.5"
    transfer_syntax: str = EXPLICIT


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


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


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


async def commit(
    q: PgQueue,
    size: int,
    dests: list[str],
    *,
    study: str = "1.2.9",
    seed: int = 0,
    received_at: float | None = None,
    digest: str | None = None,
) -> str:
    sink = q.new_sink(Req(sop_instance_uid=f"1.2.3.{seed}"))
    data = payload(size, seed)
    for i in range(0, len(data), 1000):
        sink.write(data[i : i + 1000])
    rec = InstanceRecord(
        CT,
        f"1.2.3.{seed}",
        EXPLICIT,
        study,
        "MOD",
        "ROUTER",
        received_at=received_at,
        digest=digest,
    )
    return await q.commit_instance(rec, sink, dests)


def read_source(lease: Lease) -> bytes:
    src = lease.source
    raw = src.read_bytes() if isinstance(src, Path) else src
    assert len(raw) == lease.size
    return raw[lease.data_offset :]


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

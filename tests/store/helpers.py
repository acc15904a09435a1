"""What the store tests share: the backends under test and instances to commit.

A new backend joins by adding its name to ``BACKENDS``, its error to ``_ERRORS`` and a
branch to :meth:`Backend.queue` / :meth:`Backend.admin` (starting whatever server it
needs); every test of tests/store/test_queue.py then runs on it. ``postgresql`` runs on
the session's throwaway server (tests/pg/server.py), a fresh schema per test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg

from router.store.admin import open_admin
from router.store.backend import AdminBackend, QueueBackend
from router.store.postgres import PgQueue
from router.store.postgres.admin import PgAdmin
from router.store.records import InstanceRecord, Lease
from router.store.sqlite import SqliteQueue
from tests.async_peers import until

BACKENDS = ("sqlite", "postgresql")

#: inline_max of the queues under test: data sets above it are spooled as files
INLINE_MAX = 4096
#: a bound no test reaches unless it sets its own
MAX_QUEUE_INSTANCES = 1_000_000


@dataclass(frozen=True)
class Backend:
    name: str
    #: what a commit breaking the schema's constraints raises
    integrity_error: type[Exception]
    #: postgresql: the database of this test, and the server for fresh ones
    dsn: str | None = None
    server: Any = None

    @property
    def clustered(self) -> bool:
        """Several nodes share the queue: stats() is the cluster's as of the last poll,
        lease expiry is on the database's clock (not the queue's ``clock``)."""
        return self.name == "postgresql"

    def fresh(self) -> Backend:
        """The same backend on an empty database (for each example of a property test)."""
        if self.server is None:
            return self
        return Backend(self.name, self.integrity_error, self.server.create_schema(), self.server)

    def queue(self, storage: Path, **kw: Any) -> QueueBackend:
        kw.setdefault("inline_max", INLINE_MAX)
        kw.setdefault("max_queue_instances", MAX_QUEUE_INSTANCES)
        if self.name == "sqlite":
            return SqliteQueue(storage, **kw)
        if self.name == "postgresql":
            assert self.dsn is not None
            # spool files no row names are swept once older than this (by file time)
            kw.setdefault("orphan_age", 600.0)
            kw.setdefault("node_id", "test")
            return PgQueue(self.dsn, storage, **kw)
        raise AssertionError(f"unknown backend {self.name}")

    def admin(self, storage: Path, *, write: bool = False, **kw: Any) -> AdminBackend:
        if self.name == "sqlite":
            return open_admin(storage, write=write, **kw)
        if self.name == "postgresql":
            assert self.dsn is not None
            return PgAdmin(self.dsn, storage, write=write, **kw)
        raise AssertionError(f"unknown backend {self.name}")

    def admin_without_queue(self, storage: Path) -> AdminBackend:
        """The administration where no router has created a queue (FileNotFoundError)."""
        if self.name == "postgresql":
            return self.fresh().admin(storage)
        return self.admin(storage)

    @asynccontextmanager
    async def running(self, storage: Path, **kw: Any) -> AsyncIterator[QueueBackend]:
        q = self.queue(storage, **kw)
        async with anyio.create_task_group() as tg:
            await tg.start(q.run)
            try:
                yield q
            finally:
                tg.cancel_scope.cancel()


_ERRORS: dict[str, type[Exception]] = {
    "sqlite": sqlite3.IntegrityError,
    "postgresql": psycopg.errors.IntegrityError,
}


def backend_named(name: str, dsn: str | None = None, server: Any = None) -> Backend:
    return Backend(name, _ERRORS[name], dsn, server)


CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


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


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


async def commit(
    q: QueueBackend,
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


async def data_gone(q: QueueBackend, ident: str) -> bool:
    """True once the spool file of ``ident`` is gone. The SQLite queue unlinks the files
    of removed instances in a thread of its own after the commit, so a test waits for
    it (with a deadline) instead of expecting it when the call returns."""
    await until(lambda: not q.spool.path_for(ident).exists())
    return True

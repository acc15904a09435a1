"""The cluster queue's standalone administration: ``dicom-router queue`` on a node
whose router does not answer on its HTTP port acts on the whole cluster's queue here.

Unlike the SQLite queue's, changing needs no exclusive lock: the nodes that run go on
while a command commits, because every change is one transaction with the same row
locks the nodes take (a delivery a node is sending is left to its lease, a purged one
records no outcome). Each call opens a connection of its own and closes it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio
import psycopg

from router.store.hold_release import Released, log_released
from router.store.postgres import commands, ops
from router.store.postgres.schema import SCHEMA_VERSION, schema_version
from router.store.records import Entry, Filter, QueueCounts, SchemaError, StoreError
from router.store.spool import Spool

__all__ = ["PgAdmin"]

T = TypeVar("T")


class PgAdmin:
    """A :class:`~router.store.backend.AdminBackend` on the cluster's database.

    ``write=False`` refuses the changing methods; FileNotFoundError when no router has
    created the queue in that database yet; StoreError when it cannot be reached or
    read (SchemaError for a schema of another release, newer or older)."""

    def __init__(
        self,
        conninfo: str,
        storage_dir: Path,
        *,
        write: bool = True,
        retention: float = 0.0,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 10.0,
    ) -> None:
        self.conninfo = conninfo
        self.storage_dir = Path(storage_dir)
        self.write = write
        self.retention = retention
        self.clock = clock
        self.connect_timeout = connect_timeout
        self._open = True
        version = self._run(schema_version)
        if version == 0:
            raise FileNotFoundError("no queue in the database yet (no router has run on it)")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the queue database has schema version {version}, newer than this"
                f" router's {SCHEMA_VERSION}: upgrade the router"
            )
        if version < SCHEMA_VERSION:
            # the commands read and write this release's columns; upgrading the schema
            # is for a node starting, not for an operator's command on a live cluster
            raise SchemaError(
                f"the queue database has schema version {version}, older than this"
                f" router's {SCHEMA_VERSION}: start a node of this release on it once"
                " (it upgrades the schema at start), or use the release its nodes run"
            )

    def _run(self, fn: Callable[[ops.Conn], Awaitable[T]]) -> T:
        if not self._open:
            raise StoreError("the administration is closed")

        async def call() -> T:
            conn = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
            try:
                async with conn.transaction():
                    return await fn(conn)
            finally:
                await conn.close()

        try:
            # in a thread of its own: callers may be inside an event loop already
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(anyio.run, call).result()
        except psycopg.Error as e:
            raise StoreError(f"the queue database: {' '.join(str(e).split())}") from e

    def _writable(self) -> Spool:
        if not self.write:
            raise RuntimeError("this administration was opened read-only")
        return Spool(self.storage_dir, inline_max=0)

    def close(self) -> None:
        self._open = False

    def __enter__(self) -> PgAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> QueueCounts:
        return self._run(commands.counts)

    def list_deliveries(self, f: Filter = Filter()) -> list[Entry]:
        return self._run(lambda conn: commands.list_deliveries(conn, f, self.clock()))

    def retry_failed(self, f: Filter = Filter()) -> int:
        self._writable()

        async def retry(conn: ops.Conn) -> int:
            dests = await commands.retry_failed(conn, f, self.clock())
            await ops.notify(conn, dests)  # the nodes' idle workers wake at once
            return len(dests)

        return self._run(retry)

    def purge(self, f: Filter) -> int:
        spool = self._writable()

        async def purge(conn: ops.Conn) -> tuple[int, ops.Removed]:
            return await commands.purge(conn, f, self.clock(), self.retention)

        n, removed = self._run(purge)
        spool.remove_all([ident for ident, spooled in removed if spooled])
        return n

    def release_holds(self, f: Filter = Filter()) -> int:
        """Release now the hold groups holding a delivery matching ``f``; the nodes'
        workers are woken and send them (this one logs ``hold_released``)."""
        self._writable()

        async def release(conn: ops.Conn) -> list[Released]:
            released = await commands.release_holds(conn, f, self.clock())
            await ops.notify(conn, sorted({r.destination for r in released}))
            return released

        released = self._run(release)
        log_released(released)
        return sum(r.count for r in released)

    def housekeeping(self) -> int:
        spool = self._writable()
        removed = self._run(lambda conn: ops.housekeeping(conn, self.clock(), self.retention))
        spool.remove_all([ident for ident, spooled in removed if spooled])
        return len(removed)

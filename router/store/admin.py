"""The operator's side of the queue, for the command line, :mod:`router.ops` and the
HTTP API alike: counts by state, lists, retrying dead letters, purging, housekeeping.

While the router runs, these go through its queue (:class:`~router.store.backend.
QueueBackend`: ``counts``, ``list_deliveries``, ``retry_failed``, ``purge``,
``housekeeping``), which the operator API calls. When no router serves that API, the
command line opens the queue's standalone administration here (an
:class:`~router.store.backend.AdminBackend`): reading works next to a running router,
writing is refused while one holds the storage (:class:`~router.store.records.
RouterRunning`). On a cluster (``queue.backend: postgresql``) the administration acts
on the whole cluster's database, next to the nodes that run
(:class:`router.store.postgres.admin.PgAdmin`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from router.config import Config
from router.store.backend import AdminBackend
from router.store.records import Entry, Filter, QueueCounts, StoreError
from router.store.sqlite import DB_NAME, SqliteAdmin

__all__ = [
    "conninfo_of",
    "count_by_sql",
    "has_queue",
    "open_admin",
    "open_admin_for",
    "read_counts",
    "read_deliveries",
]


def has_queue(storage_dir: Path) -> bool:
    """True when a router has created its (SQLite) queue in ``storage_dir``."""
    return (Path(storage_dir) / DB_NAME).exists()


def open_admin(
    storage_dir: Path,
    *,
    write: bool,
    retention: float = 0.0,
    clock: Callable[[], float] = time.time,
    conninfo: str | None = None,
) -> AdminBackend:
    """The standalone administration of the queue in ``storage_dir`` or, given
    ``conninfo``, of the cluster's queue in that PostgreSQL database (its large data
    sets in ``storage_dir``).

    ``write=False``: read-only, without the storage lock. ``write=True``: may change the
    queue; for SQLite raises RouterRunning while a router holds the storage (a cluster's
    database takes changes next to its running nodes). FileNotFoundError when there is
    no queue; StoreError when it cannot be read (e.g. a newer schema) or reached.
    """
    if conninfo is not None:
        from router.store.postgres.admin import PgAdmin

        return PgAdmin(conninfo, storage_dir, write=write, retention=retention, clock=clock)
    return SqliteAdmin(storage_dir, write=write, retention=retention, clock=clock)


def conninfo_of(cfg: Config) -> str | None:
    """The cluster database a config names (None: the SQLite queue in storage.path).
    StoreError when its DSN cannot be read or parsed."""
    if cfg.queue.backend != "postgresql":
        return None
    from router.store.postgres import check_conninfo

    try:
        return check_conninfo(cfg.queue.conninfo())
    except ValueError as e:
        raise StoreError(str(e)) from None


def open_admin_for(cfg: Config, *, write: bool) -> AdminBackend:
    """:func:`open_admin` of the queue ``cfg`` names (SQLite or PostgreSQL)."""
    return open_admin(
        Path(cfg.storage.path),
        write=write,
        retention=cfg.storage.retention,
        conninfo=conninfo_of(cfg),
    )


def read_counts(storage_dir: Path, *, conninfo: str | None = None) -> QueueCounts:
    """A fresh count of the stored rows, read-only (safe next to a running router)."""
    with open_admin(storage_dir, write=False, conninfo=conninfo) as admin:
        return admin.counts()


def read_deliveries(
    storage_dir: Path, f: Filter = Filter(), *, conninfo: str | None = None
) -> list[Entry]:
    """``list_deliveries``, read-only (safe next to a running router)."""
    with open_admin(storage_dir, write=False, conninfo=conninfo) as admin:
        return admin.list_deliveries(f)


def count_by_sql(storage_dir: Path) -> tuple[dict[tuple[str, str], int], int, int]:
    """(deliveries per (destination, state), unrouted, instances not done), counted
    afresh and read-only; for tests that compare against the router's metrics."""
    counts = read_counts(storage_dir)
    return counts.by_state(), counts.unrouted.count, counts.instances

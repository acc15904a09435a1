"""The operator's side of the queue, for the command line, :mod:`router.ops` and the
HTTP API alike: counts by state, lists, retrying dead letters, purging, housekeeping.

While the router runs, these go through its queue (:class:`~router.store.backend.
QueueBackend`: ``counts``, ``list_deliveries``, ``retry_failed``, ``purge``,
``housekeeping``), which the operator API calls. When no router serves that API, the
command line opens the queue's standalone administration here (an
:class:`~router.store.backend.AdminBackend`): reading works next to a running router,
writing is refused while one holds the storage (:class:`~router.store.records.
RouterRunning`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from router.store.backend import AdminBackend
from router.store.records import Entry, Filter, QueueCounts
from router.store.sqlite import DB_NAME, SqliteAdmin

__all__ = ["count_by_sql", "has_queue", "open_admin", "read_counts", "read_deliveries"]


def has_queue(storage_dir: Path) -> bool:
    """True when a router has created its queue in ``storage_dir``."""
    return (Path(storage_dir) / DB_NAME).exists()


def open_admin(
    storage_dir: Path,
    *,
    write: bool,
    retention: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> AdminBackend:
    """The standalone administration of the queue in ``storage_dir``.

    ``write=False``: read-only, without the storage lock. ``write=True``: may change the
    queue; raises RouterRunning while a router holds the storage. FileNotFoundError when
    there is no queue; StoreError when it cannot be read (e.g. a newer schema).
    """
    return SqliteAdmin(storage_dir, write=write, retention=retention, clock=clock)


def read_counts(storage_dir: Path) -> QueueCounts:
    """A fresh count of the stored rows, read-only (safe next to a running router)."""
    with open_admin(storage_dir, write=False) as admin:
        return admin.counts()


def read_deliveries(storage_dir: Path, f: Filter = Filter()) -> list[Entry]:
    """``list_deliveries``, read-only (safe next to a running router)."""
    with open_admin(storage_dir, write=False) as admin:
        return admin.list_deliveries(f)


def count_by_sql(storage_dir: Path) -> tuple[dict[tuple[str, str], int], int, int]:
    """(deliveries per (destination, state), unrouted, instances not done), counted
    afresh and read-only; for tests that compare against the router's metrics."""
    counts = read_counts(storage_dir)
    return counts.by_state(), counts.unrouted.count, counts.instances

"""The durable queue under its historical import path: ``Queue`` is the embedded SQLite
backend (:class:`router.store.sqlite.SqliteQueue`); ``QueueBackend`` is the interface
every backend implements (:mod:`router.store.backend`); the records and the State
vocabulary live in :mod:`router.store.records`, the standalone administration in
:mod:`router.store.admin`.
"""

from __future__ import annotations

from router.store.admin import count_by_sql, read_deliveries
from router.store.backend import AdminBackend, QueueBackend
from router.store.records import (
    CommitResult,
    Entry,
    Filter,
    InstanceRecord,
    Lease,
    QueueClosed,
    QueueCounts,
    QueueStats,
    RouterRunning,
    SchemaError,
    State,
    StateCount,
    StoreError,
)
from router.store.sqlite import DB_NAME, SqliteAdmin, SqliteQueue

#: The router's queue (today's one backend).
Queue = SqliteQueue
#: Standalone administration of that queue (takes the storage lock unless write=False).
QueueAdmin = SqliteAdmin

__all__ = [
    "DB_NAME",
    "AdminBackend",
    "CommitResult",
    "Entry",
    "Filter",
    "InstanceRecord",
    "Lease",
    "Queue",
    "QueueAdmin",
    "QueueBackend",
    "QueueClosed",
    "QueueCounts",
    "QueueStats",
    "RouterRunning",
    "SchemaError",
    "State",
    "StateCount",
    "StoreError",
    "count_by_sql",
    "read_deliveries",
]

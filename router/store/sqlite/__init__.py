"""The embedded queue backend: SQLite in WAL mode at ``storage.path/queue.db``.

- :mod:`~router.store.sqlite.schema`: numbered migrations, connections, storage lock
- :mod:`~router.store.sqlite.core`: the hot path's SQL (commit, lease, outcomes, recovery)
- :mod:`~router.store.sqlite.commands`: the operator commands' SQL (counts, list, retry,
  purge)
- :mod:`~router.store.sqlite.executor`: the DB thread and its group commit
- :mod:`~router.store.sqlite.queue`: :class:`SqliteQueue`, the async facade
- :mod:`~router.store.sqlite.admin`: :class:`SqliteAdmin`, the standalone administration
"""

from router.store.sqlite.admin import SqliteAdmin
from router.store.sqlite.queue import SqliteQueue
from router.store.sqlite.schema import DB_NAME, LOCK_NAME

__all__ = ["DB_NAME", "LOCK_NAME", "SqliteAdmin", "SqliteQueue"]

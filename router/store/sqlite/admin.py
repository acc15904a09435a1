"""The SQLite queue's standalone administration, for the command line while no router
serves the operator API: reading (``status``, ``list``) needs no lock and is safe next to
a running router (WAL readers do not block its writer); changing (``retry``, ``purge``,
``release``, housekeeping) takes the storage lock, so it is refused while a router holds the
directory and a router cannot start meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from router.store.records import Entry, Filter, QueueCounts, StoreError
from router.store.spool import Spool
from router.store.sqlite import commands
from router.store.sqlite import holds as hold_sql
from router.store.sqlite.core import Core, Delta
from router.store.sqlite.schema import DB_NAME, connect, connect_read_only, lock_storage

T = TypeVar("T")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Database errors reach the operator as StoreError (one line, no traceback)."""
    try:
        yield
    except sqlite3.Error as e:
        raise StoreError(str(e)) from e


class SqliteAdmin:
    """A :class:`~router.store.backend.AdminBackend` on ``storage_dir/queue.db``.

    ``write=True`` takes the storage lock (RouterRunning while a router holds it) and
    upgrades an older schema; ``write=False`` opens read-only and changes nothing. Use
    as a context manager: ``with SqliteAdmin(path) as q: q.list_deliveries(...)``.
    """

    def __init__(
        self,
        storage_dir: Path,
        *,
        write: bool = True,
        retention: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.clock = clock
        path = self.storage_dir / DB_NAME
        if not path.exists():
            raise FileNotFoundError(f"no queue database in {self.storage_dir}")
        self._lock_fd = lock_storage(self.storage_dir) if write else -1
        try:
            with _errors():
                self._conn = connect(path) if write else connect_read_only(path)
        except BaseException:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise
        self._open = True
        try:
            # read-only: no spool (opening one would create its directories); inline_max
            # is for receiving, which the administration never does
            spool = Spool(self.storage_dir, inline_max=0) if write else None
        except BaseException:
            self.close()
            raise
        self._core = None if spool is None else Core(self._conn, spool, retention, clock)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._conn.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> SqliteAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _change(self, fn: Callable[[Core, Delta], T]) -> T:
        if self._core is None:
            raise RuntimeError("this administration was opened read-only")
        with _errors():
            result, d = self._core.transaction(fn)
        hold_sql.log_released(d.released)
        return result

    def counts(self) -> QueueCounts:
        with _errors():
            return commands.status_counts(self._conn)

    def list_deliveries(self, f: Filter = Filter()) -> list[Entry]:
        with _errors():
            return commands.list_deliveries(self._conn, f, self.clock())

    def retry_failed(self, f: Filter = Filter()) -> int:
        return self._change(lambda c, d: commands.retry_failed(c, f, d))

    def purge(self, f: Filter) -> int:
        return self._change(lambda c, d: commands.purge(c, f, d))

    def release_holds(self, f: Filter = Filter()) -> int:
        return self._change(lambda c, d: commands.release_holds(c, f, d))

    def housekeeping(self) -> int:
        return self._change(lambda c, d: c.housekeeping(d, limit=1_000_000))

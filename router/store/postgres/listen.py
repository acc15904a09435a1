"""Wake-ups across the cluster: LISTEN on a dedicated connection.

Every transaction that makes deliveries pending (a commit, a retry, a release, a replay
of dead letters) sends ``NOTIFY dicom_router_work, '<destination>'``; each node's
listener wakes its idle workers of that destination at once. Notifications are a hint,
not a record: while the listener is disconnected some are lost, so after every
(re)connection it wakes every destination, and the backend polls the queue slowly as
well (expired leases of a vanished node, due times reached, lost notifications).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
import anyio.abc
import psycopg

from router.store.postgres.ops import CHANNEL

__all__ = ["Listener"]

log = logging.getLogger("router.store.postgres")


class Listener:
    """Run :meth:`run` in a task group; it reconnects by itself until cancelled."""

    def __init__(
        self,
        conninfo: str,
        on_notify: Callable[[str], None],
        on_connect: Callable[[], None],
        *,
        retry_interval: float = 1.0,
        max_retry_interval: float = 30.0,
    ) -> None:
        self.conninfo = conninfo
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.connected = False
        self.connections = 0  # successful connections so far (for tests and logs)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report started once listening (or once the first attempt failed)."""
        delay = self.retry_interval
        started = [False]

        def report() -> None:
            if not started[0]:
                started[0] = True
                task_status.started()

        while True:
            try:
                await self._listen(report)
            except (psycopg.OperationalError, OSError) as e:
                if self.connected:
                    log.warning("queue listener lost the database: %s", e)
                    delay = self.retry_interval
            finally:
                self.connected = False
                report()
            await anyio.sleep(delay)
            delay = min(delay * 2, self.max_retry_interval)

    async def _listen(self, report: Callable[[], None]) -> None:
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            await conn.execute(f"LISTEN {CHANNEL}".encode())
            self.connected = True
            self.connections += 1
            self.on_connect()  # notifications sent while we were away are lost
            report()
            async for n in conn.notifies():
                self.on_notify(n.payload)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

"""The ``backend`` fixture: every queue backend runs the same contract tests.

A new backend joins by adding its name to ``BACKENDS`` and a branch to
:meth:`Backend.queue` / :meth:`Backend.admin` (starting whatever server it needs).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from router.store.admin import open_admin
from router.store.backend import AdminBackend, QueueBackend
from router.store.sqlite import SqliteQueue

BACKENDS = ("sqlite",)

#: inline_max of the queues under test: data sets above it are spooled as files
INLINE_MAX = 4096
#: a bound no test reaches unless it sets its own
MAX_QUEUE_INSTANCES = 1_000_000


@dataclass(frozen=True)
class Backend:
    name: str
    #: what a commit breaking the schema's constraints raises
    integrity_error: type[Exception]

    def queue(self, storage: Path, **kw: Any) -> QueueBackend:
        kw.setdefault("inline_max", INLINE_MAX)
        kw.setdefault("max_queue_instances", MAX_QUEUE_INSTANCES)
        if self.name == "sqlite":
            return SqliteQueue(storage, **kw)
        raise AssertionError(f"unknown backend {self.name}")

    def admin(self, storage: Path, *, write: bool = False, **kw: Any) -> AdminBackend:
        if self.name == "sqlite":
            return open_admin(storage, write=write, **kw)
        raise AssertionError(f"unknown backend {self.name}")

    @asynccontextmanager
    async def running(self, storage: Path, **kw: Any) -> AsyncIterator[QueueBackend]:
        q = self.queue(storage, **kw)
        async with anyio.create_task_group() as tg:
            await tg.start(q.run)
            try:
                yield q
            finally:
                tg.cancel_scope.cancel()


_ERRORS: dict[str, type[Exception]] = {"sqlite": sqlite3.IntegrityError}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    return Backend(name, _ERRORS[name])

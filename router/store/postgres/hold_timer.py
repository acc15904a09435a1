"""A node's one timer of holds: the earliest release time it knows, and the task that
sleeps until then and releases what is due (router/store/postgres/holds.py does it).

The earliest time comes from the database (at start, at every poll, after each release
or purge) and from this node's own commits as they happen. A read of the database may
miss an arrival committed here while it ran, so each read in flight remembers the
earliest arrival since it began and the two are combined: the timer is never set later
than a group this node opened. A time found stale (the group moved later, or another
node released it) costs one release that finds nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterator

import anyio
import psycopg

from router.store.postgres.errors import DatabaseUnavailable
from router.store.records import QueueClosed

__all__ = ["Reading", "ReleaseTimer"]

log = logging.getLogger("router.store.postgres")


class Reading:
    """One read of the earliest release time in flight (see :meth:`ReleaseTimer.read`)."""

    def __init__(self) -> None:
        self.local = math.inf  # the earliest arrival committed here since it began
        self.value: float | None = None  # what the database said
        self.done = False

    def set(self, value: float | None) -> None:
        self.value = value
        self.done = True


class ReleaseTimer:
    def __init__(self, clock: Callable[[], float], poll_interval: float) -> None:
        self.clock = clock
        self.poll_interval = poll_interval
        self.at: float | None = None
        self._wake = anyio.Event()
        self._reads: dict[int, Reading] = {}
        self._ids = itertools.count()

    def arrived(self, at: float) -> None:
        """This node committed an arrival that set a group's release time to ``at``."""
        for r in self._reads.values():
            r.local = min(r.local, at)
        if self.at is None or at < self.at:
            self.at = at
            self._wake.set()

    @contextlib.contextmanager
    def read(self) -> Iterator[Reading]:
        """Around a transaction that reads the earliest release time (``Reading.set``):
        afterwards the timer is set to it, or to an arrival committed here meanwhile if
        that is earlier. Nothing changes when the block fails before ``set``."""
        rid = next(self._ids)
        reading = self._reads[rid] = Reading()
        try:
            yield reading
        finally:
            del self._reads[rid]
        if reading.done:
            at = min(math.inf if reading.value is None else reading.value, reading.local)
            before = self.at
            self.at = None if math.isinf(at) else at
            if self.at is not None and (before is None or self.at < before):
                self._wake.set()

    async def run(self, release_due: Callable[[], Awaitable[int]]) -> None:
        """Sleep until the earliest release time (or an earlier one is set), then call
        ``release_due`` (the deliveries it released); until cancelled or the queue
        closes."""
        while True:
            at = self.at
            if at is not None and at <= self.clock():
                try:
                    n = await release_due()
                except QueueClosed:
                    return
                except (DatabaseUnavailable, psycopg.Error) as e:
                    log.warning("releasing due holds failed: %s", e)
                    await anyio.sleep(min(1.0, self.poll_interval))
                    continue
                again = self.at
                if n == 0 and again is not None and again <= self.clock():
                    # a due group another node is releasing (its row was skipped): look
                    # again shortly instead of spinning until that node commits
                    await anyio.sleep(min(0.1, self.poll_interval))
                continue
            self._wake = anyio.Event()
            wait = math.inf if at is None else at - self.clock()
            with anyio.move_on_after(wait):
                await self._wake.wait()

"""The queue interface: every operation ingest, forward, the operator API, the command
line and the app need from the durable queue, whatever stores it.

A backend provides two things:

- a :class:`QueueBackend`, the running router's queue (async; started once with
  ``await tg.start(queue.run)``), e.g. :class:`router.store.sqlite.SqliteQueue`;
- a :class:`AdminBackend`, the standalone administration the command line uses when no
  router serves the operator API (sync), e.g. :class:`router.store.sqlite.SqliteAdmin`;
  open one with :func:`router.store.admin.open_admin`.

Both speak only the records of :mod:`router.store.records` (states are
:class:`~router.store.records.State`); no SQL, connection or row crosses this line. The
spool (``storage.path``: large data sets as files, partial receipts) is shared by every
backend: :class:`~router.store.spool.Spool`.

Contracts every backend keeps (tests/store/test_queue.py runs them per backend):

- ``commit``/``commit_instance`` return only when the data and its rows are durable
  (then the C-STORE may be acknowledged); on any error nothing of the instance remains.
  They are not cancellable once started.
- An attempt is counted when it is leased; ``release`` gives it back uncounted; a lease
  whose time passed without an outcome is leased again; outcomes apply only to leased
  deliveries (False/0 otherwise).
- An instance is done when every delivery is delivered: its data goes at once, or after
  the retention by ``housekeeping``. Dead letters (``failed``) keep their data.
- Holds (:mod:`router.holds` is the timing): after ``set_holds``, a delivery to a
  destination with a hold is committed ``held``, and in the same transaction its group
  (the series or study UID for that destination) is opened or its release time moved
  by :func:`router.holds.arrive`. Release times are stored, so holds survive restarts.
  The backend runs one timer for the earliest release time (``next_release``), not a
  periodic scan; at start it is set from the stored groups, so a group whose time
  passed while the router was down is released at once. Releasing a group is one
  transaction: its held deliveries become pending in :func:`router.holds.send_order`
  (``lease`` returns them in that order), its group is closed (a later instance of the
  series opens a new one), the destination's waiters are woken, and one
  ``hold_released`` event is logged (destination, series_uid or study_uid, count,
  reason quiet|max_wait|operator). ``lease`` never returns held deliveries.
- ``stats``, ``problem``, ``is_full``, ``next_due`` and ``next_release`` are cheap (no I/O: metrics
  call them on the event loop); ``counts`` is a fresh count of the stored rows.
- Every method but ``run``, ``new_sink``, ``stats``, ``problem``, ``next_due``, ``next_release``,
  ``is_full``, ``set_holds`` and ``wake`` raises
  :class:`~router.store.records.QueueClosed` when the queue is not running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc

from router.holds import Hold
from router.store.records import (
    CommitResult,
    Entry,
    Filter,
    InstanceRecord,
    Lease,
    QueueCounts,
    QueueStats,
)
from router.store.spool import Spool, SpooledSink, StoreRequestLike

__all__ = ["AdminBackend", "QueueBackend"]


class QueueBackend(Protocol):
    """The running router's queue."""

    storage_dir: Path
    spool: Spool
    clock: Callable[[], float]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open, recover (leases back to pending, partial receipts and orphan files
        removed), report started, then serve until cancelled. Runs once."""
        ...

    def set_holds(self, holds: Mapping[str, Hold]) -> None:
        """The hold policy per destination (others are not held): before ``run`` and on
        every reload. Applies to commits from then on; open groups keep their times."""
        ...

    # -- ingest

    def new_sink(self, req: StoreRequestLike) -> SpooledSink: ...

    def is_full(self) -> bool:
        """True when no more instances should be accepted (answer A700)."""
        ...

    async def commit_instance(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> str:
        """Make the instance durable with one delivery per destination (``held`` for a
        destination with a hold, its group moved in the same transaction); its id."""
        ...

    async def commit(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> CommitResult:
        """``commit_instance``, telling what was queued and what was dropped as an
        identical duplicate (only when ``record.digest`` is given)."""
        ...

    # -- forward

    async def lease(
        self,
        destination: str,
        limit: int,
        lease_seconds: float,
        delivered: Sequence[tuple[int, int]] = (),
    ) -> list[Lease]:
        """Up to ``limit`` due deliveries (oldest due first), leased for
        ``lease_seconds``; expired leases are leased again. Each carries the instance's
        Study Instance UID as received (None when it had none): a DICOMweb destination
        sends one study per request. ``delivered``: (delivery id, status) pairs the
        caller delivered since its last lease, recorded first, as :meth:`delivered`
        would (in the same transaction where the backend can: a forwarding session then
        pays one queue transaction per batch, not two). When it raises, they may not
        be recorded: record them with :meth:`delivered`."""
        ...

    async def delivered(self, ids: Sequence[int], status: int = 0x0000) -> int: ...

    async def retry(
        self, id: int, due_at: float, status: int | None = None, error: str | None = None
    ) -> bool: ...

    async def failed(
        self, id: int, status: int | None = None, error: str | None = None
    ) -> bool: ...

    async def release(self, ids: Sequence[int]) -> int: ...

    def next_due(self, destination: str) -> float | None:
        """Clock time of the earliest pending delivery for ``destination``, or None."""
        ...

    async def wait_for_work(self, destination: str, timeout: float | None = None) -> bool:
        """True as soon as work may be available (spurious wake-ups allowed), False when
        ``timeout`` passed first."""
        ...

    def wake(self, destination: str) -> None:
        """Wake whoever waits for work of ``destination``."""
        ...

    # -- holds

    def next_release(self) -> float | None:
        """Clock time of the earliest hold release (the timer's), or None."""
        ...

    async def release_due_holds(self) -> int:
        """Release every group whose release time has come (what the timer calls);
        the deliveries released."""
        ...

    async def release_holds(self, f: Filter = Filter()) -> int:
        """Release now (reason ``operator``) every group holding a delivery that
        matches ``f`` (destination, study, series; ``state`` None or held; no
        ``limit``): each group whole, in its send order. The deliveries released."""
        ...

    # -- metrics

    def stats(self) -> QueueStats: ...

    def problem(self) -> str | None:
        """Why the queue's database cannot be reached right now (for /readyz), or None.
        Cheap (no I/O)."""
        ...

    # -- operator commands (the HTTP API while the router runs)

    async def counts(self) -> QueueCounts: ...

    async def list_deliveries(self, f: Filter = Filter()) -> list[Entry]: ...

    async def retry_failed(self, f: Filter = Filter()) -> int:
        """Dead letters matching ``f`` back to pending with attempts reset."""
        ...

    async def purge(self, f: Filter) -> int:
        """Delete matching deliveries (and unrouted instances) and data left unused."""
        ...

    async def housekeeping(self) -> int:
        """Remove done instances whose retention has passed."""
        ...


class AdminBackend(Protocol):
    """The queue's administration while no router serves the operator API. Opened for
    reading it changes nothing (the write methods raise); opened for writing it is
    refused with :class:`~router.store.records.RouterRunning` where a running router
    must be the only writer. Database errors are
    :class:`~router.store.records.StoreError`."""

    def counts(self) -> QueueCounts: ...

    def list_deliveries(self, f: Filter = Filter()) -> list[Entry]: ...

    def retry_failed(self, f: Filter = Filter()) -> int: ...

    def purge(self, f: Filter) -> int: ...

    def release_holds(self, f: Filter = Filter()) -> int:
        """As :meth:`QueueBackend.release_holds`; the router sends them once it runs."""
        ...

    def housekeeping(self) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> AdminBackend: ...

    def __exit__(self, *exc: object) -> None: ...

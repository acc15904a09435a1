"""The SQLite queue's async facade (:class:`SqliteQueue`, a
:class:`~router.store.backend.QueueBackend`): lifecycle, the in-memory counters that
metrics and the ingest's bound read without SQL, and the wake-ups of idle workers.
Every operation is a job handed straight to the DB thread
(:mod:`router.store.sqlite.executor`).

What ``commit_instance`` guarantees when it returns: a spilled data set has been
fsync'd, renamed into ``spool/<xx>/<id>.dcm`` and its directory fsync'd; the instance
row (with an inline data set as a BLOB) and one delivery row per destination are
committed with ``synchronous=FULL``. Only then may the ingest answer Success.

Holds (:mod:`router.store.sqlite.holds`): a delivery to a destination with a hold is
committed ``held`` and its group's release time moved in the same transaction. One timer
task sleeps until the earliest release time (kept in memory, read from the database at
start and after every release); when it comes, the due groups are released in one job
and the destinations' workers woken. A group whose time passed while the router was down
is released as soon as the queue runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc

from router.holds import Hold
from router.store.records import (
    CommitResult,
    Entry,
    Filter,
    InstanceRecord,
    Lease,
    QueueClosed,
    QueueCounts,
    QueueStats,
    by_status,
)
from router.store.spool import Spool, SpooledSink, StoreRequestLike
from router.store.sqlite import commands
from router.store.sqlite import holds as hold_sql
from router.store.sqlite.core import Core, Delta
from router.store.sqlite.executor import (
    BatchResult,
    CommitJob,
    DbThread,
    Installers,
    Job,
    Remover,
)
from router.store.sqlite.schema import DB_NAME, connect, lock_storage
from router.store.wakeups import WorkWaiters

T = TypeVar("T")

log = logging.getLogger("router.store.queue")


def _stop_in_order(installers: Installers, db: DbThread, remover: Remover) -> None:
    installers.join()
    db.stop()
    db.join()
    remover.stop()
    remover.join()


class SqliteQueue:
    """The queue of one router: start :meth:`run` in the app's task group
    (``await tg.start(queue.run)``), then use the async methods from any task.

    Every method goes through the queue's single executor (one thread, one connection,
    batched transactions), so operator commands are safe while the router runs.
    """

    def __init__(
        self,
        storage_dir: Path,
        *,
        inline_max: int,
        max_queue_instances: int,
        max_batch: int = 512,
        max_pending_jobs: int = 4096,
        retention: float = 0.0,
        housekeeping_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        holds: Mapping[str, Hold] | None = None,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.spool = Spool(self.storage_dir, inline_max=inline_max)
        self.max_queue_instances = max_queue_instances
        self.max_batch = max_batch
        self.retention = retention
        self.housekeeping_interval = housekeeping_interval
        self.clock = clock
        self.max_pending_jobs = max_pending_jobs
        self._db: DbThread | None = None
        self._installers: Installers | None = None
        self._slots = anyio.Semaphore(max_pending_jobs)  # jobs handed over, not yet done
        self._started = False
        self._core: Core | None = None
        self._running = False
        self._counts: Counter[tuple[str, str]] = Counter()
        self._unrouted = 0
        self._active = 0
        self._committing = 0
        self._waiters = WorkWaiters(self.clock)
        self._oldest: dict[str, float] = {}
        self.transactions = 0
        self.commits = 0
        self._holds: Mapping[str, Hold] = dict(holds or {})
        self._next_release: float | None = None
        self._hold_wake = anyio.Event()

    def set_holds(self, holds: Mapping[str, Hold]) -> None:
        """The hold policy per destination (those not in it are not held). Applies to
        instances committed from now on; open groups keep their release times."""
        self._holds = dict(holds)
        if self._core is not None:
            self._core.holds = self._holds

    # -- lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the database, recover, report started, then serve until cancelled."""
        if self._started:
            raise RuntimeError("a Queue runs once")
        self._started = True
        lock_fd = lock_storage(self.storage_dir)
        try:
            core = await anyio.to_thread.run_sync(self._open_and_recover)
            self._core = core
            # the router runs on anyio's asyncio backend (router.dicom._stream needs it)
            loop = asyncio.get_running_loop()
            remover = Remover(self.spool)
            core.discard = remover.put
            db = DbThread(core, self.max_batch, self._batch_done, loop.call_soon_threadsafe)
            installers = Installers(core, db, self._install_failed, loop.call_soon_threadsafe)
            self._db, self._installers = db, installers
            remover.start()
            db.start()
            installers.start()
            self._running = True
            try:
                async with anyio.create_task_group() as tg:
                    if self.retention > 0 and math.isfinite(self.housekeeping_interval):
                        tg.start_soon(self._housekeeping_loop)
                    tg.start_soon(self._hold_timer)
                    task_status.started()
                    await anyio.sleep_forever()
            finally:
                self._running = False
                installers.stop()
                with anyio.CancelScope(shield=True):
                    # jobs handed over finish (their waiters are shielded), installs
                    # first: each hands its commit to the DB thread; then it closes, and
                    # the files of the instances it removed go last
                    await anyio.to_thread.run_sync(_stop_in_order, installers, db, remover)
                    self._db = self._installers = None
        finally:
            os.close(lock_fd)

    def _open_and_recover(self) -> Core:
        conn = connect(self.storage_dir / DB_NAME)
        core = Core(conn, self.spool, self.retention, self.clock)
        core.holds = self._holds
        core.transaction(lambda c, d: c.recover(d))
        if self.retention > 0:
            core.transaction(lambda c, d: c.housekeeping(d, limit=1_000_000))
        counts = commands.status_counts(conn)
        self._counts = Counter(counts.by_state())
        self._unrouted = counts.unrouted.count
        self._active = counts.instances
        for dest in {k[0] for k in counts.deliveries}:
            self._set_minima(dest, core.minima(dest))
        self._next_release = hold_sql.next_release(conn)
        return core

    def _batch_done(self, jobs: Sequence[Job[Any]], res: BatchResult) -> None:
        """In the event loop: count the batch in, wake its waiters, free their slots.
        The waiters are woken whatever happens: they wait shielded from cancellation."""
        try:
            self._apply(res)
        finally:
            slots = self._slots
            for j in jobs:
                if not j.done.done():
                    j.done.set_result(None)
                slots.release()

    def _install_failed(self, job: CommitJob) -> None:
        """In the event loop: an install failed (its sink is cleaned up); wake its waiter."""
        self._batch_done([job], BatchResult(Delta(), {}, committed=False))

    async def _submit(self, job: Job[Any], *, install: bool = False) -> None:
        """Hand ``job`` to the DB thread, or with ``install`` (a spilled commit) to the
        installers, which hand it on (waiting while ``max_pending_jobs`` are in them)."""
        try:  # the usual case, without the checkpoint (a loop pass) acquire() makes
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._slots.acquire()
        db, installers = self._db, self._installers
        if not self._running or db is None or installers is None:
            self._slots.release()
            raise QueueClosed("the queue stopped")
        if install:
            assert isinstance(job, CommitJob)
            installers.put(job)
        else:
            db.put(job)

    def _apply(self, res: BatchResult) -> None:
        d = res.delta
        if res.committed:
            self.transactions += 1
        self.commits += d.commits
        self._counts.update(d.counts)
        self._unrouted += d.unrouted
        self._active += d.active
        for dest, mins in res.minima.items():
            self._set_minima(dest, mins)
        for dest, (due, created) in d.added.items():
            if dest not in res.minima:
                old_due = self._waiters.next_due.get(dest)
                self._waiters.next_due[dest] = due if old_due is None else min(old_due, due)
                old_age = self._oldest.get(dest)
                self._oldest[dest] = created if old_age is None else min(old_age, created)
        for dest in d.wake:
            self._notify(dest)
        if d.hold_reset:
            self._set_next_release(res.next_release)
        elif d.hold_min is not None and (
            self._next_release is None or d.hold_min < self._next_release
        ):
            self._set_next_release(d.hold_min)
        hold_sql.log_released(d.released)

    def _set_next_release(self, at: float | None) -> None:
        earlier = at is not None and (self._next_release is None or at < self._next_release)
        self._next_release = at
        if earlier:
            self._hold_wake.set()

    def _set_minima(self, dest: str, mins: tuple[float | None, float | None]) -> None:
        due, oldest = mins
        self._waiters.set_due(dest, due)
        if oldest is None:
            self._oldest.pop(dest, None)
        else:
            self._oldest[dest] = oldest

    def _notify(self, dest: str) -> None:
        self._waiters.notify(dest)

    def wake(self, destination: str) -> None:
        """Wake whoever waits for work of ``destination`` (e.g. after a reload removed
        it, so its idle workers leave at once)."""
        self._notify(destination)

    async def _hold_timer(self) -> None:
        """The one timer of holds: sleep until the earliest release time (or until an
        earlier one is set), then release what is due. A stale minimum (its group moved
        later) costs one empty release job."""
        while True:
            at = self._next_release
            if at is not None and at <= self.clock():
                try:
                    await self.release_due_holds()
                except QueueClosed:
                    return
                except Exception:  # a database error: logged, tried again shortly
                    log.exception("releasing due holds failed")
                    await anyio.sleep(1.0)
                continue
            self._hold_wake = anyio.Event()
            wait = math.inf if at is None else at - self.clock()
            with anyio.move_on_after(wait):
                await self._hold_wake.wait()

    async def _housekeeping_loop(self) -> None:
        while True:
            await anyio.sleep(self.housekeeping_interval)
            await self.housekeeping()

    async def _call(self, fn: Callable[[Core, Delta], T], *, durable: bool = True) -> T:
        if not self._running:
            raise QueueClosed("the queue is not running")
        job: Job[T] = Job(fn, durable)
        with anyio.CancelScope(shield=True):
            await self._submit(job)
            await job.done
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    # -- ingest side

    def new_sink(self, req: StoreRequestLike) -> SpooledSink:
        return self.spool.new_sink(req)

    def is_full(self) -> bool:
        """True when no more instances should be accepted (answer A700)."""
        return self._active + self._committing >= self.max_queue_instances

    async def commit_instance(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> str:
        """Make the instance durable with one delivery per destination; return its id.

        Returns only after the data and rows are durable (see the module docstring);
        then the C-STORE may be acknowledged. Not cancellable once started (it finishes
        within one batch). Raises QueueClosed when the queue is not running, or the
        error of the transaction; in both cases nothing of the instance remains.
        """
        return (await self.commit(record, sink, destinations)).id

    async def commit(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> CommitResult:
        """:meth:`commit_instance`, telling what was queued and what was dropped as an
        identical duplicate (only when ``record.digest`` is given)."""
        if not self._running:
            raise QueueClosed("the queue is not running")
        if sink.aborted:
            raise ValueError("cannot commit an aborted sink")
        ident = sink.id
        dests = tuple(destinations)
        self._committing += 1
        try:
            with anyio.CancelScope(shield=True):
                job = CommitJob(lambda c, d: c.insert_instance(ident, record, sink, dests, d), sink)
                if not sink.spilled:
                    sink.close()
                try:  # a spilled one is installed first, in an installer thread
                    await self._submit(job, install=sink.spilled)
                except QueueClosed:
                    sink.abort()
                    self.spool.remove(ident)
                    raise
                await job.done
        finally:
            self._committing -= 1
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    # -- forward side

    async def lease(
        self,
        destination: str,
        limit: int,
        lease_seconds: float,
        delivered: Sequence[tuple[int, int]] = (),
    ) -> list[Lease]:
        """Up to ``limit`` due deliveries for ``destination`` (oldest due first), marked
        leased until now + ``lease_seconds``; each attempt is counted here. Expired
        leases of a vanished worker are leased again. ``delivered`` (delivery id,
        status) pairs are recorded first, in the same transaction."""
        groups = by_status(delivered)

        def job(c: Core, d: Delta) -> list[Lease]:
            for status, ids in groups.items():
                c.delivered(ids, status, d)
            return c.lease(destination, limit, lease_seconds, d) if limit > 0 else []

        if limit <= 0 and not groups:
            return []
        return await self._call(job, durable=False)

    async def delivered(self, ids: Sequence[int], status: int = 0x0000) -> int:
        """Leased deliveries were delivered (``status``: 0 or the warning received).
        Instances whose deliveries are all delivered are done. Returns rows changed."""
        ids = list(ids)
        return await self._call(lambda c, d: c.delivered(ids, status, d), durable=False)

    async def retry(
        self, id: int, due_at: float, status: int | None = None, error: str | None = None
    ) -> bool:
        """A leased delivery goes back to pending, due at ``due_at`` (clock time)."""
        return await self._call(lambda c, d: c.reschedule(id, due_at, status, error, d))

    async def failed(self, id: int, status: int | None = None, error: str | None = None) -> bool:
        """A leased delivery becomes a dead letter (its data is kept for a replay)."""
        return await self._call(lambda c, d: c.fail(id, status, error, d))

    async def release(self, ids: Sequence[int]) -> int:
        """Leased deliveries that were not attempted go back to pending (the attempt is
        not counted), e.g. when a worker stops with part of its batch unsent."""
        ids = list(ids)
        return await self._call(lambda c, d: c.release(ids, d), durable=False)

    def next_due(self, destination: str) -> float | None:
        """Clock time of the earliest pending delivery for ``destination``, or None."""
        return self._waiters.next_due.get(destination)

    async def wait_for_work(self, destination: str, timeout: float | None = None) -> bool:
        """Return True as soon as work may be available for ``destination`` (rows
        committed, retried or released, or the earliest due time reached); False when
        ``timeout`` seconds passed first. Spurious wake-ups are possible: lease() may
        then return nothing."""
        return await self._waiters.wait(destination, timeout)

    # -- metrics

    def problem(self) -> str | None:
        """None: the embedded database is a file in ``storage.path`` (a storage that is
        not writable is reported by the app)."""
        return None

    def stats(self) -> QueueStats:
        now = self.clock()
        return QueueStats(
            counts={(dest, str(state)): n for (dest, state), n in self._counts.items() if n},
            oldest_pending_age={k: max(0.0, now - v) for k, v in self._oldest.items()},
            unrouted=self._unrouted,
            instances=self._active,
            committing=self._committing,
            transactions=self.transactions,
            commits=self.commits,
        )

    # -- operator commands and housekeeping

    async def list_deliveries(self, f: Filter = Filter()) -> list[Entry]:
        return await self._call(
            lambda c, d: commands.list_deliveries(c.conn, f, c.clock()), durable=False
        )

    async def retry_failed(self, f: Filter = Filter()) -> int:
        """Dead letters matching ``f`` go back to pending with attempts reset."""
        return await self._call(lambda c, d: commands.retry_failed(c, f, d))

    async def purge(self, f: Filter) -> int:
        """Delete matching deliveries (and unrouted instances); an instance left with
        none loses its data too. Returns the number of deliveries/instances deleted."""
        return await self._call(lambda c, d: commands.purge(c, f, d))

    def next_release(self) -> float | None:
        """Clock time of the earliest hold release, or None (no open group)."""
        return self._next_release

    async def release_due_holds(self) -> int:
        """Release every hold group whose release time has come (what the timer does)."""
        return await self._call(lambda c, d: hold_sql.release_due(c, d))

    async def release_holds(self, f: Filter = Filter()) -> int:
        """Release now the hold groups holding a delivery matching ``f`` (whole)."""
        commands.check_release_filter(f)
        return await self._call(lambda c, d: commands.release_holds(c, f, d))

    async def counts(self) -> QueueCounts:
        """A fresh count of the stored rows (``queue status``), through the DB thread."""
        return await self._call(lambda c, d: commands.status_counts(c.conn), durable=False)

    async def housekeeping(self) -> int:
        """Remove done instances whose retention has passed."""
        return await self._call(lambda c, d: c.housekeeping(d))

"""The SQLite queue's executor: one dedicated thread owns the connection, takes every
job pending as one batch and runs it in one transaction (each job inside a SAVEPOINT,
so one failing job does not fail the others), then wakes the waiting tasks with one
call into the event loop. That is the group commit: many commits from many
associations cost one WAL sync together. The thread is the explicit boundary: jobs
cross it with their own completion, nothing else does. (A dedicated thread, not
anyio's worker pool through a serving task: on the ack path each hand-over costs a
loop iteration and a thread wake-up, measured at about a third of a small instance's
receipt-to-Success time.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as thread_queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from router.store.records import CommitResult
from router.store.spool import Spool, SpooledSink, fsync_dir
from router.store.sqlite import holds as hold_sql
from router.store.sqlite.core import Core, Delta

log = logging.getLogger("router.store.queue")

T = TypeVar("T")


class Job(Generic[T]):
    __slots__ = ("done", "durable", "error", "fn", "result")

    def __init__(self, fn: Callable[[Core, Delta], T], durable: bool) -> None:
        self.fn = fn
        self.durable = durable
        # completed in the event loop, never in the DB thread. A bare future of the
        # running loop, not an anyio.Event: on the ack path every job pays for it, and
        # the Event's backend lookup and checkpoint cost more than the rest of the
        # hand-over (the router runs on anyio's asyncio backend)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.result: T | None = None
        self.error: BaseException | None = None


class CommitJob(Job[CommitResult]):
    __slots__ = ("sink",)

    def __init__(self, fn: Callable[[Core, Delta], CommitResult], sink: SpooledSink) -> None:
        super().__init__(fn, durable=True)
        self.sink = sink


@dataclass
class BatchResult:
    delta: Delta
    minima: dict[str, tuple[float | None, float | None]]  # recomputed after the commit
    committed: bool
    # the earliest hold release, read after the commit when groups were released
    next_release: float | None = None


def run_batch(core: Core, jobs: Sequence[Job[Any]]) -> BatchResult:
    """One transaction for every job (each in a savepoint). Runs in the DB thread."""
    total = Delta()
    dirs = {
        core.spool.subdir_for(j.sink.id)
        for j in jobs
        if isinstance(j, CommitJob) and j.sink.spilled
    }
    try:
        for sub in sorted(dirs):
            fsync_dir(sub)
    except OSError as e:
        for j in jobs:
            if isinstance(j, CommitJob) and j.sink.spilled:
                j.error = e
    live = [j for j in jobs if j.error is None]
    committed = False
    if live:
        core.set_durable(any(j.durable for j in live))
        try:
            core.conn.execute("BEGIN IMMEDIATE")
            ok: list[tuple[Job[Any], Any, Delta]] = []
            if len(live) == 1:  # no savepoint needed: its failure is the transaction's
                d = Delta()
                ok.append((live[0], live[0].fn(core, d), d))
            else:
                for j in live:
                    d = Delta()
                    core.conn.execute("SAVEPOINT job")
                    try:
                        result = j.fn(core, d)
                    except Exception as e:
                        core.conn.execute("ROLLBACK TO job")
                        core.conn.execute("RELEASE job")
                        j.error = e
                    else:
                        core.conn.execute("RELEASE job")
                        ok.append((j, result, d))
            core.conn.execute("COMMIT")
            committed = True
        except Exception as e:
            with contextlib.suppress(sqlite3.Error):
                core.conn.execute("ROLLBACK")
            log.exception("queue transaction failed")
            for j in live:
                j.error = e
            ok = []
        for j, result, _d in ok:
            j.result = result
        if len(ok) == 1:  # the usual batch of one: its delta is the total
            total = ok[0][2]
        else:
            for _j, _result, d in ok:
                total.merge(d)
    # data of failed commits: nothing refers to it
    for j in jobs:
        if isinstance(j, CommitJob) and j.error is not None and j.sink.spilled:
            core.spool.remove(j.sink.id)
    core.remove_data(total.remove)
    minima = {dest: core.minima(dest) for dest in total.touched}
    next_release = hold_sql.next_release(core.conn) if total.hold_reset else None
    return BatchResult(total, minima, committed, next_release)


class _JobThreads:
    """Threads that take jobs from one FIFO until each meets a stop marker. :meth:`stop`
    queues the markers behind the jobs already handed over, so those finish first."""

    _STOP = object()

    def __init__(self, jobs: thread_queue.SimpleQueue[Any] | thread_queue.Queue[Any], *names: str):
        self._jobs = jobs
        self._threads = [
            threading.Thread(target=self._main, name=name, daemon=True) for name in names
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(self._STOP)

    def join(self) -> None:
        for t in self._threads:
            t.join()

    def _main(self) -> None:
        """One job at a time until the stop marker, or until :meth:`_run` says stop."""
        while True:
            job = self._jobs.get()
            if job is self._STOP or not self._run(job):
                return

    def _run(self, job: Any) -> bool:
        """Do one job; False: this thread ends."""
        raise NotImplementedError


class DbThread(_JobThreads):
    """The thread that owns the connection: takes jobs from a thread-safe FIFO, runs
    everything pending as one batch (:func:`run_batch`) and hands each finished batch
    back to the event loop with one ``done`` callback. ``stop`` lets it finish the jobs
    already handed over, close the connection and end."""

    def __init__(
        self,
        core: Core,
        max_batch: int,
        done: Callable[[Sequence[Job[Any]], BatchResult], None],
        call_in_loop: Callable[..., object],
    ) -> None:
        super().__init__(thread_queue.SimpleQueue(), "router-queue-db")
        self._core = core
        self._max_batch = max_batch
        self._done = done
        self._call_in_loop = call_in_loop

    def put(self, job: Job[Any]) -> None:
        self._jobs.put(job)

    def _main(self) -> None:
        try:
            stopping = False
            while not stopping:
                jobs: list[Job[Any]] = []
                item = self._jobs.get()
                while True:
                    if item is self._STOP:
                        stopping = True
                    else:
                        jobs.append(item)
                    if len(jobs) >= self._max_batch:
                        break
                    try:
                        item = self._jobs.get_nowait()
                    except thread_queue.Empty:
                        break
                if jobs:
                    try:
                        res = run_batch(self._core, jobs)
                    except Exception as e:  # a bug: SQL errors are caught per job
                        log.exception("queue batch failed")
                        for j in jobs:
                            if j.error is None:
                                j.error = e
                            if isinstance(j, CommitJob) and j.sink.spilled:
                                with contextlib.suppress(OSError):
                                    self._core.spool.remove(j.sink.id)
                        res = BatchResult(Delta(), {}, committed=False)
                    try:
                        self._call_in_loop(self._done, jobs, res)
                    except RuntimeError:  # the loop is gone: nobody is waiting any more
                        return
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._core.conn.close()


class Installers(_JobThreads):
    """The threads that make a spilled data set durable (fsync, rename into the spool:
    :meth:`~router.store.spool.Spool.install`) and hand its commit straight to the DB
    thread. The event loop waits for the commit's answer alone: going back to the loop
    between the two threads cost a wake-up of each (measured: 0.8 ms p50 per 512 KiB
    instance from the install's end to the batch's start, one association). Several
    threads, so that concurrent associations' fsyncs overlap as they did in anyio's
    worker threads.

    A failed install completes its job with the error, through ``fail`` (called in the
    event loop), after removing what the sink left. :meth:`stop` lets the threads
    finish every job handed over (each then reaches the DB thread), then end: stop
    them, join them, and only then stop the DB thread."""

    def __init__(
        self,
        core: Core,
        db: DbThread,
        fail: Callable[[CommitJob], None],
        call_in_loop: Callable[..., object],
        threads: int = 4,
    ) -> None:
        names = [f"router-queue-install-{i}" for i in range(threads)]
        super().__init__(thread_queue.SimpleQueue(), *names)
        self._core = core
        self._db = db
        self._fail = fail
        self._call_in_loop = call_in_loop

    def put(self, job: CommitJob) -> None:
        self._jobs.put(job)

    def _run(self, job: CommitJob) -> bool:
        sink = job.sink
        try:
            self._core.spool.install(sink)
        except BaseException as e:  # whatever it is, the job carries it to its waiter
            sink.abort()
            with contextlib.suppress(OSError):
                self._core.spool.remove(sink.id)
            job.error = e
            try:
                self._call_in_loop(self._fail, job)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                return False
            return True
        self._db.put(job)
        return True


class Remover(_JobThreads):
    """The thread that deletes the spool files of removed instances, after the commit
    that removed their rows. Unlinking a large file frees its blocks (measured: 0.4-1 ms
    per 512 KiB file on ext4): in the DB thread, every acknowledgement waiting behind a
    batch of delivered marks paid for those unlinks. A removal lost to a crash or a stop
    leaves a file without a row, which the next start sweeps as an orphan.

    ``put`` waits while ``max_pending`` batches of ids are queued: the DB thread slows
    down rather than the backlog growing without bound."""

    def __init__(self, spool: Spool, max_pending: int = 256) -> None:
        super().__init__(thread_queue.Queue(maxsize=max_pending), "router-queue-remove")
        self._spool = spool

    def put(self, ids: Sequence[str]) -> None:
        if ids:
            self._jobs.put(ids)

    def _run(self, ids: Sequence[str]) -> bool:
        try:
            self._spool.remove_all(ids)
        except Exception:  # a bug: the thread must live on, or the DB thread blocks
            log.exception("removing spool files failed")
        return True

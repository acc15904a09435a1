"""Group commit for the cluster queue: every ``commit_instance`` waiting meanwhile goes
into one PostgreSQL transaction, so many associations share one WAL flush.

One writer task takes a commit from a bounded stream, then everything else pending (up
to ``max_batch``), and runs them in one transaction on a pooled connection: every
instance in two pipelined statements (the fast path) or, when a row is refused or a
duplicate check is needed (``digest``), one by one, each inside a SAVEPOINT so one
failing commit does not fail the others. Spilled data sets were
already fsync'd and renamed into the spool by their callers; the writer fsyncs the
spool subdirectories of the batch before the transaction begins, so a committed row
never names a file that a crash could lose.

When the transaction fails, its callers get the error; nothing of theirs is reported as
committed. Their spool files are removed, except when the error came from the COMMIT
itself (the connection broke while the server may have committed): then the files stay,
because a row may name them; a file no row names is an orphan that housekeeping removes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from router.holds import Hold
from router.store.postgres import ops
from router.store.postgres.errors import CommitUncertain, DatabaseUnavailable
from router.store.queue import CommitResult, InstanceRecord, QueueClosed
from router.store.spool import Spool, SpooledSink, fsync_dir

__all__ = ["BatchOutcome", "CommitJob", "GroupWriter"]

log = logging.getLogger("router.store.postgres")


@dataclass(eq=False)
class CommitJob:
    ident: str
    record: InstanceRecord
    sink: SpooledSink
    destinations: tuple[str, ...]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: CommitResult | None = None
    error: BaseException | None = None


@dataclass
class BatchOutcome:
    """What one batch did, for the backend's counters and wake-ups."""

    jobs: int = 0
    committed: int = 0
    woken: set[str] = field(default_factory=set)
    release_at: float | None = None  # the earliest hold release time its arrivals set


class GroupWriter:
    """Run :meth:`run` in a task group; :meth:`submit` from any task."""

    def __init__(
        self,
        pool: AsyncConnectionPool[ops.Conn],
        spool: Spool,
        node_id: str,
        clock: Callable[[], float],
        *,
        max_batch: int = 512,
        max_pending: int = 4096,
        on_batch: Callable[[BatchOutcome], None] = lambda o: None,
    ) -> None:
        self.pool = pool
        self.spool = spool
        self.node_id = node_id
        self.clock = clock
        self.max_batch = max_batch
        self.on_batch = on_batch
        send, receive = anyio.create_memory_object_stream[CommitJob](max_pending)
        self._send: MemoryObjectSendStream[CommitJob] = send
        self._receive: MemoryObjectReceiveStream[CommitJob] = receive
        self._running = False
        #: destination -> its hold policy (set by the queue, on every reload)
        self.hold_of: Mapping[str, Hold] = {}

    async def submit(self, job: CommitJob) -> CommitResult:
        """Queue ``job`` and wait for its transaction (not cancellable: the outcome of a
        commit must be known). Raises the transaction's error."""
        if not self._running:
            raise QueueClosed("the queue is not running")
        with anyio.CancelScope(shield=True):
            try:
                await self._send.send(job)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise QueueClosed("the queue stopped") from None
            await job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._running = True
        task_status.started()
        try:
            async for first in self._receive:
                jobs = [first]
                while len(jobs) < self.max_batch:
                    try:
                        jobs.append(self._receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                with anyio.CancelScope(shield=True):
                    await self._run_batch(jobs)
        finally:
            self._running = False
            self._send.close()
            # commits handed over but never run: their callers must not wait forever
            while True:
                try:
                    job = self._receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                job.error = QueueClosed("the queue stopped")
                job.done.set()
            self._receive.close()  # a sender still waiting gets QueueClosed

    async def _run_batch(self, jobs: list[CommitJob]) -> None:
        outcome = BatchOutcome(jobs=len(jobs))
        try:
            await self._sync_dirs(jobs)
            live = [j for j in jobs if j.error is None]
            if live:
                await self._transaction(live, outcome)
        finally:
            remove = [
                j.ident
                for j in jobs
                if j.sink.spilled
                and (
                    (j.error is not None and not isinstance(j.error, CommitUncertain))
                    or (j.result is not None and not j.result.stored)
                )
            ]
            if remove:
                await anyio.to_thread.run_sync(self.spool.remove_all, remove)
            for j in jobs:
                if j.error is None and j.result is None:
                    j.error = QueueClosed("the commit did not run")
                j.done.set()
            self.on_batch(outcome)

    async def _sync_dirs(self, jobs: Sequence[CommitJob]) -> None:
        dirs = sorted({self.spool.subdir_for(j.ident) for j in jobs if j.sink.spilled})
        if not dirs:
            return
        try:
            await anyio.to_thread.run_sync(_fsync_dirs, dirs)
        except OSError as e:
            for j in jobs:
                if j.sink.spilled:
                    j.error = e

    async def _transaction(self, jobs: list[CommitJob], outcome: BatchOutcome) -> None:
        committing = False
        results: list[tuple[CommitJob, CommitResult]] = []
        release: list[float] = []
        hold_of = self.hold_of  # one policy for the whole batch (set_holds replaces it)
        try:
            async with self.pool.connection() as conn:
                try:
                    now = self.clock()
                    await conn.execute(b"BEGIN")
                    await ops.lock_digests(conn, [j.record for j in jobs])
                    plain = [j for j in jobs if j.record.digest is None]
                    one_by_one = [j for j in jobs if j.record.digest is not None]
                    if len(plain) > 1 and await self._insert_many(
                        conn, plain, now, hold_of, results, release
                    ):
                        plain = []
                    for j in plain + one_by_one:
                        res = await self._insert_one(
                            conn, j, now, hold_of, release, single=len(jobs) == 1
                        )
                        if res is not None:
                            results.append((j, res))
                    # a held delivery is for nobody's workers until its group is released
                    woken = {d for _, r in results for d in r.queued if d not in hold_of}
                    await ops.notify(conn, sorted(woken))
                    committing = True
                    await conn.execute(b"COMMIT")
                except BaseException:
                    if not committing and not conn.broken:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute(b"ROLLBACK")
                    raise
        except Exception as e:
            err: BaseException
            if committing and isinstance(e, psycopg.OperationalError):
                err = CommitUncertain(f"the connection broke during COMMIT: {e}")
                err.__cause__ = e
            elif isinstance(e, psycopg.OperationalError | PoolTimeout):
                err = DatabaseUnavailable(f"the queue database is unavailable: {e}")
                err.__cause__ = e
            else:
                err = e
            log.warning("queue commit of %d instances failed: %s", len(jobs), e)
            for j in jobs:
                if j.error is None:
                    j.error = err
            return
        for j, res in results:
            j.result = res
        outcome.committed = sum(1 for _, r in results if r.stored)
        outcome.woken = woken
        outcome.release_at = min(release, default=None)

    async def _insert_many(
        self,
        conn: ops.Conn,
        jobs: list[CommitJob],
        now: float,
        hold_of: Mapping[str, Hold],
        results: list[tuple[CommitJob, CommitResult]],
        release: list[float],
    ) -> bool:
        """The fast path: every instance of the batch in two pipelined statements. False
        (rolled back to before it) when a row was refused: then one by one."""
        await conn.execute(b"SAVEPOINT batch")
        items = [ops.NewInstance(j.ident, j.record, j.sink, j.destinations) for j in jobs]
        try:
            done, release_at = await ops.insert_many(conn, items, self.node_id, now, self.hold_of)
        except psycopg.OperationalError:
            raise  # the connection, not a row: fails the batch
        except psycopg.Error:
            await conn.execute(b"ROLLBACK TO SAVEPOINT batch")
            return False
        await conn.execute(b"RELEASE SAVEPOINT batch")
        results.extend(zip(jobs, done, strict=True))
        if release_at is not None:
            release.append(release_at)
        return True

    async def _insert_one(
        self,
        conn: ops.Conn,
        j: CommitJob,
        now: float,
        hold_of: Mapping[str, Hold],
        release: list[float],
        *,
        single: bool,
    ) -> CommitResult | None:
        """One instance in its own savepoint (unless it is the whole batch); None with
        ``j.error`` set when its rows were refused."""
        if not single:
            await conn.execute(b"SAVEPOINT job")
        try:
            res, release_at = await ops.insert_instance(
                conn, j.ident, j.record, j.sink, j.destinations, self.node_id, now, hold_of
            )
        except psycopg.OperationalError:
            raise  # the connection, not this job: fails the batch
        except psycopg.Error as e:
            if single:
                raise
            await conn.execute(b"ROLLBACK TO SAVEPOINT job")
            j.error = e
            return None
        if not single:
            await conn.execute(b"RELEASE SAVEPOINT job")
        if release_at is not None:
            release.append(release_at)
        return res


def _fsync_dirs(dirs: Sequence[Path]) -> None:
    for d in dirs:
        fsync_dir(d)

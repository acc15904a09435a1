"""The queue on PostgreSQL: several router nodes share one queue.

Nodes that name the same database and the same storage directory (a file system every
node mounts) are one router: any node commits instances, any node leases and delivers
any delivery. The rows and the state machine are the SQLite queue's (see
router/store/postgres/ops.py for what the cluster adds: node, fencing token and
database-clock expiry on every lease); docs/cluster.md describes the deployment.

The methods are those of the SQLite ``Queue`` with the same meaning, so the router's
ingest and forward sides use either backend the same way. Differences a caller sees:

- an outcome (``delivered``, ``retry``, ``failed``, ``release``) applies only to a
  delivery this node leased and still holds: its lease's fencing token is remembered
  here, and a lease taken over by another node after expiry records nothing;
- the node renews the leases it holds (every third of their length, for at most
  ``max_hold`` seconds), so a lease expires only when its node falls silent, not
  because a send is slow;
- ``stats()`` reports the whole cluster's numbers, refreshed every ``poll_interval``
  (counters of commits and transactions are this node's);
- a database that cannot be reached raises :class:`DatabaseUnavailable` (never a
  success); the pool replaces broken connections and the next call may succeed.

Durability of ``commit_instance``: a spilled data set is fsync'd, renamed into the
spool and its directory fsync'd before the transaction; the rows (an inline data set as
``bytea``) commit with ``synchronous_commit`` on. Only then may the ingest answer
Success.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from router.holds import Hold
from router.store.hold_release import Released, log_released
from router.store.postgres import commands, ops, upkeep
from router.store.postgres import holds as pg_holds
from router.store.postgres.errors import DatabaseUnavailable
from router.store.postgres.hold_timer import ReleaseTimer
from router.store.postgres.leases import HeldLeases
from router.store.postgres.listen import Listener
from router.store.postgres.upkeep import NODE_ID, check_conninfo, default_node_id
from router.store.postgres.writer import BatchOutcome, CommitJob, GroupWriter
from router.store.queue import (
    CommitResult,
    Entry,
    Filter,
    InstanceRecord,
    Lease,
    QueueClosed,
    QueueCounts,
    QueueStats,
)
from router.store.records import by_status
from router.store.spool import Spool, SpooledSink, StoreRequestLike
from router.store.wakeups import WorkWaiters

__all__ = ["PgQueue", "check_conninfo", "default_node_id"]  # the last two: from upkeep

log = logging.getLogger("router.store.postgres")

_EVERYTHING = Filter()


class PgQueue:
    """The cluster queue of one node: start :meth:`run` in the app's task group
    (``await tg.start(queue.run)``), then use the async methods from any task."""

    def __init__(
        self,
        conninfo: str,
        storage_dir: Path,
        *,
        node_id: str | None = None,
        inline_max: int = 64 * 1024,
        max_queue_instances: int = 100_000,
        max_batch: int = 512,
        max_pending_jobs: int = 4096,
        retention: float = 0.0,
        housekeeping_interval: float = 60.0,
        poll_interval: float = 2.0,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        orphan_age: float = 86_400.0,
        sweep_interval: float | None = None,
        max_hold: float = 3600.0,
        wait_at_start: bool = False,
        holds: Mapping[str, Hold] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id if node_id is not None else default_node_id()
        if not NODE_ID.fullmatch(self.node_id):
            raise ValueError(
                f"node_id {self.node_id!r}: use letters, digits, '.', '_' or '-' (at most 63)"
            )
        self.conninfo = conninfo
        self.storage_dir = Path(storage_dir)
        self.spool = Spool(self.storage_dir, inline_max=inline_max)
        # partial receipts per node: a node sweeps its own at start, never another's
        self.spool.tmp_dir = self.spool.tmp_dir / self.node_id
        self.spool.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.max_queue_instances = max_queue_instances
        self.max_batch = max_batch
        self.max_pending_jobs = max_pending_jobs
        self.retention = retention
        self.housekeeping_interval = housekeeping_interval
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.orphan_age = orphan_age
        # how often orphans are looked for; by default a quarter of their grace, 1h at most
        self.sweep_interval = (
            sweep_interval if sweep_interval is not None else min(3600.0, orphan_age / 4)
        )
        self.clock = clock
        # True: run() waits for an unreachable database (problem() says why) instead of
        # raising DatabaseUnavailable
        self.wait_at_start = wait_at_start
        self._problem: str | None = None
        self._pool: AsyncConnectionPool[ops.Conn] | None = None
        self._writer: GroupWriter | None = None
        self.listener: Listener | None = None
        self._started = False
        self._running = False
        self.held = HeldLeases(max_hold)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._unrouted = 0
        self._active = 0
        self._committing = 0
        self._waiters = WorkWaiters(self.clock)
        self._oldest: dict[str, float] = {}
        self.transactions = 0
        self.commits = 0
        self._holds: Mapping[str, Hold] = dict(holds or {})
        self._timer = ReleaseTimer(clock, poll_interval)

    def set_holds(self, holds: Mapping[str, Hold]) -> None:
        """The hold policy per destination (those not in it are not held). Applies to
        instances committed from now on; open groups keep their release times."""
        self._holds = dict(holds)
        if self._writer is not None:
            self._writer.hold_of = self._holds

    # -- lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, migrate the schema, take back this node's old leases, report
        started, then serve until cancelled."""
        if self._started:
            raise RuntimeError("a PgQueue runs once")
        self._started = True
        pool = upkeep.make_pool(
            self.conninfo, self.pool_size, self.connect_timeout, f"queue-{self.node_id}"
        )
        try:
            if self.wait_at_start:
                await upkeep.wait_for_database(self.conninfo, self.connect_timeout, self._trouble)
            try:
                await pool.open(wait=True, timeout=self.connect_timeout)
            except PoolTimeout as e:
                raise DatabaseUnavailable(
                    f"cannot connect to the queue database within {self.connect_timeout:g}s: {e}"
                ) from e
            self._problem = None
            self._pool = pool
            async with pool.connection() as conn:
                await upkeep.prepare(conn, self.node_id, self.clock())
                with self._timer.read() as reading:
                    snap = await commands.snapshot(conn)
                    reading.set(snap.next_release)
                self._apply(snap)
            swept = await anyio.to_thread.run_sync(self.spool.sweep_tmp)
            if swept:
                log.info("removed %d partial receipts from %s", swept, self.spool.tmp_dir)
            writer = GroupWriter(
                pool,
                self.spool,
                self.node_id,
                self.clock,
                max_batch=self.max_batch,
                max_pending=self.max_pending_jobs,
                on_batch=self._batch_done,
            )
            writer.hold_of = self._holds
            self.listener = Listener(self.conninfo, self._work_now, self._wake_all)
            async with anyio.create_task_group() as tg:
                await tg.start(writer.run)
                self._writer = writer
                await tg.start(self.listener.run)
                tg.start_soon(self._poll_loop)
                tg.start_soon(self._renew_loop)
                tg.start_soon(self._timer.run, self.release_due_holds)
                if self.retention > 0 and math.isfinite(self.housekeeping_interval):
                    every = self.housekeeping_interval
                    tg.start_soon(upkeep.housekeep_every, every, self.housekeeping)
                self._running = True
                # before anything is received here, then every sweep_interval
                await upkeep.sweep(self._short_tx, self.spool, self.orphan_age)
                if await upkeep.check_spool_files(self._short_tx, self.spool, self.clock()):
                    with contextlib.suppress(DatabaseUnavailable, psycopg.Error):
                        await self.refresh()  # the counters show the dead letters at once
                tg.start_soon(
                    upkeep.sweep_every,
                    self.sweep_interval,
                    self._short_tx,
                    self.spool,
                    self.orphan_age,
                )
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    self._running = False
        finally:
            self._running = False
            self._pool = None
            with anyio.CancelScope(shield=True):
                await pool.close()

    def _trouble(self, problem: str) -> None:
        self._problem = problem

    def problem(self) -> str | None:
        """Why the database is unreachable (the last poll or operation failed), or None."""
        return self._problem

    @contextlib.asynccontextmanager
    async def _tx(self, *, durable: bool = True) -> AsyncIterator[ops.Conn]:
        """A pooled connection inside a transaction. ``durable=False`` for leases and
        delivered/released outcomes: lost by a database crash, they only cause a resend
        (at least once), as in the SQLite queue."""
        pool = self._pool
        if not self._running or pool is None:
            raise QueueClosed("the queue is not running")
        try:
            async with pool.connection() as conn, conn.transaction():
                if not durable:
                    await conn.execute(b"SET LOCAL synchronous_commit = off")
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            self._problem = upkeep.one_line(e)
            raise DatabaseUnavailable(f"the queue database is unavailable: {e}") from e

    async def _remove_data(self, removed: ops.Removed) -> None:
        spooled = [ident for ident, sp in removed if sp]
        if spooled:
            await anyio.to_thread.run_sync(self.spool.remove_all, spooled)

    # -- ingest side

    def new_sink(self, req: StoreRequestLike) -> SpooledSink:
        return self.spool.new_sink(req)

    def is_full(self) -> bool:
        """True when no more instances should be accepted (answer A700); the cluster's
        instances not done, as of the last poll, plus this node's commits in flight."""
        return self._active + self._committing >= self.max_queue_instances

    async def commit_instance(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> str:
        """Make the instance durable with one delivery per destination; return its id
        (see the module docstring). Raises QueueClosed, DatabaseUnavailable (then nothing
        is committed, or for CommitUncertain perhaps: never acknowledge) or the error of
        the transaction."""
        return (await self.commit(record, sink, destinations)).id

    async def commit(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> CommitResult:
        """:meth:`commit_instance`, telling what was queued and what was dropped as an
        identical duplicate (only when ``record.digest`` is given)."""
        writer = self._writer
        if not self._running or writer is None:
            raise QueueClosed("the queue is not running")
        if sink.aborted:
            raise ValueError("cannot commit an aborted sink")
        self._committing += 1
        try:
            with anyio.CancelScope(shield=True):
                if sink.spilled:
                    try:
                        await anyio.to_thread.run_sync(self.spool.install, sink)
                    except BaseException:
                        sink.abort()
                        self.spool.remove(sink.id)
                        raise
                else:
                    sink.close()
                job = CommitJob(sink.id, record, sink, tuple(destinations))
                try:
                    result = await writer.submit(job)
                except QueueClosed:
                    self.spool.remove(sink.id)
                    raise
        finally:
            self._committing -= 1
        return result

    def _batch_done(self, outcome: BatchOutcome) -> None:
        if outcome.committed or outcome.woken:
            self.transactions += 1
        self.commits += outcome.committed
        self._active += outcome.committed
        for dest in outcome.woken:
            self._work_now(dest)
        if outcome.release_at is not None:
            self._timer.arrived(outcome.release_at)

    # -- forward side

    async def lease(
        self,
        destination: str,
        limit: int,
        lease_seconds: float,
        delivered: Sequence[tuple[int, int]] = (),
    ) -> list[Lease]:
        """Up to ``limit`` due deliveries for ``destination`` (oldest due first), leased to
        this node until the database's now() + ``lease_seconds``; each attempt is counted
        here. Leases of any node that expired are taken over. ``delivered`` pairs are
        recorded first (their own transaction: they are fenced by their tokens)."""
        groups = by_status(delivered)
        for status, ids in groups.items():
            await self.delivered(ids, status)
        if limit <= 0:
            return []
        now = self.clock()
        async with self._tx(durable=False) as conn:
            got = await ops.lease(
                conn, self.spool, destination, limit, lease_seconds, self.node_id, now
            )
            nxt = await ops.next_due(conn, destination)
        self._waiters.set_due(destination, nxt)
        since = anyio.current_time()
        for lease, token in got:
            self.held.add(lease.delivery_id, token, lease_seconds, since)
        return [lease for lease, _ in got]

    async def renew_leases(self) -> int:
        """Extend every lease this node holds (for at most ``max_hold`` seconds from its
        start) to the database's now() + its length: a live node keeps its deliveries
        however long a send takes; a silent one loses them after one lease. Leases found
        taken over are forgotten (their outcomes would record nothing). Returns the
        number renewed."""
        items = self.held.renewable(anyio.current_time())
        if not items:
            return 0
        async with self._tx(durable=False) as conn:
            renewed = await ops.renew(conn, items)
        lost = self.held.lost(items, renewed)
        if lost:
            log.warning("%d leases of this node were taken over by another node", len(lost))
            self.held.forget(lost)
        return len(renewed)

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.held.renew_interval())
            try:
                await self.renew_leases()
            except (DatabaseUnavailable, psycopg.Error) as e:
                log.warning("renewing leases failed: %s", e)

    async def delivered(self, ids: Sequence[int], status: int = 0x0000) -> int:
        """Leased deliveries were delivered; instances whose deliveries are all
        delivered are done. Returns rows changed (fenced-off ones are not)."""
        held = self.held.tokens(ids)
        if not held:
            return 0
        async with self._tx(durable=False) as conn:
            n, removed = await ops.delivered(conn, held, status, self.clock(), self.retention)
        self.held.forget([i for i, _ in held])
        self._active = max(0, self._active - len(removed))  # until the next poll
        await self._remove_data(removed)
        return n

    async def retry(
        self, id: int, due_at: float, status: int | None = None, error: str | None = None
    ) -> bool:
        """A leased delivery goes back to pending, due at ``due_at`` (clock time)."""
        token = self.held.token(id)
        if token is None:
            return False
        now = self.clock()
        async with self._tx() as conn:
            dest = await ops.reschedule(conn, id, token, due_at, status, error, now)
            if dest is not None and due_at <= now:
                await ops.notify(conn, [dest])
        self.held.forget([id])
        if dest is None:
            return False
        self._waiters.set_due(dest, min(due_at, self._waiters.next_due.get(dest, math.inf)))
        self._notify(dest)
        return True

    async def failed(self, id: int, status: int | None = None, error: str | None = None) -> bool:
        """A leased delivery becomes a dead letter (its data is kept for a replay)."""
        token = self.held.token(id)
        if token is None:
            return False
        async with self._tx() as conn:
            ok = await ops.fail(conn, id, token, status, error, self.clock())
        self.held.forget([id])
        return ok

    async def release(self, ids: Sequence[int]) -> int:
        """Leased deliveries that were not attempted go back to pending (the attempt is
        not counted), e.g. when a worker stops with part of its batch unsent."""
        held = self.held.tokens(ids)
        if not held:
            return 0
        async with self._tx(durable=False) as conn:
            dests = await ops.release(conn, held, self.clock())
            await ops.notify(conn, dests)
        self.held.forget([i for i, _ in held])
        for dest in set(dests):
            self._work_now(dest)
        return len(dests)

    def next_due(self, destination: str) -> float | None:
        """Clock time of the earliest pending delivery for ``destination``, or None (as
        known to this node: its own changes, notifications and the last poll)."""
        return self._waiters.next_due.get(destination)

    async def wait_for_work(self, destination: str, timeout: float | None = None) -> bool:
        """Return True as soon as work may be available for ``destination`` (a
        notification, a poll that found work due or leases expired, the earliest due
        time reached); False when ``timeout`` seconds passed first. Spurious wake-ups
        are possible: lease() may then return nothing."""
        return await self._waiters.wait(destination, timeout)

    def wake(self, destination: str) -> None:
        """Wake whoever waits for work of ``destination``."""
        self._notify(destination)

    def _notify(self, dest: str) -> None:
        self._waiters.notify(dest)

    def _work_now(self, dest: str) -> None:
        """Work for ``dest`` is due now (a notification, a release, expired leases)."""
        self._waiters.set_due(dest, min(self.clock(), self._waiters.next_due.get(dest, math.inf)))
        self._notify(dest)

    def _wake_all(self) -> None:
        """After the listener (re)connected: notifications may have been lost."""
        self._waiters.notify_all()

    # -- the cluster's numbers

    async def refresh(self) -> None:
        """Read the cluster's counts and minima now; wake destinations with work."""
        with self._timer.read() as reading:
            async with self._tx(durable=False) as conn:
                snap = await commands.snapshot(conn)
            reading.set(snap.next_release)
        self._problem = None
        self._apply(snap)

    def _apply(self, snap: commands.Snapshot) -> None:
        old_due = self._waiters.next_due
        self._counts = snap.counts
        self._unrouted = snap.unrouted
        self._active = snap.active
        self._oldest = dict(snap.oldest)
        self._waiters.next_due = dict(snap.next_due)
        for dest in snap.expired:
            self._work_now(dest)
        for dest, due in snap.next_due.items():
            if due < old_due.get(dest, math.inf):
                self._notify(dest)  # earlier than its waiters were told

    async def _poll_loop(self) -> None:
        while True:
            await anyio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except (DatabaseUnavailable, psycopg.Error) as e:
                log.warning("queue poll failed: %s", e)

    # -- holds

    def next_release(self) -> float | None:
        """Clock time of the earliest hold release this node knows (its own arrivals,
        releases and the last poll: another node's new group is seen within
        ``poll_interval``), or None."""
        return self._timer.at

    async def _release(
        self, fn: Callable[[ops.Conn], Awaitable[tuple[list[Released], bool]]]
    ) -> tuple[int, bool]:
        """Run a release in one transaction that also notifies the destinations and reads
        the earliest release time left; then wake, log and set the timer."""
        with self._timer.read() as reading:
            async with self._tx() as conn:
                released, more = await fn(conn)
                dests = sorted({r.destination for r in released})
                await ops.notify(conn, dests)
                left = await pg_holds.next_release(conn)
            reading.set(left)
        for dest in dests:
            self._work_now(dest)
        log_released(released)
        return sum(r.count for r in released), more

    async def release_due_holds(self) -> int:
        """Release every hold group whose release time has come, unless another node
        is releasing it right now; the deliveries released here."""
        now = self.clock()
        total = 0
        more = True
        while more:
            n, more = await self._release(lambda conn: pg_holds.release_due(conn, now))
            total += n
        return total

    async def release_holds(self, f: Filter = _EVERYTHING) -> int:
        """Release now the hold groups holding a delivery matching ``f`` (whole)."""
        pg_holds.check_release_filter(f)

        async def release(conn: ops.Conn) -> tuple[list[Released], bool]:
            return await commands.release_holds(conn, f, self.clock()), False

        n, _ = await self._release(release)
        return n

    def stats(self) -> QueueStats:
        now = self.clock()
        return QueueStats(
            counts={k: v for k, v in self._counts.items() if v},
            oldest_pending_age={k: max(0.0, now - v) for k, v in self._oldest.items()},
            unrouted=self._unrouted,
            instances=self._active,
            committing=self._committing,
            transactions=self.transactions,
            commits=self.commits,
        )

    async def counts(self) -> QueueCounts:
        """A fresh count of the whole cluster's rows, by SQL now."""
        async with self._tx(durable=False) as conn:
            return await commands.counts(conn)

    # -- operator commands and housekeeping (on the whole cluster)

    async def list_deliveries(self, f: Filter = _EVERYTHING) -> list[Entry]:
        async with self._tx(durable=False) as conn:
            return await commands.list_deliveries(conn, f, self.clock())

    async def retry_failed(self, f: Filter = _EVERYTHING) -> int:
        """Dead letters matching ``f`` go back to pending with attempts reset."""
        async with self._tx() as conn:
            dests = await commands.retry_failed(conn, f, self.clock())
            await ops.notify(conn, dests)
        for dest in set(dests):
            self._work_now(dest)
        return len(dests)

    async def purge(self, f: Filter) -> int:
        """Delete matching deliveries (and unrouted instances); an instance left with
        none loses its data too, a hold group left with none is closed. Returns the
        number of deliveries/instances deleted."""
        with self._timer.read() as reading:
            async with self._tx() as conn:
                n, removed = await commands.purge(conn, f, self.clock(), self.retention)
                left = await pg_holds.next_release(conn)
            reading.set(left)
        await self._remove_data(removed)
        return n

    async def housekeeping(self) -> int:
        """Remove done instances whose retention has passed."""
        async with self._tx() as conn:
            removed = await ops.housekeeping(conn, self.clock(), self.retention)
        await self._remove_data(removed)
        return len(removed)

    def _short_tx(self) -> contextlib.AbstractAsyncContextManager[ops.Conn]:
        return self._tx(durable=False)

    async def sweep_orphans(self, min_age: float = 86_400.0) -> int:
        """Remove spool files no row names, older than ``min_age`` seconds (see
        :func:`router.store.postgres.upkeep.sweep_orphans`)."""
        return await upkeep.sweep_orphans(self._short_tx, self.spool, min_age)

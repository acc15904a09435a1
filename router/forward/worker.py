"""Per-destination forwarding, independent of the destination's kind: lease, open a
session, send, record each outcome.

The :class:`Forwarder` runs as one task; it owns one task group per destination with
``max_associations`` workers in it, reconciled on reload (:meth:`Forwarder.reconfigure`).
The workers of a destination share one circuit breaker. A worker leases a batch of due
deliveries, opens a session for it through the destination's kind
(:mod:`router.forward.kind`; C-STORE in :mod:`router.forward.dimse`), sends the leases
one by one, and keeps the session while more work that fits it arrives within the
destination's ``idle_release``. Outcomes follow the pure policies in
:mod:`router.forward.outcome` and :mod:`router.forward.backoff`; the settings come from
:mod:`router.forward.destination`. This module only does the I/O around them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from router import logs, syntaxes
from router.config import Config
from router.forward import destination
from router.forward.backoff import CircuitBreaker, DeadLetter, decide
from router.forward.dimse import Transcoder
from router.forward.kind import Answered, SendResult, Session, TransportError, Unsendable
from router.forward.outcome import Outcome, TransportFailure, classify_status, classify_transport
from router.forward.runtime import Batch, DestinationRuntime
from router.forward.waits import first_of
from router.metrics import Metrics
from router.store.queue import Lease, QueueClosed
from router.store.queue import QueueBackend as Queue
from router.store.records import QueueUnavailable, by_status
from router.tls import client_context

__all__ = ["IDLE_RECHECK", "LINGER", "DestinationRuntime", "Forwarder"]

log = logging.getLogger("router.forward")

# How long a worker with nothing due sleeps before looking again, at most; new work
# wakes it at once through the queue's event.
IDLE_RECHECK = 30.0
# While a session is open and the worker has caught up, it waits this long for more
# instances before leasing again: ten or more per queue transaction instead of one,
# for a few milliseconds of latency.
LINGER = 0.02
# While the queue's database is unreachable, workers look again after this long, doubling
# up to QUEUE_BACKOFF_MAX: forwarding pauses, nothing is counted as an attempt.
QUEUE_BACKOFF = 0.5
QUEUE_BACKOFF_MAX = 5.0

# Failures where nothing of the batch reached the destination: every lease waits.
_UNREACHABLE = (
    TransportFailure.CONNECT_REFUSED,
    TransportFailure.TIMEOUT,
    TransportFailure.REJECTED_TRANSIENT,
    TransportFailure.REJECTED_PERMANENT,
)


class Forwarder:
    """Runs the workers of every destination of ``config``; :meth:`reconfigure` swaps
    in a new config (addresses, policies, batch sizes, destinations, worker counts)."""

    def __init__(
        self,
        config: Config,
        queue: Queue,
        metrics: Metrics,
        *,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        linger: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.config = config
        self._linger = linger
        self._queue = queue
        self._metrics = metrics
        self._rand = rand
        self._clock = clock
        self._runtimes: dict[str, DestinationRuntime] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._transcoder = Transcoder(
            queue.spool.tmp_dir,
            max_concurrent=config.transcode.max_concurrent,
            max_decoded_bytes=config.transcode.max_decoded_bytes,
        )
        self.stopping = anyio.Event()
        self.done = anyio.Event()

    # -- lifecycle and reconciliation

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every destination's workers; return once :meth:`stop` was called and
        each worker has finished its current send."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._reconcile()
                task_status.started()
                await self.stopping.wait()
        finally:
            self._tg = None
            self.done.set()

    def stop(self) -> None:
        """No new batches; workers stop after their current send."""
        self.stopping.set()
        for rt in self._runtimes.values():
            rt.notify()
            self._queue.wake(rt.name)

    def reconfigure(self, old: Config, new: Config) -> None:
        """Take ``new`` (synchronous: called at the reload's swap). A destination added
        gets its workers; one removed, or workers beyond a lowered ``max_associations``,
        stop after their current send (their deliveries stay queued)."""
        self.config = new
        self._transcoder.configure(new.transcode.max_concurrent, new.transcode.max_decoded_bytes)
        for name, rt in self._runtimes.items():
            if old.destinations.get(name) != new.destinations.get(name):
                rt.notify()  # waiting on the breaker: look again
                self._queue.wake(name)  # idle: look again (and leave if no longer wanted)
        self._reconcile()

    def notify(self, name: str) -> None:
        """Wake the workers of ``name`` waiting on its breaker."""
        rt = self._runtimes.get(name)
        if rt is not None:
            rt.notify()

    def workers(self, name: str) -> int:
        """How many workers of ``name`` are running."""
        rt = self._runtimes.get(name)
        return len(rt.workers) if rt is not None else 0

    def breaker(self, name: str) -> CircuitBreaker | None:
        """The circuit breaker shared by the workers of ``name`` (None before it ran)."""
        rt = self._runtimes.get(name)
        return rt.breaker if rt is not None else None

    def _reconcile(self) -> None:
        if self._tg is None or self.stopping.is_set():
            return
        for name in self.config.destinations:
            rt = self._runtime(name)
            if not rt.running:
                rt.running = True
                self._tg.start_soon(self._destination, rt)
            else:
                self._start_workers(rt)  # none yet while its task has not begun: it will

    def _runtime(self, name: str) -> DestinationRuntime:
        rt = self._runtimes.get(name)
        if rt is None:
            rt = DestinationRuntime(name, destination.breaker(self.config.destinations[name]))
            self._runtimes[name] = rt
        return rt

    def _start_workers(self, rt: DestinationRuntime) -> None:
        # the config, not the plan: building a plan loads TLS files, not done at a swap
        dest = self.config.destinations.get(rt.name)
        if rt.group is None or dest is None:
            return
        for index in range(dest.max_associations):
            if index not in rt.workers:
                rt.workers.add(index)
                rt.group.start_soon(self._worker, rt, index)

    async def _destination(self, rt: DestinationRuntime) -> None:
        """The task group of one destination's workers; ends when they all have."""
        async with anyio.create_task_group() as group:
            rt.group = group
            self._start_workers(rt)
        rt.group = None
        rt.running = False
        if rt.name not in self.config.destinations and self._runtimes.get(rt.name) is rt:
            del self._runtimes[rt.name]
        elif not self.stopping.is_set():
            self._reconcile()  # re-added while its last workers were leaving

    def _plan(self, rt: DestinationRuntime) -> destination.Plan | None:
        """The destination's current settings; None once it left the config."""
        dest = self.config.destinations.get(rt.name)
        if dest is None:
            return None
        if rt.source is not dest or rt.plan is None:
            if rt.tls_source is not dest.tls:
                rt.tls_source = dest.tls
                rt.ssl_context = client_context(dest.tls) if dest.tls is not None else None
            rt.plan = destination.plan(self.config, rt.name, rt.ssl_context, self._transcoder)
            rt.source = dest
            rt.breaker.failure_threshold = rt.plan.failure_threshold
            rt.breaker.probe_interval = rt.plan.probe_interval
        return rt.plan

    def _wanted(self, rt: DestinationRuntime, index: int) -> destination.Plan | None:
        plan = self._plan(rt)
        if self.stopping.is_set() or plan is None or index >= plan.max_associations:
            return None
        return plan

    # -- the worker loop

    async def _worker(self, rt: DestinationRuntime, index: int) -> None:
        """One worker; returns when the destination leaves the config or its index is
        beyond ``max_associations`` (its deliveries stay queued and visible), or when
        stopping."""
        logs.event(log, logging.DEBUG, "worker_started", destination=rt.name, worker=index)
        try:
            while (plan := self._wanted(rt, index)) is not None:
                try:
                    await self._round(rt, plan, index)
                except QueueUnavailable as e:
                    # the queue's database went away: pause; the queue reconnects itself
                    logs.event(
                        log, logging.WARNING, "queue_unavailable", destination=rt.name, error=str(e)
                    )
                    await self._pause(QUEUE_BACKOFF_MAX)
        finally:
            rt.workers.discard(index)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless stopping first."""
        with anyio.move_on_after(seconds):
            await self.stopping.wait()

    async def _persist(self, what: str, call: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Record an outcome, waiting out a queue database that went away (the lease is
        still this node's and renewed once the database is back; a lease taken over
        meanwhile records nothing). Gives up when stopping: the node's next start takes
        its leases back."""
        delay = QUEUE_BACKOFF
        while True:
            try:
                await call(*args)
                return
            except QueueUnavailable as e:
                if self.stopping.is_set():
                    logs.event(
                        log, logging.WARNING, "outcome_not_recorded", what=what, error=str(e)
                    )
                    return
                logs.event(log, logging.WARNING, "queue_unavailable", what=what, error=str(e))
                await self._pause(delay)
                delay = min(delay * 2, QUEUE_BACKOFF_MAX)

    async def _round(self, rt: DestinationRuntime, plan: destination.Plan, index: int) -> None:
        # taken before looking: a change (reload, breaker) from now on ends the wait below
        changed = rt.changed
        now = self._clock()
        if not rt.breaker.allow(now):
            probe_at = rt.breaker.next_probe_at()
            await self._wait(changed, None if probe_at is None else max(0.0, probe_at - now))
            return
        if rt.breaker.consecutive_failures >= rt.breaker.failure_threshold:
            await self._probe(rt, plan)  # half-open: this worker holds the one probe
            return
        leases = await self._queue.lease(rt.name, plan.batch_size, plan.lease_seconds)
        if not leases:
            due = self._queue.next_due(rt.name)
            timeout = IDLE_RECHECK if due is None else max(0.0, due - self._clock())
            await self._wait_for_work(rt.name, changed, min(timeout, IDLE_RECHECK))
            return
        await self._session(rt, plan, index, leases)

    async def _wait(self, changed: anyio.Event, timeout: float | None) -> None:
        """Until ``timeout``, ``changed`` or stopping."""
        limit = IDLE_RECHECK if timeout is None else timeout
        await first_of(limit, self.stopping.wait, changed.wait)

    async def _wait_for_work(self, name: str, changed: anyio.Event, timeout: float) -> None:
        """Until work may be due, ``changed`` (the destination's config or breaker),
        ``timeout`` or stopping."""

        async def work() -> None:
            await self._queue.wait_for_work(name, timeout)

        await first_of(timeout, self.stopping.wait, work, changed.wait)

    def _up(self, rt: DestinationRuntime, up: bool) -> None:
        now = self._clock()
        if up:
            rt.breaker.record_success(now)
        else:
            rt.breaker.record_failure(now)
        self._metrics.set_destination_up(rt.name, up)
        rt.notify()

    async def _probe(self, rt: DestinationRuntime, plan: destination.Plan) -> None:
        try:
            echo = await plan.kind.echo()
        except TransportError as e:
            logs.event(log, logging.WARNING, "probe_failed", destination=rt.name, error=str(e))
            self._up(rt, False)
            return
        logs.event(log, logging.INFO, "probe", destination=rt.name, result=echo.detail)
        self._up(rt, echo.ok)

    # -- one session: the batch it was opened for and the batches that follow on it

    async def _session(
        self, rt: DestinationRuntime, plan: destination.Plan, index: int, leases: list[Lease]
    ) -> None:
        batch = Batch(list(leases), last_lease=len(leases))
        try:
            async with plan.kind.open(leases) as session:
                self._opened(rt)
                try:
                    await self._stream(rt, plan, index, session, batch)
                    self._metrics.association_closed("out", "released")
                except BaseException:
                    self._metrics.association_closed("out", "aborted")
                    raise
        except TransportError as e:
            await self._session_failed(rt, plan, batch, e)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle(batch)

    def _opened(self, rt: DestinationRuntime) -> None:
        self._metrics.association_opened("out")
        if rt.breaker.consecutive_failures:
            self._up(rt, True)
        else:
            self._metrics.set_destination_up(rt.name, True)

    async def _stream(
        self,
        rt: DestinationRuntime,
        plan: destination.Plan,
        index: int,
        session: Session,
        batch: Batch,
    ) -> None:
        """Send in queue order until stopping, the next lease does not fit the session,
        or nothing more came within ``idle_release``."""
        while not self.stopping.is_set():
            if not batch.unsent:
                if not await self._more(rt, plan, index, batch):
                    return
                continue
            if not session.fits(batch.unsent[0]):
                return  # it needs other presentation contexts: a new session
            if self._profile_changed(rt, plan):
                return  # a reload changed the profile or its key: send with the new one
            lease = batch.current = batch.unsent.pop(0)
            result = await session.send(lease, batch.unsent)
            batch.current = None
            batch.idle_resumed = False
            await self._record(rt, lease, result, batch)

    def _profile_changed(self, rt: DestinationRuntime, plan: destination.Plan) -> bool:
        now = self._plan(rt)
        return now is not None and now is not plan and now.profile != plan.profile

    async def _more(
        self, rt: DestinationRuntime, plan: destination.Plan, index: int, batch: Batch
    ) -> bool:
        """Lease the next batch for an open session, waiting up to ``idle_release`` for
        work to arrive; False: release the session."""
        if self._wanted(rt, index) is None:
            return False
        if batch.last_lease < plan.batch_size:
            # caught up with the senders: let a batch gather instead of paying a queue
            # transaction for every instance
            await self._linger(LINGER)
        deadline = anyio.current_time() + plan.idle_release
        waited = False
        while True:
            changed = rt.changed
            more = await self._lease_settling(rt, plan, batch.delivered)
            batch.last_lease = len(more)
            if more:
                batch.unsent.extend(more)
                batch.idle_resumed = waited
                return True
            left = deadline - anyio.current_time()
            if left <= 0 or self._wanted(rt, index) is None:
                return False
            waited = True
            due = self._queue.next_due(rt.name)
            await self._wait_for_work(
                rt.name, changed, left if due is None else min(left, max(0.0, due - self._clock()))
            )

    async def _session_failed(
        self, rt: DestinationRuntime, plan: destination.Plan, batch: Batch, e: TransportError
    ) -> None:
        current = batch.current
        if current is not None and batch.idle_resumed and e.failure is TransportFailure.ABORTED:
            # the peer closed the association while it waited idle: send again on a new
            # one at once; the attempt is not counted, the destination is not down
            logs.event(
                log,
                logging.INFO,
                "idle_association_lost",
                destination=rt.name,
                error=str(e),
                in_flight=current.instance_id,
            )
            batch.unsent.insert(0, current)
            batch.current = None
            return
        logs.event(
            log,
            logging.WARNING,
            "forward_failed",
            destination=rt.name,
            failure=e.failure.value,
            error=str(e),
            in_flight=current.instance_id if current else "-",
            unsent=len(batch.unsent),
        )
        if current is not None:
            batch.current = None
            await self._after_failure(
                rt.name, plan, current, classify_transport(e.failure), None, str(e)
            )
        elif e.failure in _UNREACHABLE:
            unsent, batch.unsent = batch.unsent, []
            for lease in unsent:
                await self._after_failure(rt.name, plan, lease, Outcome.TRANSIENT, None, str(e))
        self._up(rt, False)

    async def _settle(self, batch: Batch) -> None:
        """At the session's end: record what was delivered; what was not attempted (or
        never answered, when cancelled) goes back to pending."""
        try:
            await self._flush(batch.delivered)
            back = [lease.delivery_id for lease in batch.unsent]
            if batch.current is not None:
                back.append(batch.current.delivery_id)
            if back:
                await self._persist("release", self._queue.release, back)
        except QueueClosed:
            pass  # stopping: leases return to pending at the next start

    # -- outcomes

    async def _record(
        self, rt: DestinationRuntime, lease: Lease, result: SendResult, batch: Batch
    ) -> None:
        if isinstance(result, Unsendable):
            if result.conversion_failed:
                self._metrics.transcoded(rt.name, ok=False)
            await self._dead_letter(rt.name, lease, None, result.reason)
            return
        if result.conversion is not None:
            self._converted(rt.name, lease, result)
        if result.profile is not None:
            logs.event(
                log,
                logging.DEBUG,
                "deidentified" if result.profile.deidentified else "profile_applied",
                destination=rt.name,
                instance=lease.instance_id,
                profile=result.profile.profile,
                sop_instance_uid=lease.sop_instance_uid,
                sent_sop_instance_uid=result.profile.sop_instance_uid,
            )
        await self._record_status(rt, lease, result, batch.delivered)

    def _converted(self, name: str, lease: Lease, result: Answered) -> None:
        assert result.conversion is not None
        self._metrics.transcoded(name, ok=True)
        logs.event(
            log,
            logging.INFO,
            "transcoded",
            destination=name,
            instance=lease.instance_id,
            sop_instance_uid=lease.sop_instance_uid,
            source=syntaxes.name(result.conversion.source),
            target=syntaxes.name(result.conversion.target),
            changes="; ".join(result.conversion.changes) or "-",
        )

    async def _flush(self, delivered: list[tuple[int, int]]) -> None:
        if not delivered:
            return
        groups = by_status(delivered)
        delivered.clear()
        for status, ids in groups.items():
            await self._persist("delivered", self._queue.delivered, ids, status)

    async def _lease_settling(
        self, rt: DestinationRuntime, plan: destination.Plan, delivered: list[tuple[int, int]]
    ) -> list[Lease]:
        """The next leases of an open session, with what it delivered since the last
        ones recorded in the same queue transaction (one per batch instead of two). If
        that fails, the delivered marks are recorded on their own, waiting out a
        database that went away, before the error goes on."""
        if not delivered:
            return await self._queue.lease(rt.name, plan.batch_size, plan.lease_seconds)
        try:
            more = await self._queue.lease(
                rt.name, plan.batch_size, plan.lease_seconds, tuple(delivered)
            )
        except QueueUnavailable:
            await self._flush(delivered)
            raise
        delivered.clear()
        return more

    async def _record_status(
        self,
        rt: DestinationRuntime,
        lease: Lease,
        result: Answered,
        delivered: list[tuple[int, int]],
    ) -> None:
        status = result.status
        outcome = classify_status(status)
        if outcome.delivered:
            delivered.append((lease.delivery_id, status))
            self._metrics.delivered(
                rt.name, self._clock() - lease.received_at, warning=outcome is Outcome.WARNING
            )
            logs.event(
                log,
                logging.INFO,
                "forwarded",
                destination=rt.name,
                instance=lease.instance_id,
                sop_instance_uid=lease.sop_instance_uid,
                status=f"{status:04x}",
                attempt=lease.attempt,
            )
            return
        plan = self._plan(rt)
        if plan is None:
            await self._persist("release", self._queue.release, [lease.delivery_id])
            return
        await self._after_failure(rt.name, plan, lease, outcome, status, result.comment)

    async def _after_failure(
        self,
        name: str,
        plan: destination.Plan,
        lease: Lease,
        outcome: Outcome,
        status: int | None,
        error: str | None,
    ) -> None:
        now = self._clock()
        decision = decide(
            plan.policy, lease.attempt, now, self._rand(), permanent=outcome is Outcome.PERMANENT
        )
        detail = error or (f"status {status:04x}" if status is not None else "failed")
        if isinstance(decision, DeadLetter):
            await self._dead_letter(name, lease, status, f"{detail} ({decision.reason})")
            return
        await self._persist(
            "retry", self._queue.retry, lease.delivery_id, decision.at, status, detail
        )
        self._metrics.retry_scheduled(name)
        logs.event(
            log,
            logging.WARNING,
            "retry_scheduled",
            destination=name,
            instance=lease.instance_id,
            attempt=lease.attempt,
            status=f"{status:04x}" if status is not None else "-",
            delay=round(decision.delay, 3),
            error=detail,
        )

    async def _dead_letter(self, name: str, lease: Lease, status: int | None, error: str) -> None:
        await self._persist("failed", self._queue.failed, lease.delivery_id, status, error)
        self._metrics.forwarded(name, "failed")
        logs.event(
            log,
            logging.ERROR,
            "dead_letter",
            destination=name,
            instance=lease.instance_id,
            sop_instance_uid=lease.sop_instance_uid,
            status=f"{status:04x}" if status is not None else "-",
            error=error,
        )

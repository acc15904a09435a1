"""Per-destination forwarding: lease, associate, stream, record each outcome.

Each destination has ``max_associations`` workers sharing one circuit breaker. A worker
leases a batch of due deliveries, opens one association proposing exactly the
presentation contexts the batch needs, sends each data set straight from the spool
(no decoding), and keeps the association while more work that fits it is due. Outcomes
follow the pure policies in :mod:`router.forward.outcome` and
:mod:`router.forward.backoff`; this module only does the I/O around them.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio

from router import logs, syntaxes
from router.config import Config, Destination
from router.dicom import (
    Association,
    AssociationRejected,
    ConnectError,
    DicomError,
    DicomTimeout,
    NoPresentationContext,
    associate,
)
from router.forward.backoff import CircuitBreaker, DeadLetter, RetryPolicy, decide
from router.forward.outcome import (
    Outcome,
    TransportFailure,
    classify_status,
    classify_transport,
)
from router.metrics import Metrics
from router.store.queue import Lease, QueueClosed
from router.store.queue import QueueBackend as Queue
from router.tls import client_context
from router.transcode import Transcoded, TranscodeError, transcode

log = logging.getLogger("router.forward")

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255
# How long a worker with nothing due sleeps before looking again, at most; new work
# wakes it at once through the queue's event.
IDLE_RECHECK = 30.0
# While an association is open and the worker has caught up, it waits this long for
# more instances before leasing again: ten or more per queue transaction instead of
# one, for a few milliseconds of latency.
LINGER = 0.02


def connect(
    cfg: Config,
    dest: Destination,
    contexts: Sequence[tuple[str, Sequence[str]]],
    ssl_context: ssl.SSLContext | None,
) -> AbstractAsyncContextManager[Association]:
    """An association to ``dest`` with its configured AE titles, limits and timeouts."""
    return associate(
        dest.host,
        dest.port,
        calling_ae=dest.calling_ae_title or cfg.ae_title,
        called_ae=dest.ae_title,
        contexts=contexts,
        max_pdu_length=dest.max_pdu_length,
        connect_timeout=dest.connect_timeout,
        acse_timeout=dest.acse_timeout,
        dimse_timeout=dest.dimse_timeout,
        network_timeout=dest.network_timeout,
        ssl_context=ssl_context,
    )


def transport_failure(exc: BaseException) -> TransportFailure:
    """The network layer's exception as the pure layer's failure kind."""
    if isinstance(exc, AssociationRejected):
        return (
            TransportFailure.REJECTED_TRANSIENT
            if exc.transient
            else TransportFailure.REJECTED_PERMANENT
        )
    if isinstance(exc, ConnectError | OSError):
        return TransportFailure.CONNECT_REFUSED
    if isinstance(exc, DicomTimeout | TimeoutError):
        return TransportFailure.TIMEOUT
    if isinstance(exc, NoPresentationContext):
        return TransportFailure.NO_CONTEXT
    return TransportFailure.ABORTED


def policy_of(dest: Destination) -> RetryPolicy:
    r = dest.retry
    return RetryPolicy(
        max_attempts=r.max_attempts,
        initial_backoff=r.initial_backoff,
        max_backoff=r.max_backoff,
        multiplier=r.multiplier,
        jitter=r.jitter,
    )


@dataclass
class DestinationRuntime:
    """What the workers of one destination share."""

    name: str
    breaker: CircuitBreaker
    changed: anyio.Event = field(default_factory=anyio.Event)
    ssl_context: ssl.SSLContext | None = None
    tls_source: object = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class Forwarder:
    """Runs the workers of every destination. ``config`` returns the current config, so
    a reload changes addresses, policies and batch sizes without a restart."""

    def __init__(
        self,
        config: Callable[[], Config],
        queue: Queue,
        metrics: Metrics,
        *,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._queue = queue
        self._metrics = metrics
        self._rand = rand
        self._clock = clock
        self._runtimes: dict[str, DestinationRuntime] = {}
        self.stopping = anyio.Event()
        self._transcode_limiter: anyio.CapacityLimiter | None = None

    def runtime(self, name: str) -> DestinationRuntime:
        dest = self._config().destinations[name]
        rt = self._runtimes.get(name)
        if rt is None:
            cb = dest.circuit_breaker
            rt = DestinationRuntime(name, CircuitBreaker(cb.failures, cb.probe_interval))
            self._runtimes[name] = rt
        if rt.tls_source is not dest.tls:
            rt.tls_source = dest.tls
            rt.ssl_context = client_context(dest.tls) if dest.tls is not None else None
        return rt

    def notify(self, name: str) -> None:
        """Wake the workers of ``name`` waiting on its breaker (config changed)."""
        rt = self._runtimes.get(name)
        if rt is not None:
            rt.notify()

    # -- the worker loop

    async def worker(self, name: str, index: int) -> None:
        """One worker of destination ``name``; returns when the destination leaves the
        config (its deliveries stay queued and visible) or when stopping."""
        logs.event(log, logging.DEBUG, "worker_started", destination=name, worker=index)
        while not self.stopping.is_set():
            cfg = self._config()
            dest = cfg.destinations.get(name)
            if dest is None or index >= dest.max_associations:
                return
            rt = self.runtime(name)
            now = self._clock()
            if not rt.breaker.allow(now):
                probe_at = rt.breaker.next_probe_at()
                await self._wait(rt, None if probe_at is None else max(0.0, probe_at - now))
                continue
            if rt.breaker.consecutive_failures >= rt.breaker.failure_threshold:
                # half-open: this worker holds the one probe; C-ECHO before any data
                await self._probe(cfg, dest, rt)
                continue
            leases = await self._queue.lease(name, dest.batch_size, self._lease_seconds(dest))
            if not leases:
                due = self._queue.next_due(name)
                timeout = IDLE_RECHECK if due is None else max(0.0, due - self._clock())
                await self._wait_for_work(name, min(timeout, IDLE_RECHECK))
                continue
            await self._send(cfg, dest, rt, leases)

    async def _wait(self, rt: DestinationRuntime, timeout: float | None) -> None:
        with anyio.move_on_after(IDLE_RECHECK if timeout is None else timeout):
            async with anyio.create_task_group() as tg:

                async def stop_waiter() -> None:
                    await self.stopping.wait()
                    tg.cancel_scope.cancel()

                async def change_waiter() -> None:
                    await rt.changed.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_waiter)
                tg.start_soon(change_waiter)

    async def _wait_for_work(self, name: str, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:

                async def stop_waiter() -> None:
                    await self.stopping.wait()
                    tg.cancel_scope.cancel()

                async def work_waiter() -> None:
                    await self._queue.wait_for_work(name, timeout)
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_waiter)
                tg.start_soon(work_waiter)

    @staticmethod
    def _lease_seconds(dest: Destination) -> float:
        return 600.0 + dest.batch_size * (dest.dimse_timeout + dest.network_timeout)

    def _up(self, rt: DestinationRuntime, up: bool) -> None:
        now = self._clock()
        if up:
            rt.breaker.record_success(now)
        else:
            rt.breaker.record_failure(now)
        self._metrics.set_destination_up(rt.name, up)
        rt.notify()

    async def _probe(self, cfg: Config, dest: Destination, rt: DestinationRuntime) -> None:
        try:
            async with connect(cfg, dest, [(VERIFICATION, [IMPLICIT_LE])], rt.ssl_context) as assoc:
                status = await assoc.c_echo()
        except (DicomError, OSError) as e:
            logs.event(log, logging.WARNING, "probe_failed", destination=rt.name, error=str(e))
            self._up(rt, False)
            return
        ok = status == 0
        logs.event(log, logging.INFO, "probe", destination=rt.name, status=f"{status:04x}")
        self._up(rt, ok)

    # -- sending one batch (and the batches that follow on the same association)

    async def _send(
        self, cfg: Config, dest: Destination, rt: DestinationRuntime, leases: list[Lease]
    ) -> None:
        contexts = _contexts(leases, dest)
        fitting = {(sop, ts) for sop, tss in contexts for ts in tss}
        unsent = list(leases)
        last_lease = len(leases)
        current: Lease | None = None
        delivered: list[tuple[int, int]] = []
        try:
            async with connect(cfg, dest, contexts, rt.ssl_context) as assoc:
                self._metrics.association_opened("out")
                try:
                    if rt.breaker.consecutive_failures:
                        self._up(rt, True)
                    else:
                        self._metrics.set_destination_up(rt.name, True)
                    while unsent and not self.stopping.is_set():
                        # stopping: the current send finished; the rest go back to pending
                        lease = unsent[0]
                        if (lease.sop_class_uid, lease.transfer_syntax) not in fitting:
                            break  # a later batch needs other contexts: new association
                        accepted = assoc.accepted_transfer_syntaxes(lease.sop_class_uid)
                        target = syntaxes.plan(
                            lease.transfer_syntax, accepted, transcode_to=dest.transcode_to
                        )
                        if target is None:
                            unsent.pop(0)
                            reason = syntaxes.refusal(lease.transfer_syntax, accepted)
                            await self._dead_letter(
                                rt.name, lease, None, f"{dest.ae_title}: {reason}"
                            )
                            continue
                        current = unsent.pop(0)
                        if target == current.transfer_syntax:
                            resp = await assoc.c_store(
                                current.sop_class_uid,
                                current.sop_instance_uid,
                                current.transfer_syntax,
                                current.source,
                                offset=current.data_offset,
                                length=current.length,
                            )
                        else:
                            converted = await self._transcode(cfg, rt.name, current, target)
                            if converted is None:  # dead-lettered with the reason
                                current = None
                                continue
                            try:
                                resp = await assoc.c_store(
                                    current.sop_class_uid,
                                    current.sop_instance_uid,
                                    converted.transfer_syntax,
                                    converted.path,
                                )
                            finally:
                                converted.discard()
                        done, current = current, None
                        await self._record_status(
                            rt.name, done, resp.status, resp.error_comment, delivered
                        )
                        if (
                            not unsent
                            and not self.stopping.is_set()
                            and rt.name in self._config().destinations
                        ):
                            if last_lease < dest.batch_size:
                                # caught up with the senders: let a batch gather instead of
                                # paying a queue transaction for every instance
                                await anyio.sleep(LINGER)
                            await self._flush(delivered)
                            more = await self._queue.lease(
                                rt.name, dest.batch_size, self._lease_seconds(dest)
                            )
                            last_lease = len(more)
                            unsent.extend(more)
                    self._metrics.association_closed("out", "released")
                except BaseException:
                    self._metrics.association_closed("out", "aborted")
                    raise
        except (DicomError, OSError) as e:
            failure = transport_failure(e)
            logs.event(
                log,
                logging.WARNING,
                "forward_failed",
                destination=rt.name,
                failure=failure.value,
                error=str(e) or type(e).__name__,
                in_flight=current.instance_id if current else "-",
                unsent=len(unsent),
            )
            outcome = classify_transport(failure)
            if current is not None:
                await self._after_failure(rt.name, dest, current, outcome, None, str(e))
            if (
                failure
                in (
                    TransportFailure.CONNECT_REFUSED,
                    TransportFailure.TIMEOUT,
                    TransportFailure.REJECTED_TRANSIENT,
                    TransportFailure.REJECTED_PERMANENT,
                )
                and current is None
            ):
                # nothing was sent: the destination is unreachable; every lease waits
                for lease in unsent:
                    await self._after_failure(rt.name, dest, lease, Outcome.TRANSIENT, None, str(e))
                unsent = []
            self._up(rt, False)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._flush(delivered)
                    if unsent:
                        await self._queue.release([lease.delivery_id for lease in unsent])
                    if current is not None and self.stopping.is_set():
                        await self._queue.release([current.delivery_id])
                except QueueClosed:
                    pass  # stopping: leases return to pending at the next start

    async def _transcode(
        self, cfg: Config, name: str, lease: Lease, target: str
    ) -> Transcoded | None:
        """The instance converted to ``target`` in a temp file, off the event loop and
        bounded in concurrency and memory; None when it cannot be converted (then it
        is a dead letter with the reason: never dropped)."""
        if self._transcode_limiter is None:
            self._transcode_limiter = anyio.CapacityLimiter(cfg.transcode.max_concurrent)
        self._transcode_limiter.total_tokens = cfg.transcode.max_concurrent
        try:
            out = await anyio.to_thread.run_sync(
                functools.partial(
                    transcode,
                    lease.source,
                    lease.transfer_syntax,
                    target,
                    data_offset=lease.data_offset,
                    tmp_dir=self._queue.spool.tmp_dir,
                    max_decoded_bytes=cfg.transcode.max_decoded_bytes,
                ),
                limiter=self._transcode_limiter,
            )
        except TranscodeError as e:
            self._metrics.transcoded(name, ok=False)
            await self._dead_letter(
                name,
                lease,
                None,
                f"cannot convert {syntaxes.name(lease.transfer_syntax)} to "
                f"{syntaxes.name(target)}: {e.reason}",
            )
            return None
        self._metrics.transcoded(name, ok=True)
        logs.event(
            log,
            logging.INFO,
            "transcoded",
            destination=name,
            instance=lease.instance_id,
            sop_instance_uid=lease.sop_instance_uid,
            source=syntaxes.name(lease.transfer_syntax),
            target=syntaxes.name(out.transfer_syntax),
            changes="; ".join(out.changes) or "-",
        )
        return out

    async def _flush(self, delivered: list[tuple[int, int]]) -> None:
        if not delivered:
            return
        by_status: dict[int, list[int]] = {}
        for ident, status in delivered:
            by_status.setdefault(status, []).append(ident)
        delivered.clear()
        for status, ids in by_status.items():
            await self._queue.delivered(ids, status)

    async def _record_status(
        self,
        name: str,
        lease: Lease,
        status: int,
        comment: str | None,
        delivered: list[tuple[int, int]],
    ) -> None:
        outcome = classify_status(status)
        if outcome.delivered:
            delivered.append((lease.delivery_id, status))
            self._metrics.delivered(
                name, self._clock() - lease.received_at, warning=outcome is Outcome.WARNING
            )
            logs.event(
                log,
                logging.INFO,
                "forwarded",
                destination=name,
                instance=lease.instance_id,
                sop_instance_uid=lease.sop_instance_uid,
                status=f"{status:04x}",
                attempt=lease.attempt,
            )
            return
        dest = self._config().destinations.get(name)
        if dest is None:
            await self._queue.release([lease.delivery_id])
            return
        await self._after_failure(name, dest, lease, outcome, status, comment)

    async def _after_failure(
        self,
        name: str,
        dest: Destination,
        lease: Lease,
        outcome: Outcome,
        status: int | None,
        error: str | None,
    ) -> None:
        now = self._clock()
        decision = decide(
            policy_of(dest),
            lease.attempt,
            now,
            self._rand(),
            permanent=outcome is Outcome.PERMANENT,
        )
        detail = error or (f"status {status:04x}" if status is not None else "failed")
        if isinstance(decision, DeadLetter):
            await self._dead_letter(name, lease, status, f"{detail} ({decision.reason})")
            return
        await self._queue.retry(lease.delivery_id, decision.at, status, detail)
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
        await self._queue.failed(lease.delivery_id, status, error)
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


def _contexts(leases: Sequence[Lease], dest: Destination) -> list[tuple[str, list[str]]]:
    """For each (SOP class, received syntax) of the batch, one presentation context per
    syntax we could send it in (the original first, then the lossless fallbacks), so the
    destination's choice never forces a conversion it did not need; bounded by PS3.8's
    128 (leases beyond wait for the next association)."""
    seen: dict[tuple[str, str], None] = {}
    for lease in leases:
        seen.setdefault((lease.sop_class_uid, lease.transfer_syntax), None)
    out: list[tuple[str, list[str]]] = []
    for sop, ts in seen:
        more = syntaxes.contexts(sop, ts, transcode_to=dest.transcode_to)
        if len(out) + len(more) > MAX_CONTEXTS:
            break
        out = syntaxes.merge_contexts([out, more])
    return out

"""Every Prometheus metric of the router, defined once (README, "Metrics").

All names carry the prefix ``dicom_router_``, use base units (seconds, bytes) and
take labels from bounded sets only: destination and rule names come from the config,
the other labels from the fixed vocabularies below. Never a UID, an AE title sent by a
peer, a host name or anything from a patient.

Each :class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry`, so
tests and several routers in one process never clash; ``/metrics`` renders exactly that
registry (see :mod:`router.http`).

Contract metrics (README, "Metrics")

===========================================  =================================================
``received_instances_total``                 instances received and acknowledged with Success
                                             (the ingest path counts after the durable commit)
``received_bytes_total``                     data set bytes of those instances
``store_responses_total{status}``            C-STORE responses we sent, by DIMSE status as
                                             4 lower-case hex digits: ``"0000"``, ``"a700"``,
                                             ``"c000"``... (the router only sends statuses of
                                             its own ``Status`` enum, so the set is bounded;
                                             anything outside 0..0xFFFF is ``"other"``)
``forwarded_instances_total``                outcomes of forwarding attempts per instance and
``{destination,outcome}``                    destination; outcome is one of :data:`OUTCOMES`:
                                             ``delivered`` (Success), ``warning`` (delivered
                                             with a warning status), ``retry`` (transient
                                             failure, will be retried), ``failed`` (permanent
                                             or retries exhausted: a dead letter)
``forward_retries_total{destination}``       retries scheduled (one per backoff)
``queue_instances{destination,state}``       queue rows per delivery state (router.store.State),
                                             read from the queue at scrape time
``queue_oldest_age_seconds{destination}``    age of the oldest undelivered row (0: empty),
                                             computed at scrape time
``delivery_latency_seconds{destination}``    histogram, receipt (ack) to delivery, 10 ms to 1 d
``associations_active{direction}``           open associations; direction ``in`` (we are the
                                             SCP) or ``out`` (we forward)
``destination_up{destination}``              1 when the last association attempt (or echo) to
                                             the destination succeeded, 0 when it failed; absent
                                             until the first attempt
``storage_free_bytes``                       bytes available to the router on the storage
                                             file system, read at scrape time
``unrouted_instances_total``                 instances that no rule routed (kept, listed)
``rule_matches_total{rule}``                 instances each rule matched
``config_reloads_total{result}``             reloads, result ``ok`` or ``error``
``build_info{version}``                      always 1; the version as label
===========================================  =================================================

Extra operational metrics

``transcoded_instances_total{destination,result}``
    instances converted to another transfer syntax because the destination did not
    accept theirs (converted, and said so); ``result`` is ``ok`` or
    ``failed`` (a failed one is a dead letter with the reason).
``associations_total{direction,how}``
    associations that ended, ``how`` one of :data:`ASSOCIATION_ENDINGS` (released,
    aborted, timeout, error). A rising ``aborted`` or ``timeout`` rate points at senders
    or destinations in trouble.
``associations_rejected_total{reason}``
    incoming associations we rejected, reason one of :data:`REJECT_REASONS` (anything
    else is counted as ``other``).
``protocol_errors_total{kind}``
    malformed PDUs, garbage, oversized lengths... kind one of :data:`PROTOCOL_ERROR_KINDS`
    (anything else is counted as ``other``): every such event is counted, so a peer
    that misbehaves always shows up here.
``config_last_reload_success_timestamp_seconds``
    unix time of the last successful (re)load; alert when a reload failed after it.
``metrics_snapshot_errors_total``
    scrapes at which the queue snapshot callback raised (the queue gauges are then
    missing from that scrape; the rest is still served).
``process_*``
    the standard process collector (resident memory, open fds, start time: bounded memory
    is watched with ``process_resident_memory_bytes``). Not prefixed: these are the
    names every Prometheus user knows. Disabled with ``Metrics(process_metrics=False)``.

Dead letters are ``forwarded_instances_total{outcome="failed"}``; the number of dead
letters kept right now is ``queue_instances{state="failed"}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router import __version__
from router.store.records import State

log = logging.getLogger(__name__)

# No ``*_created`` series next to every counter and histogram: they double the series
# count and Prometheus' text format does not need them. (A process-wide switch of
# prometheus_client; the router is the only user of it in its process.)
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "dicom_router_"

#: forwarded_instances_total{outcome}
OUTCOMES: tuple[str, ...] = ("delivered", "warning", "retry", "failed")
#: associations_active{direction}, associations_total{direction}
DIRECTIONS: tuple[str, ...] = ("in", "out")
#: queue_instances{state}: the states of a delivery row (one instance x one destination),
#: ``State.delivery_states()`` of router.store.records: ``pending``, ``leased``,
#: ``delivered``, ``failed``, ``held``. Each appears at 0.
#: config_reloads_total{result}
RELOAD_RESULTS: tuple[str, ...] = ("ok", "error")
#: associations_total{how}
ASSOCIATION_ENDINGS: tuple[str, ...] = ("released", "aborted", "timeout", "error")
#: associations_rejected_total{reason}: router.dicom's Rejection causes
REJECT_REASONS: tuple[str, ...] = (
    "calling_ae_not_recognized",  # not in accept.calling_ae_titles
    "host_not_allowed",  # the calling AE may not associate from that address (accept.hosts)
    "called_ae_not_recognized",  # the called AE is not ours
    "application_context_not_supported",  # not the DICOM application context
    "protocol_version",
    "too_many_associations",  # max_associations reached
    "shutting_down",  # the router is stopping (SIGTERM)
    "temporary_congestion",
    "internal_error",  # the router failed to decide (logged with its traceback)
    "other",
)
#: protocol_errors_total{kind}
PROTOCOL_ERROR_KINDS: tuple[str, ...] = (  # the kinds router.dicom reports
    "unknown_pdu_type",
    "pdu_too_large",
    "malformed_pdu",
    "unexpected_pdu",
    "malformed_pdv",
    "unexpected_pdv",
    "bad_context",
    "bad_command_set",
    "command_too_large",
    "unsupported_command",
    "acse_timeout",
    "tls_timeout",
    "tls_handshake",
    "connection_flood",
    "protocol",  # any other protocol violation
    "internal",  # a bug of ours caught at the association's edge ("internal:<type>")
    "other",
)

#: delivery_latency_seconds buckets: 10 ms (a LAN round trip with a small instance) to a
#: day (a destination down over night), roughly 1-2.5-5 per decade, then minutes/hours.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)

_OTHER = "other"


def status_label(status: int) -> str:
    """The ``status`` label of a DIMSE status: 4 lower-case hex digits ("0000", "a700")."""
    if 0 <= status <= 0xFFFF:
        return f"{status:04x}"
    return _OTHER


def _bounded(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else _OTHER


@dataclass(frozen=True)
class QueueSnapshot:
    """What the queue reports at scrape time. Built from the queue's in-memory counters:
    the callback runs on the event loop during a scrape and must be cheap (no SQL).

    - ``instances``: (destination, state) -> delivery rows, state one of
      ``State.delivery_states()`` (``QueueStats.counts`` of router.store.records).
    - ``oldest_age_seconds``: destination -> age of the oldest undelivered row (pending
      or leased); a destination without one shows 0 (``QueueStats.oldest_pending_age``).
    - ``storage_free_bytes``: see :func:`disk_free_bytes`; ``None`` if unknown.
    """

    instances: Mapping[tuple[str, str], int] = field(default_factory=lambda: MappingProxyType({}))
    oldest_age_seconds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    storage_free_bytes: int | None = None


SnapshotSource = Callable[[], QueueSnapshot]


def disk_free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _QueueCollector(Collector):
    """Fills the queue gauges from the snapshot callback at every scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                PREFIX + "queue_instances",
                "Queue rows (instance x destination) per state.",
                labels=("destination", "state"),
            ),
            GaugeMetricFamily(
                PREFIX + "queue_oldest_age_seconds",
                "Age of the oldest undelivered queue row per destination (0 when empty).",
                labels=("destination",),
            ),
            GaugeMetricFamily(
                PREFIX + "storage_free_bytes",
                "Bytes available to the router on the storage file system.",
            ),
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        instances, oldest, free = self._families()
        m = self._metrics
        source = m.snapshot_source
        if source is not None:
            try:
                snap = source()
            except Exception:
                log.exception("queue snapshot for /metrics failed")
                m.metrics_snapshot_errors_total.inc()
            else:
                names = set(m.destinations) | {d for d, _ in snap.instances}
                names |= set(snap.oldest_age_seconds)
                zeros = {(d, s.value): 0 for d in names for s in State.delivery_states()}
                counts = {**zeros, **snap.instances}
                for (dest, state), n in sorted(counts.items()):
                    instances.add_metric((dest, state), float(n))
                for dest in sorted(names):
                    age = snap.oldest_age_seconds.get(dest, 0.0)
                    oldest.add_metric((dest,), max(0.0, float(age)))
                if snap.storage_free_bytes is not None:
                    free.add_metric((), float(snap.storage_free_bytes))
        yield instances
        yield oldest
        yield free


class Metrics:
    """The router's metrics in a registry of their own.

    Attributes are named like the metric without the prefix (``received_instances_total``
    is ``dicom_router_received_instances_total``). Prefer the small helper methods where
    they exist: they keep label values inside their bounded sets.
    """

    def __init__(
        self,
        *,
        version: str = __version__,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        self.snapshot_source: SnapshotSource | None = None
        self.destinations: tuple[str, ...] = ()
        # Children resolved once per label set: ``labels()`` per instance (lock, tuple,
        # dict look-up, validation) showed in the router's profile. A series removed from
        # its metric is removed from here as well (``_remove``).
        self._children: dict[tuple[object, ...], Any] = {}
        r = self.registry
        p = PREFIX

        # -- ingest
        self.received_instances_total = Counter(
            p + "received_instances_total",
            "Instances received and acknowledged with Success.",
            registry=r,
        )
        self.received_bytes_total = Counter(
            p + "received_bytes_total",
            "Data set bytes of the instances received and acknowledged.",
            registry=r,
        )
        self.store_responses_total = Counter(
            p + "store_responses_total",
            "C-STORE responses sent, by DIMSE status (4 lower-case hex digits).",
            ("status",),
            registry=r,
        )
        self.unrouted_instances_total = Counter(
            p + "unrouted_instances_total",
            "Instances accepted that no rule routed to any destination.",
            registry=r,
        )
        self.rule_matches_total = Counter(
            p + "rule_matches_total",
            "Instances matched, per rule.",
            ("rule",),
            registry=r,
        )

        # -- forward
        self.forwarded_instances_total = Counter(
            p + "forwarded_instances_total",
            "Forwarding outcomes per destination: delivered, warning, retry, failed "
            "(failed = dead letter).",
            ("destination", "outcome"),
            registry=r,
        )
        self.transcoded_instances_total = Counter(
            p + "transcoded_instances_total",
            "Instances converted to another transfer syntax for a destination that did not "
            "accept theirs; result ok or failed (failed ones are dead letters).",
            ("destination", "result"),
            registry=r,
        )
        self.forward_retries_total = Counter(
            p + "forward_retries_total",
            "Retries scheduled per destination.",
            ("destination",),
            registry=r,
        )
        self.delivery_latency_seconds = Histogram(
            p + "delivery_latency_seconds",
            "Time from receipt (acknowledgement) to delivery, per destination.",
            ("destination",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.destination_up = Gauge(
            p + "destination_up",
            "1 when the last association attempt to the destination succeeded, else 0.",
            ("destination",),
            registry=r,
        )

        # -- associations
        self.associations_active = Gauge(
            p + "associations_active",
            "Open associations; direction in (senders) or out (destinations).",
            ("direction",),
            registry=r,
        )
        self.associations_total = Counter(
            p + "associations_total",
            "Associations that ended, by direction and how they ended.",
            ("direction", "how"),
            registry=r,
        )
        self.associations_rejected_total = Counter(
            p + "associations_rejected_total",
            "Incoming associations rejected, by reason.",
            ("reason",),
            registry=r,
        )
        self.protocol_errors_total = Counter(
            p + "protocol_errors_total",
            "Protocol errors from peers (malformed or unexpected PDUs, ...), by kind.",
            ("kind",),
            registry=r,
        )

        # -- config and build
        self.config_reloads_total = Counter(
            p + "config_reloads_total",
            "Configuration reloads, by result (ok, error).",
            ("result",),
            registry=r,
        )
        self.config_last_reload_success_timestamp_seconds = Gauge(
            p + "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
            registry=r,
        )
        self.build_info = Gauge(
            p + "build_info",
            "Always 1; the router's version as a label.",
            ("version",),
            registry=r,
        )
        self.metrics_snapshot_errors_total = Counter(
            p + "metrics_snapshot_errors_total",
            "Scrapes at which the queue snapshot callback failed.",
            registry=r,
        )

        # -- scrape-time gauges: queue_instances, queue_oldest_age_seconds, storage_free_bytes
        r.register(_QueueCollector(self))
        if process_metrics:
            ProcessCollector(registry=r)

        self.build_info.labels(version=version).set(1)
        for d in DIRECTIONS:
            self.associations_active.labels(direction=d)
        for res in RELOAD_RESULTS:
            self.config_reloads_total.labels(result=res)

    # ---- wiring
    def set_snapshot_source(self, source: SnapshotSource | None) -> None:
        """Register the callback that fills the queue gauges at scrape time."""
        self.snapshot_source = source

    def set_destinations(self, names: Iterable[str]) -> None:
        """Declare the configured destinations (at start and after each reload): their
        counters appear at 0 at once (so ``rate()`` and alerts see them), and the series
        of destinations that left the config are removed from the gauges."""
        new = tuple(dict.fromkeys(names))
        for gone in set(self.destinations) - set(new):
            _remove(self.destination_up, (gone,))
            self._children.pop((self.destination_up, gone), None)
        self.destinations = new
        for d in new:
            for o in OUTCOMES:
                self.forwarded_instances_total.labels(destination=d, outcome=o)
            self.forward_retries_total.labels(destination=d)
            self.delivery_latency_seconds.labels(destination=d)

    def set_rules(self, names: Iterable[str]) -> None:
        """Declare the configured rule names so each appears at 0 before it first matches."""
        for name in names:
            self.rule_matches_total.labels(rule=name)

    # ---- helpers that keep labels bounded
    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def store_response(self, status: int) -> None:
        key = (self.store_responses_total, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.store_responses_total.labels(
                status=status_label(status)
            )
        child.inc()

    def instance_received(self, size: int) -> None:
        self.received_instances_total.inc()
        self.received_bytes_total.inc(size)

    def forwarded(self, destination: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
        self._child(self.forwarded_instances_total, destination, outcome).inc()

    def delivered(self, destination: str, latency_seconds: float, *, warning: bool = False) -> None:
        self.forwarded(destination, "warning" if warning else "delivered")
        self._child(self.delivery_latency_seconds, destination).observe(max(0.0, latency_seconds))

    def transcoded(self, destination: str, *, ok: bool) -> None:
        result = "ok" if ok else "failed"
        self._child(self.transcoded_instances_total, destination, result).inc()

    def retry_scheduled(self, destination: str) -> None:
        self.forwarded(destination, "retry")
        self._child(self.forward_retries_total, destination).inc()

    def set_destination_up(self, destination: str, up: bool) -> None:
        self._child(self.destination_up, destination).set(1 if up else 0)

    def association_opened(self, direction: str) -> None:
        self._child(self.associations_active, _direction(direction)).inc()

    def association_closed(self, direction: str, how: str) -> None:
        d = _direction(direction)
        self._child(self.associations_active, d).dec()
        self._child(self.associations_total, d, _bounded(how, ASSOCIATION_ENDINGS)).inc()

    def association_rejected(self, reason: str) -> None:
        self.associations_rejected_total.labels(reason=_bounded(reason, REJECT_REASONS)).inc()

    def protocol_error(self, kind: str) -> None:
        kind = kind.partition(":")[0]
        self.protocol_errors_total.labels(kind=_bounded(kind, PROTOCOL_ERROR_KINDS)).inc()

    def rule_matched(self, rule: str) -> None:
        self._child(self.rule_matches_total, rule).inc()

    def config_loaded(self) -> None:
        """The configuration was loaded at start: stamp the last-success time."""
        self.config_last_reload_success_timestamp_seconds.set(self.clock())

    def config_reloaded(self, ok: bool) -> None:
        """A reload (SIGHUP) ended; ``ok`` False when the new config was refused."""
        self.config_reloads_total.labels(result="ok" if ok else "error").inc()
        if ok:
            self.config_loaded()

    def names(self) -> set[str]:
        """Every metric family name this registry exposes (as in the text format: counters
        with their ``_total``)."""
        out: set[str] = set()
        for fam in self.registry.collect():
            out.add(fam.name + "_total" if fam.type == "counter" else fam.name)
        return out


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return direction


def _remove(metric: Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)

"""A destination's config turned into what forwarding to it uses: its retry policy,
circuit breaker settings, lease and session timing, and its kind with the connection
parameters. The one place that reads a :class:`router.config.Destination` for the
forwarder and for ``dicom-router echo``.

Pure except :func:`kind_for` (which builds the kind object: DIMSE C-STORE, or DICOMweb
STOW-RS for a destination with ``dicomweb``) and :func:`echo`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from router.config import Config, Destination
from router.forward.backoff import CircuitBreaker, RetryPolicy
from router.forward.dimse import Connection, DimseKind, Transcoder
from router.forward.kind import Echo, Kind
from router.forward.profiled import SendProfile, send_profile
from router.tls import client_context

__all__ = [
    "Plan",
    "breaker",
    "connection",
    "echo",
    "kind_for",
    "lease_seconds",
    "plan",
    "probe_interval",
    "retry_policy",
]


def retry_policy(dest: Destination) -> RetryPolicy:
    r = dest.retry
    return RetryPolicy(
        max_attempts=r.max_attempts,
        initial_backoff=r.initial_backoff,
        max_backoff=r.max_backoff,
        multiplier=r.multiplier,
        jitter=r.jitter,
    )


def probe_interval(dest: Destination) -> float:
    """How long an open breaker waits before its probe: the configured interval, but
    never longer than the longest retry backoff, so a destination that comes back is
    used again as soon as its deliveries would have been retried."""
    return min(dest.circuit_breaker.probe_interval, dest.retry.max_backoff)


def breaker(dest: Destination) -> CircuitBreaker:
    return CircuitBreaker(dest.circuit_breaker.failures, probe_interval(dest))


def lease_seconds(dest: Destination) -> float:
    """How long a leased batch stays the worker's: long enough to send all of it, each
    instance up to its DIMSE and network timeouts (DICOMweb: its request's timeout, for
    sending and for the answer)."""
    if dest.dicomweb is not None:
        return 600.0 + dest.batch_size * 2 * dest.dicomweb.timeout
    return 600.0 + dest.batch_size * (dest.dimse_timeout + dest.network_timeout)


def connection(cfg: Config, dest: Destination, ssl_context: ssl.SSLContext | None) -> Connection:
    """The association parameters: AE titles, limits and timeouts."""
    if dest.ae_title is None or dest.host is None or dest.port is None:
        raise ValueError("not a DIMSE destination: it has no ae_title, host and port")
    return Connection(
        host=dest.host,
        port=dest.port,
        calling_ae=dest.calling_ae_title or cfg.ae_title,
        called_ae=dest.ae_title,
        max_pdu_length=dest.max_pdu_length,
        connect_timeout=dest.connect_timeout,
        acse_timeout=dest.acse_timeout,
        dimse_timeout=dest.dimse_timeout,
        network_timeout=dest.network_timeout,
        ssl_context=ssl_context,
    )


def kind_for(
    cfg: Config,
    dest: Destination,
    ssl_context: ssl.SSLContext | None,
    transcoder: Transcoder | None = None,
) -> Kind:
    """The destination's kind: DICOMweb STOW-RS when it has ``dicomweb`` (its TLS is
    in that section: ``ssl_context`` is for DIMSE), else DIMSE C-STORE.

    Every kind is given the destination's profile and sends what it makes of each
    instance (:func:`router.forward.profiled.rewrite_lease`), never the stored bytes."""
    if dest.dicomweb is not None:
        # imported here: the HTTP client costs memory in every router, DICOMweb or not
        from router.forward.dicomweb import DicomWebKind

        return DicomWebKind.from_config(
            dest.dicomweb,
            transcode_to=dest.transcode_to,
            transcoder=transcoder,
            profile=send_profile(cfg, dest),
        )
    return DimseKind(
        connection(cfg, dest, ssl_context),
        transcode_to=dest.transcode_to,
        transcoder=transcoder,
        profile=send_profile(cfg, dest),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the workers of one destination read from its config."""

    name: str
    policy: RetryPolicy
    failure_threshold: int
    probe_interval: float
    batch_size: int
    max_associations: int
    lease_seconds: float
    idle_release: float
    kind: Kind
    #: what the kind rewrites the copies it sends with; a reload that changes it (the
    #: profile or its key) ends open sessions, so later sends use the new one
    profile: SendProfile | None = None


def plan(
    cfg: Config,
    name: str,
    ssl_context: ssl.SSLContext | None,
    transcoder: Transcoder | None = None,
) -> Plan:
    dest = cfg.destinations[name]
    return Plan(
        name=name,
        policy=retry_policy(dest),
        failure_threshold=dest.circuit_breaker.failures,
        probe_interval=probe_interval(dest),
        batch_size=dest.batch_size,
        max_associations=dest.max_associations,
        # a cluster node renews its leases while it lives: the lease is how long a
        # silent node keeps its deliveries from the others
        lease_seconds=cfg.queue.lease if cfg.queue.backend == "postgresql" else lease_seconds(dest),
        idle_release=dest.idle_release,
        kind=kind_for(cfg, dest, ssl_context, transcoder),
        profile=send_profile(cfg, dest),
    )


async def echo(cfg: Config, name: str) -> Echo:
    """``dicom-router echo``: one verification round trip to destination ``name``;
    raises :class:`router.forward.kind.TransportError` when it cannot be reached."""
    dest = cfg.destinations[name]
    ssl_context = client_context(dest.tls) if dest.tls is not None else None
    return await kind_for(cfg, dest, ssl_context).echo()

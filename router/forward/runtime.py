"""What the forwarder keeps while it runs: the state the workers of one destination
share, and the leases of one session as they are sent and answered."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import anyio
import anyio.abc

from router.config import Destination
from router.forward import destination
from router.forward.backoff import CircuitBreaker
from router.store.queue import Lease


@dataclass
class DestinationRuntime:
    """What the workers of one destination share."""

    name: str
    breaker: CircuitBreaker
    changed: anyio.Event = field(default_factory=anyio.Event)
    plan: destination.Plan | None = None
    source: Destination | None = None  # the config the plan was built from
    ssl_context: ssl.SSLContext | None = None
    tls_source: object = None
    running: bool = False  # its task is started (``group`` is set once it runs)
    group: anyio.abc.TaskGroup | None = None  # the destination's workers, while running
    workers: set[int] = field(default_factory=set)

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


@dataclass
class Batch:
    """The leases of one session: not yet sent, in flight, and answered but not yet
    recorded as delivered (recorded in one queue transaction per status)."""

    unsent: list[Lease]
    last_lease: int
    current: Lease | None = None
    delivered: list[tuple[int, int]] = field(default_factory=list)
    # the session waited idle and has not been answered since: the peer may have
    # closed it meanwhile (its idle timeout), which is not the instance's fault
    idle_resumed: bool = False

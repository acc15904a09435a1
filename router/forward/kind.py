"""What a destination kind provides: the seam between the kind-independent forwarder
and one protocol (DIMSE C-STORE today, DICOMweb STOW-RS next).

The forwarder (:mod:`router.forward.worker`) owns leasing, retries, the circuit
breaker, dead letters, metrics and logs. A kind only moves bytes: it opens a session
for a batch of leases, sends leases on it one by one and says what the destination
answered, echoes, and closes. The contract is in docs/internal-apis.md
("router/forward").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from router.forward.outcome import TransportFailure
from router.store.queue import Lease

__all__ = [
    "Answered",
    "Conversion",
    "Echo",
    "Kind",
    "ProfileApplied",
    "SendResult",
    "Session",
    "TransportError",
    "Unsendable",
]


class TransportError(Exception):
    """No answer came back: the session (or the attempt to open it) failed.

    Raised by :meth:`Kind.open`, :meth:`Session.send` and :meth:`Kind.echo`. ``failure``
    is what the pure layer classifies (:func:`router.forward.outcome.classify_transport`);
    the message is logged and recorded with the delivery.
    """

    def __init__(self, failure: TransportFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class Conversion:
    """The instance was converted before sending (logged and counted by the forwarder)."""

    source: str  # transfer syntax UID received
    target: str  # transfer syntax UID sent
    changes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProfileApplied:
    """The destination's profile rewrote the copy sent (logged by the forwarder)."""

    profile: str
    deidentified: bool
    sop_instance_uid: str  # the UID the destination got


@dataclass(frozen=True, slots=True)
class Answered:
    """The destination answered for this instance with ``status`` (a C-STORE status,
    or a STOW-RS result mapped onto one), classified by
    :func:`router.forward.outcome.classify_status`."""

    status: int
    comment: str | None = None
    conversion: Conversion | None = None
    profile: ProfileApplied | None = None


@dataclass(frozen=True, slots=True)
class Unsendable:
    """The instance cannot go to this destination at all (no syntax it accepts, a
    conversion that failed): the forwarder dead-letters it with ``reason``; the session
    stays usable. ``conversion_failed`` counts it as a failed conversion."""

    reason: str
    conversion_failed: bool = False


SendResult = Answered | Unsendable


@dataclass(frozen=True, slots=True)
class Echo:
    """A verification round trip: ``ok`` when the destination answered success;
    ``detail`` is what the operator reads (``status 0000``, ``HTTP 200``)."""

    ok: bool
    detail: str


class Session(Protocol):
    """One association or connection, opened for a batch by :meth:`Kind.open`."""

    def fits(self, lease: Lease) -> bool:
        """Whether ``lease`` can be sent on this session (DIMSE: a presentation context
        for it was proposed). The forwarder sends in queue order and ends the session
        at the first lease that does not fit; that lease and the rest go back to the
        queue and come in the next batch."""
        ...

    async def send(self, lease: Lease, ahead: Sequence[Lease]) -> SendResult:
        """Send ``lease``; return the destination's answer for it.

        ``ahead`` are the leases queued behind ``lease`` on this session, in order (do
        not change it); the forwarder sends each of them next unless it stops first
        (stopping, a lease that does not fit). A kind that sends many instances in one
        request may send some of them now with ``lease`` and answer their later
        :meth:`send` calls from that response.
        Raise :class:`TransportError` when no answer came back (the forwarder then
        ends the session and decides for ``lease`` and the rest)."""
        ...


class Kind(Protocol):
    """One destination's protocol with its settings; built by
    :func:`router.forward.destination.kind_for` and rebuilt when the config changes."""

    def open(self, leases: Sequence[Lease]) -> AbstractAsyncContextManager[Session]:
        """A session suited to ``leases`` (the first batch; later batches on the same
        session are checked with :meth:`Session.fits`). Entering it connects (raise
        :class:`TransportError` when that fails); leaving it normally closes in order,
        leaving it by an exception or cancellation aborts."""
        ...

    async def echo(self) -> Echo:
        """A verification round trip (the breaker's probe, ``dicom-router echo``);
        raise :class:`TransportError` when the destination cannot be reached."""
        ...

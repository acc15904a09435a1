"""What a forwarding attempt's result means: delivered, retry later, or dead letter.

Pure: no I/O, and no import of the network layer. The forward worker maps DIMSE
statuses with :func:`classify_status` and the network layer's exceptions onto
:class:`TransportFailure` (``ConnectError`` -> CONNECT_REFUSED, ``DicomTimeout`` ->
TIMEOUT, ``AssociationAborted``/``ProtocolError`` -> ABORTED, ``AssociationRejected``
-> REJECTED_TRANSIENT or REJECTED_PERMANENT by its ``.transient``,
``NoPresentationContext`` -> NO_CONTEXT) and then uses :func:`classify_transport`.

Decisions made here (C-STORE statuses, PS3.4 B.2.3 and PS3.7 C):

- 0x0000 delivered.
- Warnings 0xB000-0xBFFF, 0x0001, 0x0107, 0x0116: delivered (with warning).
- Out of resources 0xA700-0xA7FF, 0x0213 resource limitation, 0x0210 duplicate
  invocation (message id clash), 0x0110 processing failure (in practice a busy or
  briefly broken PACS database more often than a bad instance), 0xFE00 cancel:
  transient, retried with backoff.
- 0xA900-0xA9FF data set mismatch, 0xC000-0xCFFF cannot understand, 0x0122 SOP class
  not supported, 0x0124 not authorized, 0x0111 duplicate SOP instance, 0x0117 invalid
  object instance, 0x0211 unrecognized operation, 0x0212 mistyped argument: permanent,
  dead-lettered at once (retrying cannot help; the operator can replay).
- Any other code: transient. Retrying an unknown failure costs a few attempts bounded
  by ``max_attempts``; dead-lettering a transient one at once would need an operator.
"""

from __future__ import annotations

import enum

__all__ = [
    "Outcome",
    "TransportFailure",
    "classify_status",
    "classify_transport",
    "counts_against_destination",
]


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    WARNING = "warning"  # delivered; the destination reported a warning status
    TRANSIENT = "transient"  # retry with backoff (until max_attempts)
    PERMANENT = "permanent"  # dead letter now

    @property
    def delivered(self) -> bool:
        return self in (Outcome.DELIVERED, Outcome.WARNING)

    @property
    def retryable(self) -> bool:
        return self is Outcome.TRANSIENT


class TransportFailure(enum.Enum):
    """Failures where no C-STORE status came back; see the module docstring's mapping."""

    CONNECT_REFUSED = "connect_refused"  # refused, unreachable, TLS handshake failed
    TIMEOUT = "timeout"
    ABORTED = "aborted"  # A-ABORT, connection lost, protocol error mid-association
    REJECTED_TRANSIENT = "rejected_transient"  # A-ASSOCIATE-RJ result 2
    REJECTED_PERMANENT = "rejected_permanent"  # A-ASSOCIATE-RJ result 1
    NO_CONTEXT = "no_context"  # destination accepts neither SOP class nor a usable syntax


_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
_TRANSIENT = frozenset({0x0110, 0x0210, 0x0213, 0xFE00})
_PERMANENT = frozenset({0x0111, 0x0117, 0x0122, 0x0124, 0x0211, 0x0212})


def classify_status(status: int) -> Outcome:
    """The outcome of a C-STORE response status (see the module docstring)."""
    if status == 0x0000:
        return Outcome.DELIVERED
    if 0xB000 <= status <= 0xBFFF or status in _WARNINGS:
        return Outcome.WARNING
    if 0xA700 <= status <= 0xA7FF or status in _TRANSIENT:
        return Outcome.TRANSIENT
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status in _PERMANENT:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def classify_transport(failure: TransportFailure) -> Outcome:
    """The outcome for an instance whose attempt failed without a status.

    Only NO_CONTEXT is the instance's own problem (permanent). A permanent association
    rejection is the destination's configuration (our AE title is not known there): the
    instance is not at fault, so it stays transient, bounded by ``max_attempts``, and the
    circuit breaker keeps the destination from being hammered meanwhile.
    """
    if failure is TransportFailure.NO_CONTEXT:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def counts_against_destination(failure: TransportFailure) -> bool:
    """Whether the failure says the destination is down (feeds the circuit breaker)."""
    return failure is not TransportFailure.NO_CONTEXT

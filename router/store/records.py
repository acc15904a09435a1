"""What the queue stores and answers, whatever its backend: the one vocabulary of states,
the records crossing the queue interface (:mod:`router.store.backend`), and its errors.

No I/O here: ingest, forward, the operator commands, metrics and every backend import
these, so a second backend speaks the same words as the first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CommitResult",
    "Entry",
    "Filter",
    "InstanceRecord",
    "Lease",
    "QueueClosed",
    "QueueCounts",
    "QueueStats",
    "QueueUnavailable",
    "RouterRunning",
    "SchemaError",
    "State",
    "StateCount",
    "StoreError",
]


class State(enum.StrEnum):
    """The state of a delivery (one instance x one destination), plus ``unrouted``: an
    instance no rule routed, kept without deliveries (for filters, lists and stats).

    ``pending`` waits for a worker or for its retry's due time; ``leased``: a worker is
    sending it (the attempt is already counted); ``delivered``: kept until the instance is
    done; ``failed``: a dead letter, its data kept for ``dicom-router queue retry``;
    ``held``: its destination has a hold and its series (or study) is not complete yet
    (it becomes ``pending`` when the hold is released, see :mod:`router.holds`).
    """

    PENDING = "pending"
    LEASED = "leased"
    DELIVERED = "delivered"
    FAILED = "failed"
    HELD = "held"
    UNROUTED = "unrouted"

    @classmethod
    def delivery_states(cls) -> tuple[State, ...]:
        """The states a delivery row can be in (every state but ``unrouted``), in the
        order reports and metrics show them."""
        return tuple(s for s in cls if s is not cls.UNROUTED)

    @classmethod
    def parse(cls, value: str | State) -> State:
        """``value`` as a State; ValueError naming the valid ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown state {value!r}; one of {valid}") from None


class StoreError(RuntimeError):
    """The queue's storage cannot be used (a database error, a schema it cannot read).
    The message is for the operator."""


class SchemaError(StoreError):
    """The queue database's schema is not one this router can open (e.g. newer)."""


class QueueClosed(RuntimeError):
    """The queue is not running (not started yet, or stopped)."""


class QueueUnavailable(ConnectionError):
    """The queue's database cannot be reached right now (a server that went away); the
    operation did not happen, or for a commit perhaps did: never report it as done. The
    backend reconnects by itself, so a later call may succeed. The ingest answers A700;
    workers wait and try again without counting an attempt."""


class RouterRunning(RuntimeError):
    """A router holds the storage directory; standalone administration is refused."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the queue stores about a received instance besides its bytes.

    UIDs and AE titles only: never patient names or ids.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_instance_uid: str | None = None
    calling_ae: str = ""
    called_ae: str = ""
    received_at: float | None = None  # None: the commit time
    # for holds: the series an instance belongs to and its place in the send order
    series_instance_uid: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    # BLAKE2b of the data set bytes; given, an identical instance still queued for a
    # destination is not queued for it again (``duplicates: drop_identical``).
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a commit did. ``stored``: a new instance row (with its data) was committed,
    with a delivery for each of ``queued``; ``dropped``: destinations for which an
    identical instance (same SOP class, instance UID, transfer syntax and data set
    digest) was still pending or leased, so it was not queued again. When every
    destination was dropped nothing new is stored and ``id`` is the existing instance."""

    id: str
    stored: bool
    queued: tuple[str, ...]
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """A delivery handed to a worker. Send ``source`` from ``data_offset`` (the data
    set without the Part-10 header) to ``destination``, then report an outcome with
    ``delivery_id``. ``attempt`` is this attempt's number (1 = first). ``study_uid``:
    the instance's Study Instance UID (None when it had none)."""

    delivery_id: int
    instance_id: str
    destination: str
    attempt: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    source: bytes | Path
    data_offset: int
    size: int
    received_at: float
    study_uid: str | None = None

    @property
    def length(self) -> int:
        """Bytes of the data set (without the Part-10 header)."""
        return self.size - self.data_offset


@dataclass(frozen=True, slots=True)
class Filter:
    """Selects deliveries for the operator commands; every given field must hold.

    ``state`` is a :class:`State` (text is accepted and checked); ``unrouted`` selects
    instances without deliveries; with neither ``state`` nor ``destination`` unrouted
    instances are included too. ``min_age``: received at least that many seconds ago.
    ``series_uid``: Series Instance UID. ``limit``: at most that many.
    """

    destination: str | None = None
    state: State | None = None
    min_age: float | None = None
    study_uid: str | None = None
    instance_id: str | None = None
    limit: int | None = None
    series_uid: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None:
            object.__setattr__(self, "state", State.parse(self.state))
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")

    @property
    def includes_unrouted(self) -> bool:
        return self.state is State.UNROUTED or (self.state is None and self.destination is None)


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of ``list_deliveries``: a delivery, or an unrouted instance
    (``delivery_id``/``destination`` None, ``state`` unrouted). A ``held`` delivery
    tells when its hold group is released unless another instance arrives first
    (``release_at``) and by which limit (``release_reason``: ``quiet`` or
    ``max_wait``)."""

    delivery_id: int | None
    instance_id: str
    destination: str | None
    state: State
    attempts: int
    due_at: float | None
    last_status: int | None
    last_error: str | None
    received_at: float
    updated_at: float
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str | None
    size: int
    series_uid: str | None = None
    release_at: float | None = None
    release_reason: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A cheap snapshot for metrics (from in-memory counters, no SQL)."""

    counts: dict[tuple[str, str], int]  # (destination, state) -> deliveries
    oldest_pending_age: dict[str, float]  # destination -> seconds (pending or leased)
    unrouted: int  # instances without deliveries
    instances: int  # instances not done (the bound of max_queue_instances)
    committing: int  # commit_instance calls in progress
    transactions: int  # transactions committed since start
    commits: int  # instances committed since start


@dataclass(frozen=True, slots=True)
class StateCount:
    """How many rows are in a state, and since when the oldest was queued (unix time of
    its delivery's creation, i.e. the instance's receipt; None when there are none)."""

    count: int = 0
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """A fresh count over the stored rows (the operator's ``queue status``), as opposed
    to :class:`QueueStats`, which the running queue keeps in memory for metrics."""

    deliveries: dict[tuple[str, State], StateCount]  # (destination, state) -> rows
    unrouted: StateCount  # instances no rule routed (oldest: their receipt)
    instances: int  # instances not done

    def by_state(self) -> dict[tuple[str, str], int]:
        """(destination, state) -> rows, only the states with rows (like QueueStats)."""
        return {(d, s.value): c.count for (d, s), c in self.deliveries.items() if c.count}


def by_status(delivered: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """(delivery id, status) pairs as the ids of each status, in their order: one
    ``delivered`` call per status records them all."""
    out: dict[int, list[int]] = {}
    for ident, status in delivered:
        out.setdefault(status, []).append(ident)
    return out

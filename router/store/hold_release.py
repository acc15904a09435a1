"""What every queue backend does the same way when it releases a hold group: the due
times that give the released deliveries their send order, and the ``hold_released``
event logged once the release committed (see docs/internal-apis.md, holds)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from router import logs
from router.holds import HoldUntil

__all__ = ["STEP", "Released", "due_times", "log_released"]

log = logging.getLogger("router.store.queue")

#: Seconds between the due times of consecutive released deliveries: well above the
#: resolution of a unix time as a double (about 2.4e-7 s), far below anything a send takes.
STEP = 1e-5


@dataclass(frozen=True, slots=True)
class Released:
    """One released group, logged as ``hold_released`` once its transaction committed."""

    destination: str
    until: str
    key: str
    count: int
    reason: str


def due_times(now: float, n: int, tail: float | None) -> list[float]:
    """Consecutive due times for ``n`` released deliveries in send order: all due by
    ``now``, after ``tail`` (the latest due time of fresh work already waiting for the
    destination, so earlier releases go first), never before it."""
    start = now - n * STEP
    if tail is not None:
        start = max(start, tail + STEP)
    return [start + k * STEP for k in range(n)]


def log_released(items: Sequence[Released]) -> None:
    """One ``hold_released`` line per group (after the release committed)."""
    for r in items:
        uid = "series_uid" if r.until == HoldUntil.SERIES.value else "study_uid"
        logs.event(
            log,
            logging.INFO,
            "hold_released",
            destination=r.destination,
            **{uid: r.key},
            count=r.count,
            reason=r.reason,
        )

"""Hold timing: when a held series (or study) is complete enough to send.

DICOM has no "end of series" message: a modality sends instances and stops. A
destination with a hold (an AI node that must see a whole series, a PACS whose "study
arrived" workflow must fire once) therefore waits until its series or study has been
quiet for ``quiet`` seconds, and never longer than ``max_wait`` after its first
instance. This module is the pure policy: no clock, no I/O. The queue stores what it
computes (each hold's first and last arrival and its release time) so that holds survive
restarts, and sets one timer for the earliest release time.

A hold group is one series (or study) for one destination, from its first held instance
until it is released. An instance of the same series that arrives after the release
starts a new group of its own: it is held again, for ``quiet`` after it, and sent as a
group of its own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Hold",
    "HoldGroup",
    "HoldUntil",
    "Release",
    "arrive",
    "due",
    "group_key",
    "next_release",
    "send_order",
]


class HoldUntil(enum.StrEnum):
    """What a destination waits for (the config's ``hold.until``)."""

    SERIES = "series_complete"
    STUDY = "study_complete"


class Release(enum.StrEnum):
    """Why a hold group was released (logged with each release)."""

    QUIET = "quiet"  # no new instance for ``quiet`` seconds
    MAX_WAIT = "max_wait"  # ``max_wait`` passed since the group's first instance
    OPERATOR = "operator"  # ``queue release``


@dataclass(frozen=True, slots=True)
class Hold:
    """A destination's hold policy: ``hold: {until, quiet, max_wait}``, in seconds."""

    until: HoldUntil
    quiet: float
    max_wait: float

    def __post_init__(self) -> None:
        if not (self.quiet > 0 and math.isfinite(self.quiet)):
            raise ValueError(f"hold quiet must be a positive duration, not {self.quiet!r}")
        if not (self.max_wait > 0 and math.isfinite(self.max_wait)):
            raise ValueError(f"hold max_wait must be a positive duration, not {self.max_wait!r}")
        if self.max_wait < self.quiet:
            raise ValueError(
                f"hold max_wait ({self.max_wait:g}s) is shorter than quiet ({self.quiet:g}s):"
                " every group would be released by max_wait; make max_wait at least quiet"
            )


@dataclass(frozen=True, slots=True)
class HoldGroup:
    """One open hold: a series or study of one destination, not yet released."""

    key: str  # group_key(): the series or study UID
    first_at: float  # arrival of its first instance (unix seconds)
    last_at: float  # arrival of its latest instance
    release_at: float  # when it goes out unless another instance arrives first

    def reason(self, hold: Hold) -> Release:
        """Why it is released at ``release_at``: quiet, or capped by max_wait."""
        if self.release_at >= self.first_at + hold.max_wait:
            return Release.MAX_WAIT
        return Release.QUIET


def group_key(hold: Hold, study_uid: str | None, series_uid: str | None) -> str:
    """The UID that names an instance's group. An instance without the UID its hold
    needs is its own group (keyed by nothing shared), so it is never stuck."""
    uid = series_uid if hold.until is HoldUntil.SERIES else study_uid
    return uid or ""


def _release_at(hold: Hold, first_at: float, last_at: float) -> float:
    return min(last_at + hold.quiet, first_at + hold.max_wait)


def arrive(hold: Hold, group: HoldGroup | None, key: str, now: float) -> HoldGroup:
    """The group after an instance of ``key`` arrived at ``now``.

    ``group`` is the open (unreleased) group for that key, or None: then the instance
    opens a new one. An arrival moves the release time to ``now + quiet``, capped at
    ``max_wait`` after the first arrival. A clock that went backwards never moves a
    release time earlier than it was.
    """
    if group is None:
        return HoldGroup(key, now, now, _release_at(hold, now, now))
    last = max(group.last_at, now)
    return HoldGroup(key, group.first_at, last, _release_at(hold, group.first_at, last))


def due(groups: Iterable[HoldGroup], now: float) -> list[HoldGroup]:
    """The groups to release at ``now``, earliest release first."""
    return sorted((g for g in groups if g.release_at <= now), key=lambda g: g.release_at)


def next_release(groups: Iterable[HoldGroup]) -> float | None:
    """When the next group is due: the one timer the queue sets."""
    return min((g.release_at for g in groups), default=None)


def send_order(
    series_number: int | None, instance_number: int | None, received_at: float, seq: int
) -> tuple[float, float, float, int]:
    """The sort key of a released group's deliveries: SeriesNumber, then InstanceNumber,
    then receipt. Instances without a number go after those with one."""
    return (
        math.inf if series_number is None else float(series_number),
        math.inf if instance_number is None else float(instance_number),
        received_at,
        seq,
    )

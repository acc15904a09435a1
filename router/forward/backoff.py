"""Retry policy (exponential backoff with jitter), the retry-or-dead-letter decision,
and a per-destination circuit breaker.

Pure: no I/O, no clock, no randomness of its own. The caller passes the time (``now``)
and a random number in ``[0, 1)`` (``rand``), so every result is reproducible in tests.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "DeadLetter",
    "Decision",
    "RetryAt",
    "RetryPolicy",
    "decide",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast a failed delivery is tried again.

    ``max_attempts`` counts every attempt, the first included: with 3, a delivery is
    tried at most three times and then dead-lettered. Delays are in seconds.
    """

    max_attempts: int = 10
    initial_backoff: float = 2.0
    max_backoff: float = 600.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.initial_backoff >= 0 and math.isfinite(self.initial_backoff)):
            raise ValueError("initial_backoff must be a finite number >= 0")
        if not (self.max_backoff >= self.initial_backoff and math.isfinite(self.max_backoff)):
            raise ValueError("max_backoff must be finite and >= initial_backoff")
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError("multiplier must be a finite number >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first).

        The base is ``initial_backoff * multiplier ** (attempt - 1)`` capped at
        ``max_backoff``; jitter then shortens it by up to ``jitter`` of itself
        (``base * (1 - jitter * rand)``), so the result never exceeds ``max_backoff``
        and senders that failed together spread out.
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        if not 0 <= rand < 1:
            raise ValueError("rand must be in [0, 1)")
        try:
            base = self.initial_backoff * self.multiplier ** (attempt - 1)
        except OverflowError:
            base = self.max_backoff
        base = min(base, self.max_backoff)
        return base * (1.0 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at ``at`` (the caller's clock), ``delay`` seconds after ``now``."""

    at: float
    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the delivery goes to the dead letters (state ``failed``) with ``reason``."""

    reason: str


Decision = RetryAt | DeadLetter


def decide(
    policy: RetryPolicy, attempt: int, now: float, rand: float, *, permanent: bool = False
) -> Decision:
    """What to do after failed attempt number ``attempt`` (1-based, the one just made).

    A permanent failure is dead-lettered at once; a transient one is retried after
    ``policy.delay(attempt, rand)`` until ``attempt`` reaches ``policy.max_attempts``.
    """
    if permanent:
        return DeadLetter("permanent failure")
    if attempt >= policy.max_attempts:
        return DeadLetter(f"gave up after {attempt} attempts")
    d = policy.delay(attempt, rand)
    return RetryAt(at=now + d, delay=d)


class BreakerState(enum.Enum):
    CLOSED = "closed"  # sending normally
    OPEN = "open"  # destination considered down: no attempts until the probe time
    HALF_OPEN = "half_open"  # one probe attempt allowed; its result closes or reopens


class CircuitBreaker:
    """Closed / open / half-open, with the time passed in by the caller.

    ``failure_threshold`` consecutive destination failures (connect refused, timeouts,
    aborts, rejections) open the breaker; after ``probe_interval`` seconds one probe is
    allowed (half-open); its success closes the breaker, its failure reopens it for
    another ``probe_interval``. While open, a worker should wait until
    :meth:`next_probe_at` instead of leasing work (attempts are not spent on a
    destination known to be down).
    """

    def __init__(self, failure_threshold: int = 5, probe_interval: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not (probe_interval >= 0 and math.isfinite(probe_interval)):
            raise ValueError("probe_interval must be a finite number >= 0")
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or now >= self._opened_at + self.probe_interval:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def next_probe_at(self) -> float | None:
        """When an open breaker lets the next probe through; None when closed."""
        if self._opened_at is None:
            return None
        return self._opened_at + self.probe_interval

    def allow(self, now: float) -> bool:
        """May an attempt start now? In half-open state only one probe is let through
        until its result is recorded."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self, now: float) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self, now: float) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = now
        self._probing = False

"""Table tests for the retry policy, the decision and the circuit breaker."""

from __future__ import annotations

import pytest

from router.forward.backoff import (
    BreakerState,
    CircuitBreaker,
    DeadLetter,
    RetryAt,
    RetryPolicy,
    decide,
)

P = RetryPolicy(max_attempts=5, initial_backoff=2.0, max_backoff=60.0, multiplier=2.0, jitter=0.2)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 2.0),
        (2, 0.0, 4.0),
        (3, 0.0, 8.0),
        (5, 0.0, 32.0),
        (6, 0.0, 60.0),  # capped
        (100, 0.0, 60.0),
        (10_000, 0.0, 60.0),  # no overflow
        (1, 0.5, 2.0 * 0.9),
        (1, 0.999999, 2.0 * (1 - 0.2 * 0.999999)),
        (7, 0.5, 60.0 * 0.9),  # jitter applies under the cap too
    ],
)
def test_delay(attempt: int, rand: float, expected: float) -> None:
    assert P.delay(attempt, rand) == pytest.approx(expected)


def test_delay_never_exceeds_max_and_never_negative() -> None:
    for attempt in range(1, 60):
        for rand in (0.0, 0.3, 0.99):
            d = P.delay(attempt, rand)
            assert 0 <= d <= P.max_backoff


@pytest.mark.parametrize(
    ("kwargs", "attempt", "rand", "expected"),
    [
        ({"multiplier": 1.0}, 9, 0.0, 2.0),
        ({"jitter": 0.0}, 3, 0.9, 8.0),
        ({"initial_backoff": 0.0}, 3, 0.5, 0.0),
        ({"multiplier": 3.0, "max_backoff": 1000.0}, 3, 0.0, 18.0),
    ],
)
def test_delay_variants(
    kwargs: dict[str, float], attempt: int, rand: float, expected: float
) -> None:
    base: dict[str, float] = {"max_attempts": 5, "initial_backoff": 2.0, "max_backoff": 60.0}
    base.update(kwargs)
    policy = RetryPolicy(**base)  # type: ignore[arg-type]
    assert policy.delay(attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1.0},
        {"initial_backoff": 10.0, "max_backoff": 5.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"max_backoff": float("inf")},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "rand"), [(0, 0.0), (1, 1.0), (1, -0.1)])
def test_delay_rejects_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError):
        P.delay(attempt, rand)


@pytest.mark.parametrize(
    ("attempt", "permanent", "expected"),
    [
        (1, False, RetryAt(at=1000.0 + 2.0, delay=2.0)),
        (2, False, RetryAt(at=1000.0 + 4.0, delay=4.0)),
        (4, False, RetryAt(at=1000.0 + 16.0, delay=16.0)),
        (5, False, DeadLetter("gave up after 5 attempts")),
        (9, False, DeadLetter("gave up after 9 attempts")),
        (1, True, DeadLetter("permanent failure")),
    ],
)
def test_decide(attempt: int, permanent: bool, expected: object) -> None:
    assert decide(P, attempt, 1000.0, 0.0, permanent=permanent) == expected


def test_decide_single_attempt_policy() -> None:
    one = RetryPolicy(max_attempts=1)
    assert isinstance(decide(one, 1, 0.0, 0.5), DeadLetter)


def test_breaker_opens_after_threshold_then_probes() -> None:
    b = CircuitBreaker(failure_threshold=3, probe_interval=10.0)
    steps: list[tuple[str, float, BreakerState, bool]] = []
    for t in (0.0, 1.0):
        b.record_failure(t)
        steps.append(("fail", t, b.state(t), b.allow(t)))
    b.record_failure(2.0)
    assert b.state(2.0) is BreakerState.OPEN
    assert not b.allow(5.0)
    assert b.next_probe_at() == 12.0
    assert b.state(12.0) is BreakerState.HALF_OPEN
    assert b.allow(12.0)  # the probe
    assert not b.allow(12.5)  # only one probe at a time
    b.record_failure(13.0)  # the probe failed: open again
    assert b.state(13.0) is BreakerState.OPEN
    assert not b.allow(22.9)
    assert b.allow(23.0)
    b.record_success(23.5)
    assert b.state(23.5) is BreakerState.CLOSED
    assert b.allow(23.6) and b.allow(23.7)
    assert b.next_probe_at() is None
    assert [s[2] for s in steps] == [BreakerState.CLOSED, BreakerState.CLOSED]
    assert all(s[3] for s in steps)


def test_breaker_success_resets_count() -> None:
    b = CircuitBreaker(failure_threshold=2, probe_interval=1.0)
    b.record_failure(0.0)
    b.record_success(0.1)
    b.record_failure(0.2)
    assert b.state(0.2) is BreakerState.CLOSED
    assert b.consecutive_failures == 1
    b.record_failure(0.3)
    assert b.state(0.3) is BreakerState.OPEN


@pytest.mark.parametrize(("threshold", "interval"), [(0, 1.0), (1, -1.0), (1, float("nan"))])
def test_breaker_validation(threshold: int, interval: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, interval)

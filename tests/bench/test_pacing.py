"""The paced sender's schedule and the figures of `router-paced` (benchmarks/pacing.py):
pure logic, on a virtual clock."""

from __future__ import annotations

import itertools
import math

import pytest

from benchmarks.pacing import (
    half_rate,
    lag,
    paced_rate,
    per_instance_latency,
    share_at_most,
    slot,
    wait_before,
)


@pytest.mark.parametrize(
    ("start", "index", "rate", "due"),
    [
        (100.0, 0, 50.0, 100.0),  # the first send goes at once
        (100.0, 1, 50.0, 100.02),
        (100.0, 10, 50.0, 100.2),
        (0.0, 3, 0.5, 6.0),  # slower than one a second
    ],
)
def test_slot_is_start_plus_index_over_rate(
    start: float, index: int, rate: float, due: float
) -> None:
    assert slot(start, index, rate) == pytest.approx(due)


@pytest.mark.parametrize(("index", "rate"), [(0, 0.0), (0, -1.0), (-1, 10.0)])
def test_slot_refuses_a_rate_or_index_that_means_nothing(index: int, rate: float) -> None:
    with pytest.raises(ValueError):
        slot(0.0, index, rate)


@pytest.mark.parametrize(
    ("now", "index", "wait", "late"),
    [
        (0.0, 0, 0.0, 0.0),
        (0.004, 1, 0.006, 0.0),  # early: wait until the slot
        (0.010, 1, 0.0, 0.0),  # exactly due
        (0.013, 1, 0.0, 0.003),  # late: go at once, 3 ms behind
        (0.050, 2, 0.0, 0.030),  # a long store: the next sends are overdue
    ],
)
def test_wait_and_lag_around_the_slot(now: float, index: int, wait: float, late: float) -> None:
    rate = 100.0  # a slot every 10 ms, from 0
    assert wait_before(now, 0.0, index, rate) == pytest.approx(wait)
    assert lag(now, 0.0, index, rate) == pytest.approx(late)


def simulate(store_s: list[float], rate: float) -> list[float]:
    """When each send starts, for a sender that stores (taking store_s[i]) then waits
    for its next slot, on a virtual clock."""
    now, starts = 0.0, []
    for i, took in enumerate(store_s):
        now += wait_before(now, 0.0, i, rate)
        starts.append(now)
        now += took
    return starts


def test_a_deadline_schedule_does_not_add_the_store_time_to_the_interval() -> None:
    # stores of 4 ms at 100/s: a fixed 10 ms sleep after each would make it 14 ms apart
    starts = simulate([0.004] * 101, 100.0)
    assert starts[-1] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(starts))


def test_a_slow_store_is_caught_up_so_the_mean_rate_holds() -> None:
    # one store of 45 ms in the middle: the sends due meanwhile go at once, then back on
    # the schedule, and the last send is due at the same time as without the stall
    took = [0.002] * 50 + [0.045] + [0.002] * 50
    starts = simulate(took, 100.0)
    assert starts[51] == pytest.approx(0.545)  # overdue (due at 0.51): at once
    assert starts[52] == pytest.approx(0.547)  # still overdue, after its predecessor
    assert starts[-1] == pytest.approx(1.0)  # back on time: 101 sends in 1 s
    assert max(s - slot(0.0, i, 100.0) for i, s in enumerate(starts)) == pytest.approx(0.035)


def test_a_sender_slower_than_the_rate_sends_back_to_back() -> None:
    starts = simulate([0.02] * 10, 100.0)  # 20 ms stores at 100/s: cannot keep up
    assert starts == pytest.approx([0.02 * i for i in range(10)])


@pytest.mark.parametrize(
    ("rates", "half"),
    [([300.0], 150.0), ([300.0, 500.0, 310.0], 155.0), ([], None), ([0.0], None)],
)
def test_half_rate_is_half_the_median(rates: list[float], half: float | None) -> None:
    assert half_rate(rates) == (None if half is None else pytest.approx(half))


def test_paced_rate_prefers_the_router_runs_then_the_option_then_nothing() -> None:
    rate, basis = paced_rate([400.0, 300.0, 320.0], 99.0) or (0.0, "")
    assert rate == pytest.approx(160.0)
    assert basis == "half of router's median 320/s over 3 runs"
    assert paced_rate([], 99.0) == (99.0, "--paced-rate")
    assert paced_rate([], None) is None


def test_latency_per_instance_matches_by_uid() -> None:
    acked = {f"1.{i}": 10.0 + i for i in range(100)}
    # instance i delivered (i + 1) ms after its Success; one never delivered, one foreign
    delivered = {f"1.{i}": 10.0 + i + (i + 1) / 1000 for i in range(99)}
    delivered["9.9"] = 0.0
    lat = per_instance_latency(acked, delivered)
    assert lat is not None
    assert lat.matched == 99
    assert lat.p50_s == pytest.approx(0.050)
    assert lat.p99_s == pytest.approx(0.09802)
    assert lat.max_s == pytest.approx(0.099)
    assert lat.negative == 0


def test_a_file_closed_before_the_success_was_seen_counts_as_zero() -> None:
    lat = per_instance_latency({"a": 5.0, "b": 5.0, "c": 5.0}, {"a": 4.999, "b": 5.01, "c": 5.02})
    assert lat is not None
    assert lat.negative == 1
    assert lat.p50_s == pytest.approx(0.01)
    assert lat.max_s == pytest.approx(0.02)


def test_latency_needs_two_matches() -> None:
    assert per_instance_latency({"a": 1.0}, {"a": 1.5}) is None
    assert per_instance_latency({"a": 1.0, "b": 1.0}, {}) is None


BUCKETS = {0.01: 10.0, 0.025: 60.0, 0.05: 99.0, 0.1: 100.0, math.inf: 100.0}


@pytest.mark.parametrize(
    ("bound", "share"), [(0.05, 0.99), (0.01, 0.1), (math.inf, 1.0), (0.04, None)]
)
def test_share_at_most_a_bucket_edge(bound: float, share: float | None) -> None:
    assert share_at_most(BUCKETS, bound) == (None if share is None else pytest.approx(share))


def test_share_of_an_empty_histogram_is_unknown() -> None:
    assert share_at_most({}, 0.05) is None
    assert share_at_most({0.05: 0.0, math.inf: 0.0}, 0.05) is None

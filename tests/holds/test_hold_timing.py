"""Hold timing as tables: arrivals at given times -> release times, reasons and order."""

from __future__ import annotations

import pytest

from router.holds import (
    Hold,
    HoldGroup,
    HoldUntil,
    Release,
    arrive,
    due,
    group_key,
    next_release,
    send_order,
)

SERIES = Hold(HoldUntil.SERIES, quiet=30.0, max_wait=3600.0)
SHORT_CAP = Hold(HoldUntil.SERIES, quiet=30.0, max_wait=60.0)


def _group(hold: Hold, arrivals: list[float]) -> HoldGroup:
    group: HoldGroup | None = None
    for t in arrivals:
        group = arrive(hold, group, "1.2.3", t)
    assert group is not None
    return group


@pytest.mark.parametrize(
    ("hold", "arrivals", "release_at", "reason"),
    [
        # one instance: released quiet seconds after it
        (SERIES, [100.0], 130.0, Release.QUIET),
        # every new instance moves the release time
        (SERIES, [100.0, 110.0, 125.0], 155.0, Release.QUIET),
        # arrivals out of clock order never pull the release time earlier
        (SERIES, [100.0, 120.0, 110.0], 150.0, Release.QUIET),
        # a steady trickle is capped by max_wait after the first instance
        (SHORT_CAP, [100.0, 125.0, 150.0], 160.0, Release.MAX_WAIT),
        # exactly at the cap: max_wait is the reason
        (SHORT_CAP, [100.0, 130.0], 160.0, Release.MAX_WAIT),
        # just before the cap: still quiet
        (SHORT_CAP, [100.0, 129.0], 159.0, Release.QUIET),
    ],
)
def test_release_time_and_reason(
    hold: Hold, arrivals: list[float], release_at: float, reason: Release
) -> None:
    group = _group(hold, arrivals)
    assert group.release_at == release_at
    assert group.first_at == arrivals[0]
    assert group.last_at == max(arrivals)
    assert group.reason(hold) is reason


@pytest.mark.parametrize(
    ("now", "released"),
    [
        (129.9, []),
        (130.0, ["a"]),  # due exactly at its release time
        (144.9, ["a"]),
        (145.0, ["a", "b"]),  # earliest release first
        (1e9, ["a", "b"]),
    ],
)
def test_interleaved_series_are_released_each_on_its_own_time(
    now: float, released: list[str]
) -> None:
    a = arrive(SERIES, None, "a", 100.0)
    b = arrive(SERIES, None, "b", 105.0)
    b = arrive(SERIES, b, "b", 115.0)
    assert [g.key for g in due([b, a], now)] == released
    assert next_release([a, b]) == 130.0


def test_a_late_instance_after_release_starts_a_new_hold() -> None:
    first = _group(SERIES, [100.0, 110.0])
    assert due([first], 140.0) == [first]
    # the queue forgets a released group, so the late instance finds none open
    late = arrive(SERIES, None, "1.2.3", 200.0)
    assert (late.first_at, late.release_at) == (200.0, 230.0)
    assert late.reason(SERIES) is Release.QUIET


def test_no_groups_no_timer() -> None:
    assert next_release([]) is None
    assert due([], 1e12) == []


@pytest.mark.parametrize(
    ("until", "study", "series", "key"),
    [
        (HoldUntil.SERIES, "1.2.study", "1.2.series", "1.2.series"),
        (HoldUntil.STUDY, "1.2.study", "1.2.series", "1.2.study"),
        (HoldUntil.SERIES, "1.2.study", None, ""),
        (HoldUntil.STUDY, None, "1.2.series", ""),
    ],
)
def test_group_key(until: HoldUntil, study: str | None, series: str | None, key: str) -> None:
    assert group_key(Hold(until, 30.0, 60.0), study, series) == key


def test_send_order_is_series_then_instance_then_receipt() -> None:
    rows = [
        ("s2-i1", 2, 1, 1.0, 1),
        ("s1-i10", 1, 10, 2.0, 2),
        ("s1-i2", 1, 2, 3.0, 3),
        ("s1-none-late", 1, None, 4.0, 4),
        ("s1-none-early", 1, None, 0.5, 5),
        ("none", None, 1, 0.1, 6),
        ("s1-i2-dup", 1, 2, 3.0, 7),  # same numbers and time: receipt sequence decides
    ]
    ordered = sorted(rows, key=lambda r: send_order(r[1], r[2], r[3], r[4]))
    assert [r[0] for r in ordered] == [
        "s1-i2",
        "s1-i2-dup",
        "s1-i10",
        "s1-none-early",
        "s1-none-late",
        "s2-i1",
        "none",
    ]


@pytest.mark.parametrize(
    ("quiet", "max_wait", "message"),
    [
        (0.0, 60.0, "quiet must be a positive duration"),
        (-1.0, 60.0, "quiet must be a positive duration"),
        (30.0, 0.0, "max_wait must be a positive duration"),
        (30.0, float("inf"), "max_wait must be a positive duration"),
        (30.0, 10.0, "make max_wait at least quiet"),
    ],
)
def test_bad_policies_say_what_to_fix(quiet: float, max_wait: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hold(HoldUntil.SERIES, quiet, max_wait)

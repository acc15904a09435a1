"""How `python -m benchmarks.phases` turns the router's stamps into phases
(benchmarks/phase_timers.py): times made up, nothing run."""

from __future__ import annotations

import pytest

from benchmarks import phase_timers
from benchmarks.phase_timers import Stamps, summary


def stamped(spilled: bool, n: int = 3) -> Stamps:
    """``n`` instances 10 s apart, each with the same made-up timeline (in seconds)."""
    s = Stamps()
    for i in range(n):
        key, t = f"id{i}", 10.0 * i
        s.order.append(key)
        s.at[key] = {"open": t, "finish": t + 1, "finish_end": t + 6, "answered": t + 6.5}
        start = t + 1
        if spilled:
            s.install[key] = (t + 1.5, t + 2.5)
            start = t + 2.5
        s.batch[key] = (start + 0.5, start + 3)
        s.at[key]["finish_end"] = start + 3.25
        s.at[key]["answered"] = start + 3.5
    s.order.append("never-answered")  # an instance the run stopped in the middle of
    s.at["never-answered"] = {"open": 99.0}
    return s


@pytest.mark.parametrize(
    ("spilled", "expected"),
    [
        (
            False,
            {"receive": 1, "to_batch": 0.5, "batch": 2.5, "to_resume": 0.25, "to_answered": 0.25},
        ),
        (
            True,
            {
                "receive": 1,
                "to_install": 0.5,
                "install": 1,
                "to_batch": 0.5,
                "batch": 2.5,
                "to_resume": 0.25,
                "to_answered": 0.25,
            },
        ),
    ],
)
def test_phases_follow_one_instance_and_the_gap_before_it(
    spilled: bool, expected: dict[str, float]
) -> None:
    rows = stamped(spilled, n=phase_timers.WARMUP + 3).phases()
    assert len(rows) == 3  # after the warm-up; the unanswered one is left out
    total = sum(expected.values())
    for row in rows:  # each from the previous answer (at 10(i-1) + total) to its open (10i)
        assert row == pytest.approx(dict(expected, total=total, peer_gap=10 - total))


def test_the_warm_up_is_left_out_and_the_summary_is_in_milliseconds() -> None:
    s = stamped(False, n=phase_timers.WARMUP + 4)
    rows = s.phases()
    assert len(rows) == 4
    out = summary(s)
    assert out["instances"] == 4
    assert out["batch"]["p50_ms"] == pytest.approx(2500)
    assert out["batch"]["mean_ms"] == pytest.approx(2500)
    assert out["peer_gap"]["p90_ms"] == pytest.approx(5500)  # 10 s apart, 4.5 s each
    assert "install" not in out  # inline data: no spool phases


def test_batches_by_what_they_carried_and_cpu_per_instance_by_thread() -> None:
    s = stamped(False, n=4)
    warm = [("acks", 9.0)] * phase_timers.WARMUP  # left out like the phases' warm-up
    s.batches = [*warm, ("acks", 0.001), ("acks", 0.003), ("other", 0.002), ("acks+other", 0.004)]
    s.cpu_start = {"MainThread": 1.0, "router-queue-db": 0.5}
    s.cpu_end = {"MainThread": 1.5, "router-queue-db": 0.75, "router-queue-remover": 0.05}
    out = summary(s)
    assert out["batches"] == {
        "acks": {"count": 2, "p50_ms": pytest.approx(2.0), "mean_ms": pytest.approx(2.0)},
        "other": {"count": 1, "p50_ms": pytest.approx(2.0), "mean_ms": pytest.approx(2.0)},
        "acks+other": {"count": 1, "p50_ms": pytest.approx(4.0), "mean_ms": pytest.approx(4.0)},
    }
    # 5 instances opened (the unanswered one too): CPU from the first open to the stop
    assert out["threads"] == {
        "MainThread": pytest.approx(100.0),
        "router-queue-db": pytest.approx(50.0),
        "router-queue-remover": pytest.approx(10.0),  # started after the first instance
    }

"""The paced sender's schedule and the per-instance latency figures of `router-paced`.

Pure (no I/O, no clock): the requestor client and the harness pass the times in, so the
schedule and the arithmetic are tested with tables (tests/bench/test_pacing.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def slot(start: float, index: int, rate: float) -> float:
    """When send ``index`` (0-based) is due: ``start + index / rate``.

    A deadline schedule rather than a fixed sleep after each send: the time a store takes
    is not added to the interval, and a send that started late shortens the waits after
    it (the sends due meanwhile go at once), so the mean rate over the run is ``rate``.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    if index < 0:
        raise ValueError(f"index must be >= 0, not {index}")
    return start + index / rate


def wait_before(now: float, start: float, index: int, rate: float) -> float:
    """Seconds to wait before send ``index``; 0 when it is due or overdue."""
    return max(0.0, slot(start, index, rate) - now)


def lag(sent: float, start: float, index: int, rate: float) -> float:
    """How late send ``index`` went out (0 when on time): the sender could not keep up."""
    return max(0.0, sent - slot(start, index, rate))


def half_rate(rates: Iterable[float]) -> float | None:
    """Half the median of the measured maximum rates (None without any)."""
    vals = [r for r in rates if r > 0]
    return statistics.median(vals) / 2 if vals else None


@dataclass(frozen=True)
class Latency:
    """Receipt-to-delivery latency over the instances matched on both sides."""

    p50_s: float
    p99_s: float
    max_s: float
    matched: int  # instances with both an acknowledgement and a delivered file
    negative: int  # delivered before the sender saw its Success (clamped to 0)


def per_instance_latency(
    acked: Mapping[str, float], delivered: Mapping[str, float]
) -> Latency | None:
    """Quantiles of delivered[uid] - acked[uid] (both wall-clock seconds, by SOP Instance
    UID); None with fewer than 2 matches.

    The router acknowledges before it forwards, but the sender sees the Success a little
    later, so on a quick path the file can be closed first: those count as 0 (and are
    counted in ``negative``). Quantiles as in the other scenarios: inclusive, p99 = the
    99th of 100 cut points.
    """
    raw = [delivered[uid] - t for uid, t in acked.items() if uid in delivered]
    if len(raw) < 2:
        return None
    lat = [max(0.0, v) for v in raw]
    qs = statistics.quantiles(lat, n=100, method="inclusive")
    return Latency(
        p50_s=qs[49],
        p99_s=qs[98],
        max_s=max(lat),
        matched=len(lat),
        negative=sum(1 for v in raw if v < 0),
    )


def share_at_most(buckets: Mapping[float, float], bound: float) -> float | None:
    """The share of a cumulative histogram's observations at or below ``bound``, which
    must be one of its bucket edges (else None: the histogram cannot tell). Exact, unlike
    a quantile interpolated inside a bucket."""
    if not buckets or bound not in buckets:
        return None
    total = buckets[max(buckets)]
    return buckets[bound] / total if total > 0 else None


def paced_rate(router_rates: Iterable[float], fallback: float | None) -> tuple[float, str] | None:
    """The rate to pace at and where it came from: half the median of `router`'s runs of
    the size in this invocation, else ``fallback`` (--paced-rate), else None (skip)."""
    rates = [r for r in router_rates if r > 0]
    half = half_rate(rates)
    if half is not None:
        runs = "1 run" if len(rates) == 1 else f"{len(rates)} runs"
        return half, f"half of router's median {2 * half:.0f}/s over {runs}"
    if fallback is not None:
        return fallback, "--paced-rate"
    return None

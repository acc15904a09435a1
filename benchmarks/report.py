"""The summary of a `make bench` invocation: medians per scenario and size, the ratios to
the direct DCMTK path and to the durable limit, the target checks, the printed table."""

from __future__ import annotations

import statistics

from benchmarks.common import RunResult
from benchmarks.paced_runs import NAME as PACED
from benchmarks.paced_runs import P99_TARGET_S
from benchmarks.scenarios import RSS_LIMIT_MIB, TARGETS


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _paired_ratio(
    results: list[RunResult], scenario: str, size: str, reference: str
) -> float | None:
    """Median over rounds of (rate / the reference's rate in the same round): less noisy."""
    ref = {r.round: r.rate for r in results if r.scenario == reference and r.size == size}
    ratios = [
        r.rate / ref[r.round]
        for r in results
        if r.scenario == scenario and r.size == size and r.round in ref
    ]
    return statistics.median(ratios) if ratios else None


def reference_of(scenario: str) -> str:
    """The direct DCMTK path a scenario is compared with."""
    return "dcmtk-pair-4senders" if scenario.endswith("-4senders") else "dcmtk-pair"


def _per_instance_ms(seconds: float | None, instances: int) -> float | None:
    return None if seconds is None else seconds / instances * 1e3


def _ratio(value: float, reference: float | None) -> float | None:
    return value / reference if reference else None


_RATIOS = ("ratio", "ratio_paired_median", "vs_durable_limit", "vs_durable_limit_paired")


def summarize(
    results: list[RunResult], failures: list[dict[str, object]]
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    keys: list[tuple[str, str]] = []
    for r in results:
        if (r.scenario, r.size) not in keys:
            keys.append((r.scenario, r.size))

    def median_rate(scenario: str, size: str) -> float | None:
        return _median([r.rate for r in results if r.scenario == scenario and r.size == size])

    for scenario, size in keys:
        rs = [r for r in results if r.scenario == scenario and r.size == size]
        rate = statistics.median(r.rate for r in rs)
        row: dict[str, object] = {
            "scenario": scenario,
            "size": size,
            "instances": rs[0].instances,
            "runs": len(rs),
            "failed_runs": sum(
                1 for f in failures if f["scenario"] == scenario and f["size"] == size
            ),
            "instances_per_s": rate,
            "mb_per_s": statistics.median(r.mb_s for r in rs),
            "wall_s": statistics.median(r.wall_s for r in rs),
            "cpu_s": statistics.median(r.cpu_s for r in rs),
            "cpu_ours_s": _median([r.cpu_ours_s for r in rs]),
            "cpu_peers_s": statistics.median(r.cpu_peers_s for r in rs),
            "peak_rss_ours_mib": max(
                (r.peak_rss_ours_mib for r in rs if r.peak_rss_ours_mib is not None), default=None
            ),
            "peak_rss_peers_mib": max(r.peak_rss_peers_mib for r in rs),
            "latency_p50_s": _median([r.latency_p50_s for r in rs]),
            "latency_p99_s": _median([r.latency_p99_s for r in rs]),
            "latency_source": next((r.latency_source for r in rs if r.latency_source), None),
            "reference": reference_of(scenario),
            "ratio": _ratio(rate, median_rate(reference_of(scenario), size)),
            "ratio_paired_median": _paired_ratio(results, scenario, size, reference_of(scenario)),
            "vs_durable_limit": _ratio(rate, median_rate("durable-limit", size)),
            "vs_durable_limit_paired": _paired_ratio(results, scenario, size, "durable-limit"),
            "sync_ms": _median([None if r.sync_s is None else r.sync_s * 1e3 for r in rs]),
            "paced": _paced_summary(rs),
            "cpu_ms_per_instance": {
                "ours": _per_instance_ms(_median([r.cpu_ours_s for r in rs]), rs[0].instances),
                **{
                    tool: _per_instance_ms(
                        statistics.median(r.cpu_peers.get(tool, 0.0) for r in rs),
                        rs[0].instances,
                    )
                    for tool in sorted({t for r in rs for t in r.cpu_peers})
                },
            },
        }
        if scenario == PACED:  # its rate is the pace it was asked for, not a maximum
            for key in _RATIOS:
                row[key] = None
        rows.append(row)
    for row in rows:  # the DCMTK peers' CPU of the direct path, beside ours
        ref = next(
            (r for r in rows if r["scenario"] == row["reference"] and r["size"] == row["size"]),
            None,
        )
        row["cpu_ms_per_instance_direct_peers"] = None if ref is None else _peers_ms(ref)
    return rows


def _paced_summary(rs: list[RunResult]) -> dict[str, object] | None:
    """router-paced: the rate asked for and the cross-checks, medians over the runs."""
    ps = [r.paced for r in rs if r.paced is not None]
    if not ps:
        return None
    return {
        "rate": statistics.median(p.rate for p in ps),
        "basis": ps[0].basis,
        "behind": max(p.behind for p in ps),
        "max_lag_s": max(p.max_lag_s for p in ps),
        "negative": max(p.negative for p in ps),
        "metrics_p50_s": _median([p.metrics_p50_s for p in ps]),
        "metrics_p99_s": _median([p.metrics_p99_s for p in ps]),
        "metrics_share_le_50ms": _median([p.metrics_share_le_50ms for p in ps]),
    }


def _peers_ms(row: dict[str, object]) -> float | None:
    """storescu + storescp CPU ms per instance of a row (None if it has none)."""
    cpu = row["cpu_ms_per_instance"]
    assert isinstance(cpu, dict)
    peers = [v for k, v in cpu.items() if k != "ours" and isinstance(v, float)]
    return sum(peers) if peers else None


#: targets for the router itself: rate against the durable limit, CPU against the
#: direct pair's storescu + storescp (the looser bound above SMALL_MAX bytes)
LIMIT_TARGET = 0.7
CPU_TARGET_SMALL, CPU_TARGET_LARGE, SMALL_MAX = 2.5, 2.0, 64 * 1024


def verdicts(
    rows: list[dict[str, object]], sizes: dict[str, int] | None = None
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def check(row: dict[str, object], what: str, value: object, ok: bool) -> None:
        out.append(
            {
                "scenario": row["scenario"],
                "size": row["size"],
                "check": what,
                "value": value,
                "pass": ok,
            }
        )

    for row in rows:
        scenario = str(row["scenario"])
        if scenario in TARGETS:
            ratio = row["ratio"]
            target = TARGETS[scenario]
            ok = isinstance(ratio, float) and ratio >= target
            check(row, f"rate >= {target:.1f}x {row['reference']}", ratio, ok)
        if scenario == "router":
            vs = row["vs_durable_limit"]
            ok = isinstance(vs, float) and vs >= LIMIT_TARGET
            check(row, f"rate >= {LIMIT_TARGET:.1f}x durable-limit", vs, ok)
        if scenario in ("router", "router-4senders"):
            cpu = row["cpu_ms_per_instance"]
            direct = row["cpu_ms_per_instance_direct_peers"]
            assert isinstance(cpu, dict)
            ours = cpu.get("ours")
            size = (sizes or {}).get(str(row["size"]), 0)
            bound = CPU_TARGET_SMALL if size <= SMALL_MAX else CPU_TARGET_LARGE
            if isinstance(ours, float) and isinstance(direct, float) and direct > 0:
                factor = ours / direct
                check(row, f"CPU/inst <= {bound:.1f}x direct peers'", factor, factor <= bound)
        paced = row.get("paced")
        if scenario == PACED and isinstance(paced, dict):
            p99 = row["latency_p99_s"]
            at = (
                "half max rate"
                if str(paced["basis"]).startswith("half")
                else f"{paced['rate']:.0f}/s (--paced-rate)"
            )
            target_ms = P99_TARGET_S * 1e3
            ms = p99 * 1e3 if isinstance(p99, float) else None
            ok = ms is not None and ms < target_ms
            check(row, f"p99 receipt-to-delivery < {target_ms:.0f} ms at {at}", ms, ok)
        rss = row["peak_rss_ours_mib"]
        if isinstance(rss, float):
            check(row, f"peak RSS < {RSS_LIMIT_MIB:.0f} MiB", rss, rss < RSS_LIMIT_MIB)
    return out


def _fmt(v: object, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, int | float):
        return format(v, spec)
    return str(v)


def print_table(rows: list[dict[str, object]], checks: list[dict[str, object]], when: str) -> None:
    header = (
        "scenario",
        "size",
        "n",
        "runs",
        "inst/s",
        "MB/s",
        "ratio",
        "paired",
        "vs limit",
        "ms CPU/inst ours",
        "storescu",
        "storescp",
        "RSS ours",
        "p50 lat",
        "p99 lat",
    )
    table = [header]
    for r in rows:
        runs = f"{r['runs']}" + (f"+{r['failed_runs']}F" if r["failed_runs"] else "")
        cpu = r["cpu_ms_per_instance"]
        assert isinstance(cpu, dict)
        vs = r["vs_durable_limit_paired"] if r["vs_durable_limit_paired"] is not None else None
        table.append(
            (
                str(r["scenario"]),
                str(r["size"]),
                str(r["instances"]),
                runs,
                _fmt(r["instances_per_s"], ".0f"),
                _fmt(r["mb_per_s"], ".1f"),
                _fmt(r["ratio"], ".2f") + ("x" if r["ratio"] is not None else ""),
                _fmt(r["ratio_paired_median"], ".2f"),
                _fmt(vs, ".2f"),
                _fmt(cpu.get("ours"), ".2f"),
                _fmt(cpu.get("storescu"), ".2f"),
                _fmt(cpu.get("storescp"), ".2f"),
                _fmt(r["peak_rss_ours_mib"], ".1f") + (" MiB" if r["peak_rss_ours_mib"] else ""),
                _fmt(r["latency_p50_s"], ".3f"),
                _fmt(r["latency_p99_s"], ".3f"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = {0, 1}
    print(f"\nbenchmark results, {when}: medians of each column over the runs")
    print("ratio = median inst/s / median inst/s of the direct DCMTK path (dcmtk-pair, or")
    print("dcmtk-pair-4senders for the -4senders rows), same size, this invocation;")
    print("paired = median over rounds of inst/s / the same round's direct inst/s;")
    print("vs limit = the same, paired, against durable-limit: the round's dcmtk-pair time per")
    print("instance + one measured pwrite+fdatasync of that size on the router's file system")
    for n, row in enumerate(table):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("ms CPU/inst = user+sys milliseconds per instance of our process (acceptor,")
    print("requestor or router) and of the DCMTK peers (storescp with --fork: all its")
    print("processes); MB = 10^6 bytes; RSS ours = peak resident set of our process.")
    for r in rows:
        if r["scenario"] == "durable-limit":
            print(f"durable-limit {r['size']}: sync p50 {_fmt(r['sync_ms'], '.3f')} ms")
    if any(r["latency_p99_s"] is not None for r in rows):
        print("p50/p99 lat (s) = receipt to delivery: router from its /metrics histogram")
        print("(delivery_latency_seconds, interpolated inside buckets 10/25/50/100 ms: it")
        print(f"cannot tell 30 from 45 ms); {PACED} per instance: the time storescp closed the")
        print("file (its mtime) minus the time the sender got the Success, so the table shows")
        print("that; the histogram is printed below as a cross-check")
    for r in rows:
        _print_paced(r)
    if checks:
        print()
        for c in checks:
            value = c["value"]
            shown = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else value
            verdict = "PASS" if c["pass"] else "MISS"
            print(f"{verdict}  {c['scenario']:<16} {c['size']:<6} {c['check']:<50} {shown}")


def _print_paced(row: dict[str, object]) -> None:
    paced = row.get("paced")
    if not isinstance(paced, dict):
        return

    def ms(v: object) -> str:
        return f"{v * 1e3:.1f} ms" if isinstance(v, float) else "-"

    share = paced["metrics_share_le_50ms"]
    shown = f"{share * 100:.1f}%" if isinstance(share, float) else "-"
    print(
        f"{row['scenario']} {row['size']}: paced at {paced['rate']:.0f}/s ({paced['basis']}), "
        f"sent at {_fmt(row['instances_per_s'], '.0f')}/s; "
        f"per instance p50 {ms(row['latency_p50_s'])} p99 {ms(row['latency_p99_s'])} "
        f"[{row['latency_source']}]"
    )
    print(
        f"  cross-check, router histogram: p50 {ms(paced['metrics_p50_s'])} "
        f"p99 {ms(paced['metrics_p99_s'])} (interpolated), {shown} <= 50 ms (exact); "
        f"sends a slot or more late: {paced['behind']}, latest {ms(paced['max_lag_s'])}; "
        f"closed before the Success was seen: {paced['negative']}"
    )

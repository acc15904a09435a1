"""`make bench`: DCMTK storescu/storescp as the reference, our acceptor, requestor and router
measured against it in the same run.

    python -m benchmarks.run [--sizes 8k:2000,512k:300] [--runs K] [--only S,...] [--skip S,...]

Scenarios (default: all of them; --only picks, --skip leaves out):
  dcmtk-pair      storescu -> storescp (the reference; both with TCP_NODELAY=1)
  acceptor        storescu -> benchmarks.acceptor_server (router.dicom.Acceptor + FileSink)
  requestor       benchmarks.requestor_client (router.dicom.associate/c_store) -> storescp
  router          storescu -> `python -m router run` -> storescp (skipped until router.app exists)
  router-ingest   storescu -> `python -m router run` with no rule: the durable ingest alone
  acceptor-nagle  storescu with Nagle on (no TCP_NODELAY) -> acceptor_server
  requestor-nagle benchmarks.requestor_client -> storescp with Nagle on (no TCP_NODELAY)

Each scenario runs K times per size, interleaved (the order rotates every round); the
table shows medians and each scenario's rate as a ratio of the dcmtk-pair median of the
same size in the same invocation. Results go to bench-results/<timestamp>.json. The exit
status is 0 whether targets are met or not (1 only for bad usage or no usable run).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from benchmarks.common import TRASH, InputSet, RunResult, Settings, dumps
from benchmarks.dicomfiles import read_meta
from benchmarks.durable import durable_limit
from benchmarks.orthanc_runs import orthanc_available
from benchmarks.procs import BenchError, kill_all
from benchmarks.router_runs import router_available
from benchmarks.scenarios import (
    DEFAULT_SCENARIOS,
    ORTHANC_SCENARIOS,
    RSS_LIMIT_MIB,
    SCENARIOS,
    TARGETS,
)

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        metavar="SIZE:COUNT,...",
        help=f"instance sizes and how many of each ({DEFAULT_SIZES}); k = 1024 bytes",
    )
    p.add_argument(
        "--concurrent-size",
        default="8k",
        metavar="SIZE",
        help="the size (one of --sizes) the 4-sender scenarios run with (8k)",
    )
    p.add_argument("--runs", type=int, default=3, metavar="K", help="runs per scenario (3)")
    p.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help=f"run only these (repeat or comma-separate); one of {', '.join(SCENARIOS)}. "
        "dcmtk-pair is always added as the reference unless --no-reference",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="leave these out (repeat or comma-separate), e.g. --skip acceptor-nagle",
    )
    p.add_argument("--no-reference", action="store_true", help="do not add dcmtk-pair to --only")
    p.add_argument("--pdu", type=int, default=16384, help="max PDU for every peer (16384)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per run (600)")
    p.add_argument(
        "--bit-preserving",
        action="store_true",
        help="storescp +B: write data sets as received instead of decoding and re-encoding",
    )
    p.add_argument("--workdir", type=Path, help="scratch space (default: a new temp dir)")
    p.add_argument(
        "--dest-dir",
        type=Path,
        metavar="DIR",
        help="where every receiver (storescp, our acceptor) writes what it receives "
        "(default: inside the workdir). On one machine the destination's writes share the "
        "router's disk and slow its syncs; a tmpfs here (e.g. /dev/shm) keeps them apart "
        "as a network would. Applies to the reference pair alike",
    )
    p.add_argument("--keep", action="store_true", help="keep the data, outputs and logs")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench-results")
    args = p.parse_args(argv)
    names: list[str] = []
    for item in args.only or list(DEFAULT_SCENARIOS):
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in SCENARIOS:
                p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
            if name not in names:
                names.append(name)
    if args.only and not args.no_reference and "dcmtk-pair" not in names:
        names.insert(0, "dcmtk-pair")
    for item in args.skip:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in SCENARIOS:
                p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
            if name in names:
                names.remove(name)
    if not names:
        p.error("no scenario left to run")
    args.scenarios = names
    if args.runs < 1:
        p.error("--runs must be at least 1")
    try:
        args.size_sets = parse_sizes(args.sizes)
    except ValueError as exc:
        p.error(str(exc))
    return args


DEFAULT_SIZES = "8k:2000,20k:2000,512k:300"


def parse_sizes(spec: str) -> list[tuple[str, int, int]]:
    """``8k:2000,512k:300`` -> [("8k", 2000, 8192), ("512k", 300, 524288)]."""
    out: list[tuple[str, int, int]] = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        size_text, sep, count_text = item.partition(":")
        text = size_text.lower()
        try:
            size = int(text[:-1]) * 1024 if text.endswith("k") else int(text)
            count = int(count_text) if sep else 0
        except ValueError:
            raise ValueError(f"--sizes: {item!r} is not SIZE:COUNT (e.g. 8k:2000)") from None
        if size < 1024 or count < 1:
            raise ValueError(f"--sizes: {item!r}: size >= 1k and count >= 1")
        out.append((size_text, count, size))
    if not out:
        raise ValueError("--sizes: no size given")
    return out


def _room_to_defer_cleanup(
    workdir: Path, args: argparse.Namespace, inputs: list[InputSet], scenarios: int
) -> bool:
    """Whether every run's files (at most twice its input: a router's spool and its
    destination's copy) fit beside the free space kept, with 2 GB to spare; else each
    run is deleted at once (and the next run may pay for it, see RunDir.close)."""
    need = 2 * args.runs * scenarios * sum(i.total_bytes for i in inputs) + 2 * 10**9
    roots = [workdir] + ([args.dest_dir] if args.dest_dir is not None else [])
    room = all(shutil.disk_usage(r).free > need for r in roots)
    progress(
        "finished runs are moved aside and deleted at the end"
        if room
        else f"less than {need / 1e9:.1f} GB free: each run is deleted at once"
    )
    return room


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_inputs(workdir: Path, args: argparse.Namespace) -> list[InputSet]:
    from router.samples import write_many  # pydicom import only here

    sets = []
    for name, count, size in args.size_sets:
        d = workdir / f"data-{name}"
        t0 = time.perf_counter()
        progress(f"generating {count} x {size} bytes instances in {d} ...")
        paths = write_many(d, count, size)
        files = [read_meta(p) for p in paths]
        s = InputSet(name, d, files)
        progress(
            f"  {s.count} files, {s.total_bytes / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s"
        )
        sets.append(s)
    return sets


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
        rows.append(row)
    for row in rows:  # the DCMTK peers' CPU of the direct path, beside ours
        ref = next(
            (r for r in rows if r["scenario"] == row["reference"] and r["size"] == row["size"]),
            None,
        )
        row["cpu_ms_per_instance_direct_peers"] = None if ref is None else _peers_ms(ref)
    return rows


def _peers_ms(row: dict[str, object]) -> float | None:
    """storescu + storescp CPU ms per instance of a row (None if it has none)."""
    cpu = row["cpu_ms_per_instance"]
    assert isinstance(cpu, dict)
    peers = [v for k, v in cpu.items() if k != "ours" and isinstance(v, float)]
    return sum(peers) if peers else None


#: issue targets for the router itself: rate against the durable limit, CPU against the
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
    if checks:
        print()
        for c in checks:
            value = c["value"]
            shown = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else value
            verdict = "PASS" if c["pass"] else "MISS"
            print(f"{verdict}  {c['scenario']:<16} {c['size']:<6} {c['check']:<36} {shown}")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _git_state() -> dict[str, object]:
    """The commit measured, and whether router/ had uncommitted changes (a live checkout)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = git("status", "--porcelain", "--", "router")
    return {"commit": git("rev-parse", "HEAD"), "router_dirty_files": len(dirty.splitlines())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"benchmarks: {tool} not found; `make dcmtk` installs DCMTK", file=sys.stderr)
            return 1
    atexit.register(kill_all)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)  # SIGINT too: a background job may have it ignored

    scenarios = list(args.scenarios)
    skipped: dict[str, str] = {}
    if "router" in scenarios:
        why = router_available()
        if why is not None:
            skipped["router"] = why
            scenarios.remove("router")
            progress(f"skipping scenario router: {why}")
    no_orthanc = orthanc_available()
    for name in ORTHANC_SCENARIOS:
        if name in scenarios and no_orthanc is not None:
            skipped[name] = no_orthanc
            scenarios.remove(name)
            progress(f"skipping scenario {name}: {no_orthanc}")

    started = dt.datetime.now().astimezone()
    git_before = _git_state()
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dicom-router-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        workdir=workdir,
        pdu=args.pdu,
        timeout=args.timeout,
        storescp_extra=("--bit-preserving",) if args.bit_preserving else (),
        keep_logs=args.keep,
        dest_dir=args.dest_dir,
    )
    results: list[RunResult] = []
    failures: list[dict[str, object]] = []
    interrupted = False
    try:
        inputs = make_inputs(workdir, args)
        concurrent = sum(1 for s in scenarios if s.endswith("-4senders"))
        per_size = len(scenarios) - concurrent
        total = args.runs * (len(inputs) * per_size + concurrent)
        settings = dataclasses.replace(
            settings, defer_cleanup=_room_to_defer_cleanup(workdir, args, inputs, len(scenarios))
        )
        n = 0
        for rnd in range(1, args.runs + 1):
            for inp in inputs:
                k = (rnd - 1) % len(scenarios)
                order = scenarios[k:] + scenarios[:k]  # rotate: no scenario always goes first
                for name in order:
                    if name.endswith("-4senders") and inp.name != args.concurrent_size:
                        continue
                    n += 1
                    tag = f"[{n}/{total}] round {rnd} {inp.name:<5} {name:<14}"
                    try:
                        r = SCENARIOS[name](settings, inp, rnd)
                    except BenchError as exc:
                        failures.append(
                            {"scenario": name, "size": inp.name, "round": rnd, "error": str(exc)}
                        )
                        progress(f"{tag} FAILED: {exc}")
                        continue
                    results.append(r)
                    if name == "dcmtk-pair":
                        limit = durable_limit(r, inp, workdir)
                        results.append(limit)
                        progress(f"{tag} durable-limit {limit.rate:7.0f} inst/s ({limit.notes[0]})")
                    ours = "" if r.cpu_ours_s is None else f" (ours {r.cpu_ours_s:.2f})"
                    rss = (
                        "" if r.peak_rss_ours_mib is None else f" rss {r.peak_rss_ours_mib:.0f} MiB"
                    )
                    progress(
                        f"{tag} {r.rate:7.0f} inst/s {r.mb_s:7.1f} MB/s "
                        f"{r.wall_s:6.2f} s cpu {r.cpu_s:.2f} s{ours}{rss}"
                    )
    except KeyboardInterrupt:
        interrupted = True
        progress("interrupted: stopping children, reporting what was measured")
    finally:
        kill_all()
        for root in (workdir, args.dest_dir):
            if root is not None:
                shutil.rmtree(root / TRASH, ignore_errors=True)
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            progress(f"kept data and logs in {workdir}")

    rows = summarize(results, failures)
    checks = verdicts(rows, {name: size for name, _, size in args.size_sets})
    when = started.strftime("%Y-%m-%d %H:%M %Z")
    if rows:
        print_table(rows, checks, when)
    for name, why in skipped.items():
        print(f"SKIP  {name}: {why}")
    for f in failures:
        lines = str(f["error"]).splitlines() or [""]
        last = f" ... {lines[-1].strip()}" if len(lines) > 1 else ""
        print(f"FAIL  {f['scenario']} {f['size']} round {f['round']}: {lines[0]}{last}")

    report = {
        "started": started.isoformat(timespec="seconds"),
        "interrupted": interrupted,
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "storescu": _tool_version("storescu"),
        },
        "settings": {
            "scenarios": args.scenarios,
            "runs": args.runs,
            "sizes": [list(x) for x in args.size_sets],
            "concurrent_size": args.concurrent_size,
            "pdu": args.pdu,
            "storescp_bit_preserving": args.bit_preserving,
            "dest_dir": str(args.dest_dir) if args.dest_dir else None,
            "cleanup_deferred_to_the_end": settings.defer_cleanup,
            "TCP_NODELAY": "1 for DCMTK peers, but for the -nagle scenarios' DCMTK peer",
        },
        "git": {"before": git_before, "after": _git_state()},
        "skipped": skipped,
        "summary": rows,
        "checks": checks,
        "runs": [r.as_json() for r in results],
        "failures": failures,
    }
    if report["git"]["before"] != report["git"]["after"]:  # type: ignore[index]
        print("WARNING: the checkout changed during the run; figures may mix code versions")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(dumps(report) + "\n")
    print(f"\nwrote {out}")
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())

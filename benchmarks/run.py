"""`make bench`: DCMTK storescu/storescp as the reference, our acceptor, requestor and router
measured against it in the same run.

    python -m benchmarks.run [--sizes 8k:2000,512k:300] [--runs K] [--only S,...] [--skip S,...]

Scenarios (default: all of them; --only picks, --skip leaves out):
  dcmtk-pair      storescu -> storescp (the reference; both with TCP_NODELAY=1)
  acceptor        storescu -> benchmarks.acceptor_server (router.dicom.Acceptor + FileSink)
  requestor       benchmarks.requestor_client (router.dicom.associate/c_store) -> storescp
  router          storescu -> `python -m router run` -> storescp (skipped until router.app exists)
  router-paced    benchmarks.requestor_client paced at half of router's median rate (after
                  every round of the others) -> router -> storescp: receipt-to-delivery
                  latency of each instance, below saturation
  router-ingest   storescu -> `python -m router run` with no rule: the durable ingest alone
  acceptor-nagle  storescu with Nagle on (no TCP_NODELAY) -> acceptor_server
  requestor-nagle benchmarks.requestor_client -> storescp with Nagle on (no TCP_NODELAY)

Each scenario runs K times per size, interleaved (the order rotates every round), and
router-paced K times per size after them (it needs router's median rate); the table shows
medians and each scenario's rate as a ratio of the dcmtk-pair median of the same size in
the same invocation. Results go to bench-results/<timestamp>.json. The exit status is 0
whether targets are met or not (1 only for bad usage or no usable run).
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
from benchmarks.paced_runs import NAME as PACED
from benchmarks.pacing import paced_rate
from benchmarks.procs import BenchError, kill_all
from benchmarks.report import print_table, summarize, verdicts
from benchmarks.router_runs import router_available
from benchmarks.scenarios import (
    DEFAULT_SCENARIOS,
    ORTHANC_SCENARIOS,
    SCENARIOS,
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
    p.add_argument(
        "--paced-rate",
        type=float,
        metavar="R",
        help=f"instances/s for {PACED} at a size router has no run of in this invocation "
        "(else that size is skipped); with router's runs, half of their median is used",
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
    if args.paced_rate is not None and not args.paced_rate > 0:
        p.error("--paced-rate must be > 0")
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
    if "router" in scenarios or PACED in scenarios:
        why = router_available()
        for name in ("router", PACED):
            if why is not None and name in scenarios:
                skipped[name] = why
                scenarios.remove(name)
                progress(f"skipping scenario {name}: {why}")
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
        rotating = [s for s in scenarios if s != PACED]
        n = 0

        def run_one(name: str, inp: InputSet, rnd: int, run_settings: Settings) -> None:
            nonlocal n
            n += 1
            tag = f"[{n}/{total}] round {rnd} {inp.name:<5} {name:<14}"
            try:
                r = SCENARIOS[name](run_settings, inp, rnd)
            except BenchError as exc:
                failures.append(
                    {"scenario": name, "size": inp.name, "round": rnd, "error": str(exc)}
                )
                progress(f"{tag} FAILED: {exc}")
                return
            results.append(r)
            if name == "dcmtk-pair":
                limit = durable_limit(r, inp, workdir)
                results.append(limit)
                progress(f"{tag} durable-limit {limit.rate:7.0f} inst/s ({limit.notes[0]})")
            ours = "" if r.cpu_ours_s is None else f" (ours {r.cpu_ours_s:.2f})"
            rss = "" if r.peak_rss_ours_mib is None else f" rss {r.peak_rss_ours_mib:.0f} MiB"
            lat = "" if r.latency_p99_s is None else f" p99 {r.latency_p99_s * 1e3:.1f} ms"
            progress(
                f"{tag} {r.rate:7.0f} inst/s {r.mb_s:7.1f} MB/s "
                f"{r.wall_s:6.2f} s cpu {r.cpu_s:.2f} s{ours}{rss}{lat}"
            )

        for rnd in range(1, args.runs + 1):
            for inp in inputs if rotating else []:
                k = (rnd - 1) % len(rotating)
                order = rotating[k:] + rotating[:k]  # rotate: no scenario always goes first
                for name in order:
                    if name.endswith("-4senders") and inp.name != args.concurrent_size:
                        continue
                    run_one(name, inp, rnd, settings)
        # router-paced last: its rate is half of router's median, so router's runs come first
        for rnd in range(1, args.runs + 1):
            for inp in inputs if PACED in scenarios else []:
                router_rates = [
                    r.rate for r in results if r.scenario == "router" and r.size == inp.name
                ]
                plan = paced_rate(router_rates, args.paced_rate)
                if plan is None:
                    skipped[f"{PACED} {inp.name}"] = (
                        f"no run of router at {inp.name} in this invocation to take half of; "
                        "run it too (--only router,router-paced) or give --paced-rate R"
                    )
                    continue
                rate, basis = plan
                paced = dataclasses.replace(settings, paced_rate=rate, paced_basis=basis)
                run_one(PACED, inp, rnd, paced)
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
            "paced_rate": args.paced_rate,
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

"""Where one association's time per instance goes, phase by phase.

    python -m benchmarks.phases [--size 8k] [--count 2000] [--ingest-only] [--pdu 16384]
                                [--dest-dir DIR]

storescu -> the router (with :mod:`benchmarks.phase_timers`) -> storescp, one
association, fsync on, as the `router` scenario of `make bench` runs it (or the
`router-ingest` one with ``--ingest-only``). Prints the p50, p90 and mean of each phase
and the rate, then the DB thread's transactions by what they carried and the router's
CPU per instance by thread. The timers cost a few microseconds per stamp; rates are a
little below `make bench`'s. Where the time goes is what this is for: compare phases,
not rates, and compare runs made back to back (the machine's speed drifts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROUTER_AE,
    InputSet,
    RunDir,
    Settings,
    check_sender,
    count_files,
    dcmtk_env,
    py_env,
    storescp,
    storescu_argv,
)
from benchmarks.dicomfiles import read_meta
from benchmarks.phase_timers import PHASES
from benchmarks.procs import BenchError, reap, reserve_port, running, spawn, wait_listening
from benchmarks.router_runs import _wait_ready, ingest_config, router_config
from benchmarks.run import parse_sizes


def measure(settings: Settings, inputs: InputSet, *, forward: bool) -> dict[str, Any]:
    rd = RunDir(settings, "phases")
    try:
        out, storage = rd.out(), rd.sub("storage")
        dest_port, port, http_port = reserve_port(), reserve_port(), reserve_port()
        cfg = rd.path / "router.yaml"
        cfg.write_text(
            router_config(settings, port, storage, http_port, dest_port, 1, "")
            if forward
            else ingest_config(settings, port, storage, http_port)
        )
        report = rd.path / "phases.json"
        env = py_env() | {"PHASES_OUT": str(report)}
        deadline = time.monotonic() + settings.timeout
        with running(storescp(settings, rd, out, dest_port)) as scp:
            wait_listening(scp, dest_port, time.monotonic() + 20, "storescp")
            argv = [settings.python, "-m", "benchmarks.phase_timers", "--config", str(cfg)]
            router = spawn(argv, env=env, stdout=rd.log("router-out"), stderr=rd.log("router"))
            with running(router):
                _wait_ready(router, rd, http_port)
                t0 = time.perf_counter()
                scu = spawn(
                    storescu_argv(settings, inputs, port, ROUTER_AE),
                    env=dcmtk_env(),
                    stderr=rd.log("storescu"),
                )
                reap(scu, deadline, "storescu")
                check_sender(scu, rd, "storescu")
                while forward and count_files(out) < inputs.count:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{count_files(out)} of {inputs.count} delivered")
                    time.sleep(0.02)
                wall = time.perf_counter() - t0
                router.send_signal(signal.SIGTERM)
                reap(router, time.monotonic() + 30, "router")
        if not report.exists():
            raise BenchError(f"the router wrote no phases:\n{rd.tail('router')}")
        result: dict[str, Any] = json.loads(report.read_text())
        result["rate"] = inputs.count / wall
        return result
    finally:
        rd.close()


def table(result: dict[str, Any]) -> str:
    lines = [f"{'phase':12s} {'p50 ms':>8s} {'p90 ms':>8s} {'mean ms':>8s}"]
    for name in PHASES:
        p = result.get(name)
        if p is not None:
            lines.append(f"{name:12s} {p['p50_ms']:8.3f} {p['p90_ms']:8.3f} {p['mean_ms']:8.3f}")
    lines.append(f"{result['instances']} instances timed, {result['rate']:.0f} instances/s")
    batches = result.get("batches", {})
    if batches:
        lines.append(f"{'DB batches':12s} {'count':>8s} {'p50 ms':>8s} {'mean ms':>8s}")
        for kind, b in sorted(batches.items()):
            lines.append(f"{kind:12s} {b['count']:8d} {b['p50_ms']:8.3f} {b['mean_ms']:8.3f}")
    threads = {k: v for k, v in result.get("threads", {}).items() if v >= 0.005}
    if threads:
        lines.append("router CPU ms per instance, by thread:")
        for name, ms in sorted(threads.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:28s} {ms:7.3f}")
        lines.append(f"  {'all':28s} {sum(threads.values()):7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.phases", description=__doc__)
    ap.add_argument("--size", default="8k", help="instance size (8k, 512k, ...)")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--ingest-only", action="store_true", help="no rule: the ingest alone")
    ap.add_argument("--pdu", type=int, default=16384)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--dest-dir",
        type=Path,
        default=None,
        help="where storescp writes (as make bench's --dest-dir: a tmpfs keeps its disk"
        " writes away from the router's syncs)",
    )
    args = ap.parse_args(argv)
    try:
        ((_, count, size),) = parse_sizes(f"{args.size}:{args.count}")
    except ValueError as e:
        ap.error(str(e))
    from router.samples import write_many

    with tempfile.TemporaryDirectory(prefix="phases-", dir=args.workdir) as tmp:
        work = Path(tmp)
        settings = Settings(
            workdir=work, pdu=args.pdu, timeout=args.timeout, dest_dir=args.dest_dir
        )
        paths = write_many(work / "data", count, size)
        inputs = InputSet(args.size, work / "data", [read_meta(p) for p in paths])
        os.sync()  # the inputs' writeback must not compete with the router's syncs
        try:
            result = measure(settings, inputs, forward=not args.ingest_only)
        except BenchError as e:
            print(f"phases: {e}", file=sys.stderr)
            return 1
    what = "ingest alone" if args.ingest_only else "storescu -> router -> storescp"
    print(f"{what}, {args.count} x {args.size}, one association\n{table(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

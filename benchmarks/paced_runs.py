"""router-paced: our requestor client, paced -> `python -m router run` -> storescp.

The latency target is for a router that is not saturated: receipt-to-delivery p99 at
half the maximum rate. `router` measures that maximum (one storescu as fast as it can,
where each instance also waits behind the ones before it); this scenario sends the same
instances on one association at half of it (run.py sets the rate per size) and times
every instance from the moment the sender saw its Success to the moment storescp closed
its file. The router's own histogram is read too, as a cross-check: its buckets (10, 25,
50, 100 ms, router/metrics.py) only bound a quantile between two edges, while the files
time each instance.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from benchmarks.common import (
    HOST,
    ROUTER_AE,
    SCU_AE,
    InputSet,
    Paced,
    RunDir,
    RunResult,
    Settings,
    check_sender,
    count_files,
    make_result,
    requestor_client,
    storescp,
)
from benchmarks.pacing import per_instance_latency, share_at_most
from benchmarks.procs import (
    BenchError,
    open_paths,
    proc_usage,
    reap,
    reserve_port,
    running,
    wait_listening,
)
from benchmarks.router_runs import (
    _http_get,
    _spawn_router,
    _wait_ready,
    histogram_buckets,
    histogram_quantiles,
    router_config,
)

NAME = "router-paced"
#: the target: receipt-to-delivery p99 under this at half the measured maximum rate
P99_TARGET_S = 0.05
LATENCY_SOURCE = "per instance: requestor's Success -> storescp's file mtime"
METRICS_SOURCE = "router /metrics histogram (interpolated in its buckets)"


def read_acks(path: Path) -> tuple[dict[str, float], list[float]]:
    """The requestor client's --acks file: SOP Instance UID -> time.time() of its
    Success, and each send's lag behind its slot."""
    acked: dict[str, float] = {}
    lags: list[float] = []
    for line in path.read_text().splitlines():
        uid, t, late = line.split("\t")
        acked[uid] = float(t)
        lags.append(float(late))
    return acked, lags


def delivered_times(out: Path) -> dict[str, float]:
    """SOP Instance UID -> mtime of storescp's file (named <modality>.<UID>)."""
    delivered: dict[str, float] = {}
    with os.scandir(out) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            uid = e.name.split(".", 1)[1] if "." in e.name else e.name
            delivered[uid] = e.stat().st_mtime
    return delivered


def _wait_whole(scp: subprocess.Popen[bytes], out: Path, count: int, deadline: float) -> None:
    """Until ``count`` files are in ``out`` and storescp has none of them open: a file's
    mtime is its delivery time only once storescp has closed it."""
    root = os.path.realpath(out) + os.sep
    while True:
        if count_files(out) >= count and not any(p.startswith(root) for p in open_paths(scp.pid)):
            return
        if scp.poll() is not None:
            raise BenchError(f"storescp exited with {scp.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"router delivered {count_files(out)}/{count} in time")
        time.sleep(0.01)


def run_router_paced(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    rate = settings.paced_rate
    if rate is None:
        raise BenchError("router-paced needs a rate (half of router's, or --paced-rate)")
    rd = RunDir(settings, NAME)
    try:
        out = rd.out()
        storage = rd.sub("storage")
        acks_file = rd.path / "acks.tsv"
        dest_port, port, http_port = reserve_port(), reserve_port(), reserve_port()
        cfg = rd.path / "router.yaml"
        cfg.write_text(router_config(settings, port, storage, http_port, dest_port, 1, ""))
        # sending alone takes count / rate: the deadline is on top of that
        deadline = time.monotonic() + settings.timeout + inputs.count / rate
        with running(storescp(settings, rd, out, dest_port)) as scp:
            wait_listening(scp, dest_port, time.monotonic() + 20, "storescp")
            router = _spawn_router(settings, rd, cfg)
            with running(router):
                _wait_ready(router, rd, http_port)
                args = [
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--called-ae",
                    ROUTER_AE,
                    "--calling-ae",
                    SCU_AE,
                    "--pdu",
                    str(settings.pdu),
                    "--rate",
                    repr(rate),
                    "--acks",
                    str(acks_file),
                    "--wait-go",
                    str(inputs.directory),
                ]
                with requestor_client(settings, rd, args) as cli:
                    u0 = proc_usage(router.pid)
                    assert cli.stdin is not None
                    t0 = time.time()  # the clock of the acknowledgements
                    cli.stdin.write(b"go\n")
                    cli.stdin.close()
                    reap(cli, deadline, "requestor_client")
                check_sender(cli, rd, "requestor")
                _wait_whole(scp, out, inputs.count, deadline)
                if router.poll() is not None:
                    raise BenchError(f"router died ({router.returncode}):\n{rd.tail('router')}")
                u1 = proc_usage(router.pid)
                u_scp = proc_usage(scp.pid)
                status, metrics = _http_get(f"http://{HOST}:{http_port}/metrics", timeout=5)
        acked, lags = read_acks(acks_file)
        if not acked:
            raise BenchError(f"requestor_client recorded no Success:\n{rd.tail('requestor')}")
        # the rate sent at: from "go" to the last Success (not to the client's exit, which
        # adds its release and interpreter shutdown), so inst/s shows the pacing held
        wall = max(acked.values()) - t0
        # the sender is not counted for CPU: it is our paced client, not the router
        result = make_result(NAME, inputs, rnd, wall, (u0, u1), {"storescp": u_scp})
        lat = per_instance_latency(acked, delivered_times(out))
        buckets = histogram_buckets(metrics) if status == 200 else {}
        mq = histogram_quantiles(metrics, (0.5, 0.99)) if status == 200 else None
        result.paced = Paced(
            rate=rate,
            basis=settings.paced_basis,
            behind=sum(1 for d in lags if d >= 1 / rate),
            max_lag_s=max(lags, default=0.0),
            negative=0 if lat is None else lat.negative,
            metrics_p50_s=None if mq is None else mq[0],
            metrics_p99_s=None if mq is None else mq[1],
            metrics_share_le_50ms=share_at_most(buckets, P99_TARGET_S),
        )
        if lat is not None:
            result.latency_p50_s, result.latency_p99_s = lat.p50_s, lat.p99_s
            result.latency_source = LATENCY_SOURCE
            if lat.matched != inputs.count:
                result.notes.append(f"latency of {lat.matched}/{inputs.count} instances")
        elif mq is not None:
            result.latency_p50_s, result.latency_p99_s = mq
            result.latency_source = METRICS_SOURCE
            result.notes.append("no acks matched to files: latency from /metrics")
        return result
    finally:
        rd.close()

"""``router-2nodes``: two router nodes on one PostgreSQL queue (docs/cluster.md), one
storescu sending to each at once, both forwarding to one storescp --fork.

The nodes share the database (a throwaway server started by benchmarks/pgserver.py) and
the storage path, each with its own DICOM and HTTP port and node id. Either node may
send what the other received. The figures are the pair's: wall time until storescp has
every instance, CPU of both nodes together per instance, the larger peak RSS, and the
delivery latency of both nodes' histograms summed. Compare with ``router-2senders`` (one
node, two senders) and ``router-pg-2senders`` (the same on PostgreSQL).
"""

from __future__ import annotations

import contextlib
import time

from benchmarks.common import (
    HOST,
    ROUTER_AE,
    InputSet,
    RunDir,
    RunResult,
    Settings,
    count_files,
    dcmtk_env,
    make_result,
    split_files,
    storescp,
    storescu_argv,
)
from benchmarks.procs import (
    BenchError,
    Usage,
    proc_usage,
    reap,
    reserve_port,
    running,
    session_usage,
    spawn,
    wait_listening,
)
from benchmarks.router_runs import (
    _http_get,
    _senders_done,
    _spawn_router,
    _wait_ready,
    histogram_quantiles,
    pg_database,
    router_config,
)

NODES = ("a", "b")


def run_router_2nodes(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    with pg_database() as dsn:
        return _run(settings, inputs, rnd, dsn)


def _run(settings: Settings, inputs: InputSet, rnd: int, dsn: str) -> RunResult:
    name = "router-2nodes"
    rd = RunDir(settings, name)
    try:
        out = rd.out()
        storage = rd.sub("storage")
        dest_port = reserve_port()
        ports = {node: (reserve_port(), reserve_port()) for node in NODES}  # DICOM, HTTP
        queue = f'queue: {{backend: postgresql, dsn: "{dsn}"}}\n'
        configs = {}
        for node, (port, http_port) in ports.items():
            cfg = rd.path / f"router-{node}.yaml"
            cfg.write_text(
                f"node_id: node-{node}\n"
                # one association each: two in all, as router-2senders has
                + router_config(settings, port, storage, http_port, dest_port, 1, queue)
            )
            configs[node] = cfg
        deadline = time.monotonic() + settings.timeout
        with running(storescp(settings, rd, out, dest_port, fork=True)) as scp:
            wait_listening(scp, dest_port, time.monotonic() + 20, "storescp")
            # one after the other: the first creates the schema (the second would wait
            # for its migration lock anyway)
            with contextlib.ExitStack() as nodes:
                routers = {}
                for node in NODES:
                    log = f"router-{node}"
                    p = nodes.enter_context(
                        running(_spawn_router(settings, rd, configs[node], log))
                    )
                    _wait_ready(p, rd, ports[node][1], log)
                    routers[node] = p
                u0 = {node: proc_usage(p.pid) for node, p in routers.items()}
                t0 = time.perf_counter()
                parts = split_files(inputs, len(NODES))
                scus = [
                    spawn(
                        storescu_argv(settings, inputs, ports[node][0], ROUTER_AE, files=part),
                        env=dcmtk_env(),
                        stderr=rd.log("storescu"),
                    )
                    for node, part in zip(NODES, parts, strict=True)
                ]
                usages: dict[int, Usage] = {}
                while True:
                    _senders_done(scus, usages, rd)
                    if count_files(out) >= inputs.count:
                        break
                    for node, p in routers.items():
                        if p.poll() is not None:
                            log = f"router-{node}"
                            raise BenchError(f"{log} died ({p.returncode}):\n{rd.tail(log)}")
                    if time.monotonic() > deadline:
                        got = count_files(out)
                        raise BenchError(f"the two nodes delivered {got}/{inputs.count} in time")
                    time.sleep(0.02)
                wall = time.perf_counter() - t0
                u1 = {node: proc_usage(p.pid) for node, p in routers.items()}
                u_scp = session_usage(scp.pid)
                for scu in scus:
                    if scu.pid not in usages:
                        usages[scu.pid] = reap(scu, time.monotonic() + 30, "storescu")
                texts = []
                for _, http_port in ports.values():
                    status, text = _http_get(f"http://{HOST}:{http_port}/metrics", timeout=5)
                    if status == 200:
                        texts.append(text)
        ours = (
            Usage(sum(u.cpu_s for u in u0.values()), 0),
            Usage(sum(u.cpu_s for u in u1.values()), max(u.peak_rss_kib for u in u1.values())),
        )
        u_scu = Usage(
            sum(u.cpu_s for u in usages.values()), max(u.peak_rss_kib for u in usages.values())
        )
        result = make_result(name, inputs, rnd, wall, ours, {"storescu": u_scu, "storescp": u_scp})
        result.notes.append("CPU and RSS: both nodes (CPU summed, RSS the larger)")
        qs = histogram_quantiles("\n".join(texts), (0.5, 0.99)) if len(texts) == 2 else None
        if qs is not None:
            result.latency_p50_s, result.latency_p99_s = qs
            result.latency_source = "metrics (both nodes)"
        return result
    finally:
        rd.close()

"""One timed run of each scenario. Each returns a RunResult or raises BenchError.

Timing: the clock starts when the sender is started (storescu) or told to go (our
requestor client, after its imports) and stops when the sender has exited (all
C-STORE responses received and the association released), or, for the router, when the
last file has appeared at the final storescp.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from benchmarks.common import (
    HOST,
    OUR_AE,
    SCU_AE,
    STORESCP_AE,
    InputSet,
    RunDir,
    RunResult,
    Settings,
    check_count,
    check_sender,
    count_files,
    dcmtk_env,
    make_result,
    py_env,
    requestor_client,
    split_files,
    storescp,
    storescu_argv,
)
from benchmarks.procs import (
    BenchError,
    Usage,
    proc_usage,
    read_line,
    reap,
    reserve_port,
    running,
    session_usage,
    spawn,
    wait_listening,
)

# --- dcmtk-pair: storescu -> storescp --------------------------------------------------


def run_dcmtk_pair(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    rd = RunDir(settings, "dcmtk-pair")
    try:
        out = rd.out()
        port = reserve_port()
        deadline = time.monotonic() + settings.timeout
        with running(storescp(settings, rd, out, port)) as scp:
            wait_listening(scp, port, time.monotonic() + 20, "storescp")
            t0 = time.perf_counter()
            scu = spawn(
                storescu_argv(settings, inputs, port, STORESCP_AE),
                env=dcmtk_env(),
                stderr=rd.log("storescu"),
            )
            u_scu = reap(scu, deadline, "storescu")
            wall = time.perf_counter() - t0
            u_scp = proc_usage(scp.pid)
        check_sender(scu, rd, "storescu")
        check_count(out, inputs.count, rd, "storescp")
        return make_result(
            "dcmtk-pair", inputs, rnd, wall, None, {"storescu": u_scu, "storescp": u_scp}
        )
    finally:
        rd.close()


def run_dcmtk_pair_4senders(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """4 storescu in parallel (a quarter of the files each) -> storescp --fork: the
    reference for the router with 4 concurrent senders."""
    rd = RunDir(settings, "dcmtk-pair-4senders")
    try:
        out = rd.out()
        port = reserve_port()
        deadline = time.monotonic() + settings.timeout
        with running(storescp(settings, rd, out, port, fork=True)) as scp:
            wait_listening(scp, port, time.monotonic() + 20, "storescp")
            t0 = time.perf_counter()
            scus = [
                spawn(
                    storescu_argv(settings, inputs, port, STORESCP_AE, files=part),
                    env=dcmtk_env(),
                    stderr=rd.log("storescu"),
                )
                for part in split_files(inputs, 4)
            ]
            usages = [reap(scu, deadline, "storescu") for scu in scus]
            wall = time.perf_counter() - t0
            for scu in scus:
                check_sender(scu, rd, "storescu")
            # the last association's child may still be writing its file
            while count_files(out) < inputs.count and time.monotonic() < deadline:
                time.sleep(0.01)
            wall = max(wall, time.perf_counter() - t0)
            u_scp = session_usage(scp.pid)
        check_count(out, inputs.count, rd, "storescp")
        u_scu = Usage(sum(u.cpu_s for u in usages), max(u.peak_rss_kib for u in usages))
        return make_result(
            "dcmtk-pair-4senders", inputs, rnd, wall, None, {"storescu": u_scu, "storescp": u_scp}
        )
    finally:
        rd.close()


# --- acceptor: storescu -> our Acceptor + FileSink ----------------------------------------


def _run_acceptor(settings: Settings, inputs: InputSet, rnd: int, *, nodelay: bool) -> RunResult:
    name = "acceptor" if nodelay else "acceptor-nagle"
    rd = RunDir(settings, name)
    try:
        out = rd.out()
        deadline = time.monotonic() + settings.timeout
        argv = [
            settings.python,
            "-m",
            "benchmarks.acceptor_server",
            "--dir",
            str(out),
            "--pdu",
            str(settings.pdu),
            "--ae",
            OUR_AE,
        ]
        srv = spawn(argv, env=py_env(), stdout=subprocess.PIPE, stderr=rd.log("acceptor"))
        with running(srv):
            try:
                line = read_line(srv, time.monotonic() + 30, "acceptor_server")
                port = int(line.split()[-1])
            except (BenchError, ValueError) as exc:
                msg = f"acceptor_server did not start: {exc}\n{rd.tail('acceptor')}"
                raise BenchError(msg) from None
            u0 = proc_usage(srv.pid)
            t0 = time.perf_counter()
            scu = spawn(
                storescu_argv(settings, inputs, port, OUR_AE),
                env=dcmtk_env(nodelay),
                stderr=rd.log("storescu"),
            )
            u_scu = reap(scu, deadline, "storescu")
            wall = time.perf_counter() - t0
            u1 = proc_usage(srv.pid)
            if srv.poll() is not None:
                raise BenchError(f"acceptor_server died ({srv.returncode}):\n{rd.tail('acceptor')}")
        check_sender(scu, rd, "storescu")
        check_count(out, inputs.count, rd, "acceptor")
        return make_result(name, inputs, rnd, wall, (u0, u1), {"storescu": u_scu})
    finally:
        rd.close()


def run_acceptor(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    return _run_acceptor(settings, inputs, rnd, nodelay=True)


def run_acceptor_nagle(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """A sender that keeps Nagle on (many hospital senders do): storescu without TCP_NODELAY."""
    return _run_acceptor(settings, inputs, rnd, nodelay=False)


# --- requestor: our associate()/c_store -> storescp ----------------------------------------


def _run_requestor(settings: Settings, inputs: InputSet, rnd: int, *, nodelay: bool) -> RunResult:
    name = "requestor" if nodelay else "requestor-nagle"
    rd = RunDir(settings, name)
    try:
        out = rd.out()
        port = reserve_port()
        deadline = time.monotonic() + settings.timeout
        with running(storescp(settings, rd, out, port, nodelay=nodelay)) as scp:
            wait_listening(scp, port, time.monotonic() + 20, "storescp")
            args = [
                "--host",
                HOST,
                "--port",
                str(port),
                "--called-ae",
                STORESCP_AE,
                "--calling-ae",
                SCU_AE,
                "--pdu",
                str(settings.pdu),
                "--wait-go",
                str(inputs.directory),
            ]
            with requestor_client(settings, rd, args) as cli:
                u0 = proc_usage(cli.pid)
                assert cli.stdin is not None
                t0 = time.perf_counter()
                cli.stdin.write(b"go\n")
                cli.stdin.close()
                u_cli = reap(cli, deadline, "requestor_client")
                wall = time.perf_counter() - t0
            u_scp = proc_usage(scp.pid)
        check_sender(cli, rd, "requestor")
        check_count(out, inputs.count, rd, "storescp")
        return make_result(name, inputs, rnd, wall, (u0, u_cli), {"storescp": u_scp})
    finally:
        rd.close()


def run_requestor(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    return _run_requestor(settings, inputs, rnd, nodelay=True)


def run_requestor_nagle(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """A destination that keeps Nagle on (DCMTK's default without TCP_NODELAY=1, so many
    PACS): storescp without TCP_NODELAY. Without quick ACKs from our side, each response
    waits for the delayed-ACK timer (about 40 ms)."""
    return _run_requestor(settings, inputs, rnd, nodelay=False)


from benchmarks.cluster_runs import run_router_2nodes  # noqa: E402
from benchmarks.orthanc_runs import run_router_cstore_orthanc, run_router_stow  # noqa: E402
from benchmarks.paced_runs import run_router_paced  # noqa: E402
from benchmarks.router_runs import (  # noqa: E402
    run_router,
    run_router_2senders,
    run_router_4senders,
    run_router_ingest,
    run_router_pg,
    run_router_pg_2senders,
)

Runner = Callable[[Settings, InputSet, int], RunResult]

SCENARIOS: dict[str, Runner] = {
    "dcmtk-pair": run_dcmtk_pair,
    "dcmtk-pair-4senders": run_dcmtk_pair_4senders,
    "router-4senders": run_router_4senders,
    "acceptor": run_acceptor,
    "requestor": run_requestor,
    "router": run_router,
    "router-paced": run_router_paced,
    "router-ingest": run_router_ingest,
    "router-pg": run_router_pg,
    "router-2senders": run_router_2senders,
    "router-pg-2senders": run_router_pg_2senders,
    "router-2nodes": run_router_2nodes,
    "acceptor-nagle": run_acceptor_nagle,
    "requestor-nagle": run_requestor_nagle,
    "router-stow": run_router_stow,
    "router-cstore-orthanc": run_router_cstore_orthanc,
}
DEFAULT_SCENARIOS = (
    "dcmtk-pair",
    "dcmtk-pair-4senders",
    "router-4senders",
    "acceptor",
    "requestor",
    "router",
    # after every round of the others: paced at half of router's median (run.py)
    "router-paced",
    "router-ingest",
    "acceptor-nagle",
    "requestor-nagle",
    # skipped with the reason when Orthanc is not installed (run.py)
    "router-stow",
    "router-cstore-orthanc",
)
#: scenarios that need Orthanc (benchmarks/orthanc_runs.py)
ORTHANC_SCENARIOS = ("router-stow", "router-cstore-orthanc")
TARGETS: dict[str, float] = {
    "acceptor": 0.9,
    "requestor": 0.9,
    "acceptor-nagle": 0.9,
    "requestor-nagle": 0.9,
}
RSS_LIMIT_MIB = 100.0

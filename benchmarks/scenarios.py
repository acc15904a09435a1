"""One timed run of each scenario. Each returns a RunResult or raises BenchError.

Timing: the clock starts when the sender is started (storescu) or told to go (our
requestor client, after its imports) and stops when the sender has exited (all
C-STORE responses received and the association released), or, for the router, when the
last file has appeared at the final storescp.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.dicomfiles import FileMeta
from benchmarks.procs import (
    BenchError,
    Usage,
    proc_usage,
    read_line,
    reap,
    reserve_port,
    running,
    spawn,
    try_reap,
    wait_listening,
)

STORESCP_AE = "STORESCP"
OUR_AE = "BENCHSCP"
SCU_AE = "BENCHSCU"
ROUTER_AE = "ROUTER"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class InputSet:
    name: str  # "small" | "large"
    directory: Path
    files: list[FileMeta]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Settings:
    workdir: Path
    pdu: int
    timeout: float  # seconds allowed for one run
    storescp_extra: tuple[str, ...] = ()
    python: str = sys.executable
    keep_logs: bool = False
    dest_dir: Path | None = None  # where the instances received are written (--dest-dir)
    # move finished runs aside instead of deleting them (see RunDir.close)
    defer_cleanup: bool = False


TRASH = ".trash"


@dataclass
class RunResult:
    scenario: str
    size: str
    round: int
    instances: int
    bytes: int
    wall_s: float
    cpu_ours_s: float | None  # our process (acceptor, requestor, router); None for dcmtk-pair
    cpu_peers_s: float  # the DCMTK processes measured
    peak_rss_ours_mib: float | None
    peak_rss_peers_mib: float
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.bytes / self.wall_s / 1e6

    @property
    def cpu_s(self) -> float:
        return self.cpu_peers_s + (self.cpu_ours_s or 0.0)

    def as_json(self) -> dict[str, object]:
        d = asdict(self)
        d.update(instances_per_s=self.rate, mb_per_s=self.mb_s, cpu_s=self.cpu_s)
        return d


def _mib(kib: int) -> float:
    return kib / 1024


def _result(
    scenario: str,
    inputs: InputSet,
    rnd: int,
    wall: float,
    ours: tuple[Usage, Usage] | None,
    peers: Sequence[Usage],
) -> RunResult:
    """One run's figures: ``ours`` is our process's usage (at the start, at the end),
    None when the run has no process of ours; ``peers`` the DCMTK processes'."""
    return RunResult(
        scenario=scenario,
        size=inputs.name,
        round=rnd,
        instances=inputs.count,
        bytes=inputs.total_bytes,
        wall_s=wall,
        cpu_ours_s=None if ours is None else ours[1].cpu_s - ours[0].cpu_s,
        cpu_peers_s=sum(u.cpu_s for u in peers),
        peak_rss_ours_mib=None if ours is None else _mib(ours[1].peak_rss_kib),
        peak_rss_peers_mib=_mib(max(u.peak_rss_kib for u in peers)),
    )


def dcmtk_env(nodelay: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def py_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class RunDir:
    """A scratch directory for one run: output dirs and logs; removed afterwards."""

    def __init__(self, settings: Settings, label: str) -> None:
        self.path = settings.workdir / f"{label}-{time.monotonic_ns()}"
        self.path.mkdir(parents=True)
        self.keep = settings.keep_logs
        self._logs: list[IO[bytes]] = []
        self._dest_root = settings.dest_dir
        self._outs: list[Path] = []
        self._trash = settings.workdir / TRASH if settings.defer_cleanup else None

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir()
        return p

    def out(self) -> Path:
        """Where this run's receiver writes: under the run directory, or a new directory
        under ``--dest-dir`` (removed with the run unless --keep)."""
        if self._dest_root is None:
            return self.sub("out")
        p = self._dest_root / f"{self.path.name}-out"
        p.mkdir(parents=True)
        self._outs.append(p)
        return p

    def log(self, name: str) -> IO[bytes]:
        f = (self.path / f"{name}.log").open("wb")
        self._logs.append(f)
        return f

    def tail(self, name: str, lines: int = 8) -> str:
        try:
            text = (self.path / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Remove the run's files, or with ``defer_cleanup`` move them aside (a rename) to
        be removed after the last run: on ext4 without a journal, creating a file right
        after thousands were deleted scans their inodes (measured here: the DCMTK pair
        ran 25-35% slower in the 30 s after a previous run's 5000 files were deleted),
        so a run would pay for the cleanup of the one before it. Then ``sync``: kept files
        would otherwise be written back during the next runs, competing with the
        router's syncs (measured: the router's durable ingest at half its rate)."""
        for f in self._logs:
            f.close()
        if self.keep:
            os.sync()
            return
        for p in (self.path, *self._outs):
            if self._trash is not None:
                trash = p.parent / TRASH if p in self._outs else self._trash
                try:
                    trash.mkdir(exist_ok=True)
                    p.rename(trash / p.name)
                    continue
                except OSError:
                    pass
            shutil.rmtree(p, ignore_errors=True)
        os.sync()


def _count_files(directory: Path) -> int:
    with os.scandir(directory) as it:
        return sum(1 for e in it if not e.name.startswith("."))


def _storescp(
    settings: Settings, rd: RunDir, out: Path, port: int, *, nodelay: bool = True
) -> subprocess.Popen[bytes]:
    argv = [
        "storescp",
        "--aetitle",
        STORESCP_AE,
        "--max-pdu",
        str(settings.pdu),
        "--disable-host-lookup",
        "--output-directory",
        str(out),
        *settings.storescp_extra,
        str(port),
    ]
    return spawn(argv, env=dcmtk_env(nodelay), stderr=rd.log("storescp"))


def _storescu_argv(
    settings: Settings, inputs: InputSet, port: int, called_ae: str, *, verbose: bool = False
) -> list[str]:
    return [
        "storescu",
        *(["--verbose"] if verbose else []),
        "--aetitle",
        SCU_AE,
        "--call",
        called_ae,
        "--max-pdu",
        str(settings.pdu),
        "--scan-directories",
        HOST,
        str(port),
        str(inputs.directory),
    ]


def _check_sender(proc: subprocess.Popen[bytes], rd: RunDir, name: str) -> None:
    if proc.returncode != 0:
        raise BenchError(f"{name} exited with {proc.returncode}:\n{rd.tail(name)}")


def _check_count(out: Path, expected: int, rd: RunDir, name: str) -> None:
    got = _count_files(out)
    if got != expected:
        raise BenchError(f"{name} stored {got} files, expected {expected}:\n{rd.tail(name)}")


# --- dcmtk-pair: storescu -> storescp --------------------------------------------------


def run_dcmtk_pair(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    rd = RunDir(settings, "dcmtk-pair")
    try:
        out = rd.out()
        port = reserve_port()
        deadline = time.monotonic() + settings.timeout
        with running(_storescp(settings, rd, out, port)) as scp:
            wait_listening(scp, port, time.monotonic() + 20, "storescp")
            t0 = time.perf_counter()
            scu = spawn(
                _storescu_argv(settings, inputs, port, STORESCP_AE),
                env=dcmtk_env(),
                stderr=rd.log("storescu"),
            )
            u_scu = reap(scu, deadline, "storescu")
            wall = time.perf_counter() - t0
            u_scp = proc_usage(scp.pid)
        _check_sender(scu, rd, "storescu")
        _check_count(out, inputs.count, rd, "storescp")
        return _result("dcmtk-pair", inputs, rnd, wall, None, (u_scu, u_scp))
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
                _storescu_argv(settings, inputs, port, OUR_AE),
                env=dcmtk_env(nodelay),
                stderr=rd.log("storescu"),
            )
            u_scu = reap(scu, deadline, "storescu")
            wall = time.perf_counter() - t0
            u1 = proc_usage(srv.pid)
            if srv.poll() is not None:
                raise BenchError(f"acceptor_server died ({srv.returncode}):\n{rd.tail('acceptor')}")
        _check_sender(scu, rd, "storescu")
        _check_count(out, inputs.count, rd, "acceptor")
        return _result(name, inputs, rnd, wall, (u0, u1), (u_scu,))
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
        with running(_storescp(settings, rd, out, port, nodelay=nodelay)) as scp:
            wait_listening(scp, port, time.monotonic() + 20, "storescp")
            argv = [
                settings.python,
                "-m",
                "benchmarks.requestor_client",
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
            cli = spawn(
                argv,
                env=py_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=rd.log("requestor"),
            )
            with running(cli):
                try:
                    line = read_line(cli, time.monotonic() + 30, "requestor_client")
                except BenchError as exc:
                    raise BenchError(f"{exc}\n{rd.tail('requestor')}") from None
                if line != "ready":
                    raise BenchError(f"requestor_client said {line!r}, expected 'ready'")
                u0 = proc_usage(cli.pid)
                assert cli.stdin is not None
                t0 = time.perf_counter()
                cli.stdin.write(b"go\n")
                cli.stdin.close()
                u_cli = reap(cli, deadline, "requestor_client")
                wall = time.perf_counter() - t0
            u_scp = proc_usage(scp.pid)
        _check_sender(cli, rd, "requestor")
        _check_count(out, inputs.count, rd, "storescp")
        return _result(name, inputs, rnd, wall, (u0, u_cli), (u_scp,))
    finally:
        rd.close()


def run_requestor(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    return _run_requestor(settings, inputs, rnd, nodelay=True)


def run_requestor_nagle(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """A destination that keeps Nagle on (DCMTK's default without TCP_NODELAY=1, so many
    PACS): storescp without TCP_NODELAY. Without quick ACKs from our side, each response
    waits for the delayed-ACK timer (about 40 ms)."""
    return _run_requestor(settings, inputs, rnd, nodelay=False)


# --- router: storescu -> python -m router run -> storescp ------------------------------


def router_available(python: str = sys.executable) -> str | None:
    """None when the full router can be benchmarked, else why not.

    Imported in a child interpreter: a half-written router must not break the harness.
    """
    try:
        if importlib.util.find_spec("router.app") is None:
            return "router.app is not there yet"
    except (ImportError, ValueError) as exc:
        return f"router.app is not importable: {exc}"
    try:
        proc = subprocess.run(
            [python, "-c", "import router.app"],
            env=py_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"router.app could not be imported: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"router.app is not importable yet: {lines[-1] if lines else proc.returncode}"
    return None


ROUTER_CONFIG = """\
# generated by benchmarks/scenarios.py for one benchmark run. Durability is not optional
# in the router (every instance is synced before its Success), so this is "fsync on".
# Both PDU limits equal the DCMTK peers' (--pdu), so the comparison is like for like.
ae_title: {router_ae}
listen: {{host: {host}, port: {port}, max_pdu_length: {pdu}}}
storage: {{path: {storage}}}
http: {{host: {host}, port: {http_port}}}
destinations:
  sink:
    ae_title: {dest_ae}
    host: {host}
    port: {dest_port}
    max_associations: 1
    max_pdu_length: {pdu}
rules:
  - name: everything
    forward: [sink]
"""


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


_BUCKET = re.compile(
    r"^dicom_router_delivery_latency_seconds_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)"
)
_LE = re.compile(r'le="([^"]+)"')


def histogram_quantiles(metrics_text: str, qs: tuple[float, ...]) -> list[float] | None:
    """Quantiles of delivery_latency_seconds (summed over destinations), as Prometheus'
    histogram_quantile computes them: linear interpolation inside the bucket."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if not m:
            continue
        le = _LE.search(m.group("labels"))
        if not le:
            continue
        bound = float(le.group(1).replace("+Inf", "inf"))
        buckets[bound] = buckets.get(bound, 0.0) + float(m.group("value"))
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    result = []
    for q in qs:
        rank = q * total
        prev_bound, prev_count = 0.0, 0.0
        value = bounds[-2] if len(bounds) > 1 else 0.0
        for b in bounds:
            c = buckets[b]
            if c >= rank:
                if b == float("inf"):
                    value = prev_bound  # as Prometheus does: the highest finite bound
                else:
                    span = c - prev_count
                    frac = (rank - prev_count) / span if span > 0 else 1.0
                    value = prev_bound + (b - prev_bound) * frac
                break
            prev_bound, prev_count = b, c
        result.append(value)
    return result


class _AckTimes:
    """Reads `storescu -v` log lines and stamps each successful response (wall clock)."""

    def __init__(self, stream: IO[bytes], log: IO[bytes]) -> None:
        self.acked: dict[str, float] = {}  # input path -> time.time() of its Success response
        self._stream = stream
        self._log = log
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        current: str | None = None
        for raw in self._stream:
            self._log.write(raw)
            line = raw.decode(errors="replace").rstrip()
            if line.startswith("I: Sending file: "):
                current = line[len("I: Sending file: ") :]
            elif line.startswith("I: Received Store Response (Success") and current:
                self.acked[os.path.realpath(current)] = time.time()
                current = None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _latency_from_files(acks: _AckTimes, inputs: InputSet, out: Path) -> tuple[float, float] | None:
    """Receipt (storescu's Success response) to delivery (mtime at storescp), per instance."""
    delivered: dict[str, float] = {}
    with os.scandir(out) as it:
        for e in it:
            uid = e.name.split(".", 1)[1] if "." in e.name else e.name
            delivered[uid] = e.stat().st_mtime
    lat = []
    for f in inputs.files:
        t_ack = acks.acked.get(os.path.realpath(f.path))
        t_del = delivered.get(f.sop_instance_uid)
        if t_ack is not None and t_del is not None:
            lat.append(max(0.0, t_del - t_ack))
    if len(lat) < 2:
        return None
    qs = statistics.quantiles(lat, n=100, method="inclusive")
    return qs[49], qs[98]


def _spawn_router(settings: Settings, rd: RunDir, cfg: Path) -> subprocess.Popen[bytes]:
    argv = [settings.python, "-m", "router", "run", "--config", str(cfg)]
    return spawn(argv, env=py_env(), stdout=rd.log("router-out"), stderr=rd.log("router"))


def _wait_ready(router: subprocess.Popen[bytes], rd: RunDir, http_port: int) -> None:
    """Until /readyz answers 200 (the router has recovered and listens), at most 60 s."""
    ready_by = time.monotonic() + 60
    while _http_get(f"http://{HOST}:{http_port}/readyz")[0] != 200:
        if router.poll() is not None:
            raise BenchError(f"router exited with {router.returncode}:\n{rd.tail('router')}")
        if time.monotonic() > ready_by:
            raise BenchError(f"router not ready within 60 s:\n{rd.tail('router')}")
        time.sleep(0.05)


def run_router(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    rd = RunDir(settings, "router")
    try:
        out = rd.out()
        storage = rd.sub("storage")
        dest_port, port, http_port = reserve_port(), reserve_port(), reserve_port()
        cfg = rd.path / "router.yaml"
        cfg.write_text(
            ROUTER_CONFIG.format(
                router_ae=ROUTER_AE,
                host=HOST,
                port=port,
                storage=storage,
                http_port=http_port,
                dest_ae=STORESCP_AE,
                dest_port=dest_port,
                pdu=settings.pdu,
            )
        )
        deadline = time.monotonic() + settings.timeout
        with running(_storescp(settings, rd, out, dest_port)) as scp:
            wait_listening(scp, dest_port, time.monotonic() + 20, "storescp")
            router = _spawn_router(settings, rd, cfg)
            with running(router):
                _wait_ready(router, rd, http_port)
                u0 = proc_usage(router.pid)
                t0 = time.perf_counter()
                scu = spawn(
                    _storescu_argv(settings, inputs, port, ROUTER_AE, verbose=True),
                    env=dcmtk_env(),
                    stderr=subprocess.PIPE,
                )
                assert scu.stderr is not None
                acks = _AckTimes(scu.stderr, rd.log("storescu"))
                u_scu: Usage | None = None
                while True:
                    if u_scu is None:
                        u_scu = try_reap(scu)
                        if u_scu is not None and scu.returncode != 0:
                            acks.join(2)
                            raise BenchError(
                                f"storescu exited with {scu.returncode}:\n{rd.tail('storescu')}"
                            )
                    if _count_files(out) >= inputs.count:
                        break
                    if router.poll() is not None:
                        raise BenchError(f"router died ({router.returncode}):\n{rd.tail('router')}")
                    if time.monotonic() > deadline:
                        raise BenchError(
                            f"router delivered {_count_files(out)}/{inputs.count} by the deadline"
                        )
                    time.sleep(0.02)
                wall = time.perf_counter() - t0
                u1 = proc_usage(router.pid)
                u_scp = proc_usage(scp.pid)
                if u_scu is None:
                    u_scu = reap(scu, time.monotonic() + 30, "storescu")
                acks.join(5)
                status, metrics = _http_get(f"http://{HOST}:{http_port}/metrics", timeout=5)
        result = _result("router", inputs, rnd, wall, (u0, u1), (u_scu, u_scp))
        qs = histogram_quantiles(metrics, (0.5, 0.99)) if status == 200 else None
        if qs is not None:
            result.latency_p50_s, result.latency_p99_s = qs
            result.latency_source = "metrics"
        else:
            fallback = _latency_from_files(acks, inputs, out)
            if fallback is not None:
                result.latency_p50_s, result.latency_p99_s = fallback
                result.latency_source = "storescu log + file mtimes"
                result.notes.append("no delivery_latency_seconds in /metrics")
        return result
    finally:
        rd.close()


# --- router-ingest: storescu -> python -m router run, nothing forwarded --------------------

INGEST_CONFIG = """\
# generated by benchmarks/scenarios.py: the router's durable ingest alone (no rule, so
# every instance is acknowledged after its sync and kept as unrouted; nothing forwarded).
ae_title: {router_ae}
listen: {{host: {host}, port: {port}, max_pdu_length: {pdu}}}
storage: {{path: {storage}}}
http: {{host: {host}, port: {http_port}}}
destinations: {{}}
rules: []
"""


def run_router_ingest(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """The durable acknowledgement chain on its own: where the full path's time goes
    between receiving (this) and forwarding (the rest of `router`)."""
    rd = RunDir(settings, "router-ingest")
    try:
        storage = rd.sub("storage")
        port, http_port = reserve_port(), reserve_port()
        cfg = rd.path / "router.yaml"
        cfg.write_text(
            INGEST_CONFIG.format(
                router_ae=ROUTER_AE,
                host=HOST,
                port=port,
                storage=storage,
                http_port=http_port,
                pdu=settings.pdu,
            )
        )
        router = _spawn_router(settings, rd, cfg)
        with running(router):
            _wait_ready(router, rd, http_port)
            u0 = proc_usage(router.pid)
            t0 = time.perf_counter()
            scu = spawn(
                _storescu_argv(settings, inputs, port, ROUTER_AE),
                env=dcmtk_env(),
                stderr=rd.log("storescu"),
            )
            u_scu = reap(scu, time.monotonic() + settings.timeout, "storescu")
            wall = time.perf_counter() - t0
            u1 = proc_usage(router.pid)
            _check_sender(scu, rd, "storescu")
            _, metrics = _http_get(f"http://{HOST}:{http_port}/metrics", timeout=5)
        kept = _metric_total(metrics, "dicom_router_unrouted_instances_total")
        if kept != inputs.count:
            raise BenchError(f"router kept {kept} of {inputs.count} instances")
        return _result("router-ingest", inputs, rnd, wall, (u0, u1), (u_scu,))
    finally:
        rd.close()


def _metric_total(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


Runner = Callable[[Settings, InputSet, int], RunResult]

SCENARIOS: dict[str, Runner] = {
    "dcmtk-pair": run_dcmtk_pair,
    "acceptor": run_acceptor,
    "requestor": run_requestor,
    "router": run_router,
    "router-ingest": run_router_ingest,
    "acceptor-nagle": run_acceptor_nagle,
    "requestor-nagle": run_requestor_nagle,
}
DEFAULT_SCENARIOS = (
    "dcmtk-pair",
    "acceptor",
    "requestor",
    "router",
    "router-ingest",
    "acceptor-nagle",
    "requestor-nagle",
)
TARGETS: dict[str, float] = {
    "acceptor": 0.9,
    "requestor": 0.9,
    "router": 0.8,
    "acceptor-nagle": 0.9,
    "requestor-nagle": 0.9,
}
RSS_LIMIT_MIB = 100.0


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)

"""What every scenario shares: inputs, settings, results, scratch dirs, DCMTK argv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.dicomfiles import FileMeta
from benchmarks.procs import BenchError, Usage, read_line, running, spawn

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
    paced_rate: float | None = None  # router-paced: instances/s; set per size by run.py
    paced_basis: str = ""  # router-paced: where paced_rate came from
    # move finished runs aside instead of deleting them (see RunDir.close)
    defer_cleanup: bool = False


TRASH = ".trash"


@dataclass(frozen=True)
class Paced:
    """What a `router-paced` run adds: the rate it was paced at and the cross-checks."""

    rate: float  # instances/s asked of the sender
    basis: str  # where the rate came from: half of `router`'s median, or --paced-rate
    behind: int  # sends that went out a whole slot (1/rate) or more late
    max_lag_s: float  # the latest send, behind its slot
    negative: int  # files closed before the sender saw their Success (counted as 0)
    # the router's own delivery_latency_seconds over the run: quantiles interpolated
    # inside its buckets, and the exact share at or below 50 ms (a bucket edge)
    metrics_p50_s: float | None
    metrics_p99_s: float | None
    metrics_share_le_50ms: float | None


@dataclass
class RunResult:
    scenario: str
    size: str
    round: int
    instances: int
    bytes: int
    wall_s: float
    cpu_ours_s: float | None  # our process (acceptor, requestor, router); None for dcmtk-pair
    cpu_peers: dict[str, float]  # CPU seconds of each DCMTK peer measured, by tool
    peak_rss_ours_mib: float | None
    peak_rss_peers_mib: float
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_source: str | None = None
    sync_s: float | None = None  # durable-limit only: median pwrite + fdatasync of one file
    paced: Paced | None = None  # router-paced only
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.bytes / self.wall_s / 1e6

    @property
    def cpu_peers_s(self) -> float:
        return sum(self.cpu_peers.values())

    @property
    def cpu_s(self) -> float:
        return self.cpu_peers_s + (self.cpu_ours_s or 0.0)

    def as_json(self) -> dict[str, object]:
        d = asdict(self)
        d.update(
            instances_per_s=self.rate,
            mb_per_s=self.mb_s,
            cpu_s=self.cpu_s,
            cpu_peers_s=self.cpu_peers_s,
        )
        return d


def _mib(kib: int) -> float:
    return kib / 1024


def make_result(
    scenario: str,
    inputs: InputSet,
    rnd: int,
    wall: float,
    ours: tuple[Usage, Usage] | None,
    peers: Mapping[str, Usage],
) -> RunResult:
    """One run's figures: ``ours`` is our process's usage (at the start, at the end),
    None when the run has no process of ours; ``peers`` the DCMTK processes', by tool
    (several processes of one tool add up)."""
    return RunResult(
        scenario=scenario,
        size=inputs.name,
        round=rnd,
        instances=inputs.count,
        bytes=inputs.total_bytes,
        wall_s=wall,
        cpu_ours_s=None if ours is None else ours[1].cpu_s - ours[0].cpu_s,
        cpu_peers={tool: u.cpu_s for tool, u in peers.items()},
        peak_rss_ours_mib=None if ours is None else _mib(ours[1].peak_rss_kib),
        peak_rss_peers_mib=_mib(max(u.peak_rss_kib for u in peers.values())),
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


def count_files(directory: Path) -> int:
    with os.scandir(directory) as it:
        return sum(1 for e in it if not e.name.startswith("."))


def storescp(
    settings: Settings,
    rd: RunDir,
    out: Path,
    port: int,
    *,
    nodelay: bool = True,
    fork: bool = False,
) -> subprocess.Popen[bytes]:
    """storescp; with ``fork``, one child process per association (several senders)."""
    argv = [
        "storescp",
        *(["--fork"] if fork else []),
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


def storescu_argv(
    settings: Settings,
    inputs: InputSet,
    port: int,
    called_ae: str,
    *,
    verbose: bool = False,
    files: Sequence[Path] | None = None,
) -> list[str]:
    """storescu sending the whole input directory, or only ``files``."""
    what = [str(f) for f in files] if files is not None else [str(inputs.directory)]
    return [
        "storescu",
        *(["--verbose"] if verbose else []),
        "--aetitle",
        SCU_AE,
        "--call",
        called_ae,
        "--max-pdu",
        str(settings.pdu),
        *(["--scan-directories"] if files is None else []),
        HOST,
        str(port),
        *what,
    ]


def split_files(inputs: InputSet, parts: int) -> list[list[Path]]:
    """The input files dealt round-robin into ``parts`` lists, one per sender."""
    paths = [f.path for f in inputs.files]
    return [paths[i::parts] for i in range(parts)]


def check_sender(proc: subprocess.Popen[bytes], rd: RunDir, name: str) -> None:
    if proc.returncode != 0:
        raise BenchError(f"{name} exited with {proc.returncode}:\n{rd.tail(name)}")


def check_count(out: Path, expected: int, rd: RunDir, name: str) -> None:
    got = count_files(out)
    if got != expected:
        raise BenchError(f"{name} stored {got} files, expected {expected}:\n{rd.tail(name)}")


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


@contextmanager
def requestor_client(
    settings: Settings, rd: RunDir, args: Sequence[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """benchmarks.requestor_client with ``args`` (after ``--wait-go``-style options),
    once it has said it is ready: the caller takes its usage and clock, then writes
    ``go``. Stopped at the end if still running."""
    cli = spawn(
        [settings.python, "-m", "benchmarks.requestor_client", *args],
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
        yield cli

"""Child processes for the benchmarks: start, watch (CPU, peak RSS), bound every wait, kill.

Stdlib only. CPU and memory come from /proc/<pid>/stat and /proc/<pid>/status for servers
(read just before they are stopped) and from wait4's rusage for processes that exit on
their own.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_live: dict[int, subprocess.Popen[bytes]] = {}


class BenchError(RuntimeError):
    """A scenario run failed (bad exit, timeout, missing files)."""


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system seconds
    peak_rss_kib: int  # 0 when unknown


_reserved: list[socket.socket] = []


def reserve_port() -> int:
    """A loopback port held until this process exits, for a server that must be told
    its port before it runs (storescp refuses port 0; the router's config names its
    ports). A bound socket with SO_REUSEADDR that never listens: nobody else can bind
    the port, while storescp and the router (both set SO_REUSEADDR) bind and listen on
    it. A bind-and-release "free port" could be taken by another process meanwhile."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    return int(s.getsockname()[1])


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, registered for kill_all()."""
    proc = subprocess.Popen(
        list(argv),
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
    )
    _live[proc.pid] = proc
    return proc


def _forget(proc: subprocess.Popen[bytes]) -> None:
    _live.pop(proc.pid, None)


def stat_fields(path: str | Path) -> list[str] | None:
    """The fields of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file after the
    command name (which may hold spaces), or None when it cannot be read (gone, not
    Linux). fields[0] is field 3 (state)."""
    try:
        stat = Path(path).read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(fields: Sequence[str], *, reaped_children: bool = False) -> float:
    """utime + stime (fields 14 and 15) of :func:`stat_fields`' result, plus cutime and
    cstime (16 and 17: reaped children, such as storescp --fork's association
    processes) when asked."""
    return sum(int(f) for f in fields[11 : 15 if reaped_children else 13]) / _CLK_TCK


def proc_usage(pid: int) -> Usage:
    """CPU so far and peak RSS of a live process, from /proc."""
    fields = stat_fields(f"/proc/{pid}/stat")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return Usage(0.0, 0)
    if fields is None:
        return Usage(0.0, 0)
    cpu = cpu_seconds(fields, reaped_children=True)
    hwm = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
            break
    return Usage(cpu, hwm)


def session_usage(leader: int) -> Usage:
    """CPU of a server and of every process of its session (``spawn`` starts each child
    in a session of its own): storescp --fork's association processes, live, exited but
    not yet reaped, or reaped (counted in the leader's cutime and cstime)."""
    total = proc_usage(leader)
    cpu, hwm = total.cpu_s, total.peak_rss_kib
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        fields = stat_fields(entry / "stat")
        if fields is not None and int(fields[3]) == leader:  # field 6: session id
            cpu += cpu_seconds(fields)
    return Usage(cpu, hwm)


def try_reap(proc: subprocess.Popen[bytes]) -> Usage | None:
    """Non-blocking wait4: the child's rusage if it has exited, else None."""
    if proc.returncode is not None:
        raise BenchError(f"pid {proc.pid} was already reaped")
    pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    _forget(proc)
    return Usage(ru.ru_utime + ru.ru_stime, int(ru.ru_maxrss))


def reap(proc: subprocess.Popen[bytes], deadline: float, what: str) -> Usage:
    """Wait (until the monotonic deadline) for a child to exit; its rusage.

    Uses a pidfd so the exit is seen at once, without a polling interval in the timing.
    """
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            usage = try_reap(proc)
            if usage is not None:
                return usage
            left = deadline - time.monotonic()
            if left <= 0:
                stop(proc)
                raise BenchError(f"{what} did not finish before the deadline; killed")
            if pidfd is not None:
                select.select([pidfd], [], [], min(left, 1.0))
            else:
                time.sleep(min(left, 0.002))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the child's process group, SIGKILL after `grace` seconds; always reaps."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    _forget(proc)


def kill_all() -> None:
    """Kill every child we started and have not reaped (each by its own process group)."""
    for proc in list(_live.values()):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                proc.wait(timeout=2)
        _forget(proc)


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop the child when the block ends, whatever happens."""
    try:
        yield proc
    finally:
        stop(proc)


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(proc: subprocess.Popen[bytes], port: int, deadline: float, what: str) -> None:
    """Wait until something listens on `port` without connecting to it.

    (A probe connection would hold a single-process storescp in its ACSE timeout.)
    """
    while port not in _listening_ports():
        if proc.poll() is not None:
            _forget(proc)
            raise BenchError(f"{what} exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not listen on port {port} before the deadline")
        time.sleep(0.01)


def read_line(proc: subprocess.Popen[bytes], deadline: float, what: str) -> str:
    """Read one line of the child's stdout, bounded by the deadline."""
    import selectors

    assert proc.stdout is not None
    buf = b""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{what}: no line on stdout before the deadline")
            if not sel.select(timeout=min(left, 0.5)):
                continue
            chunk = os.read(fd, 1)
            if not chunk:
                raise BenchError(f"{what} closed stdout (exit {proc.poll()}) before a line")
            buf += chunk
    return buf.decode(errors="replace").strip()


def open_paths(pid: int) -> set[str]:
    """The files a process has open now (empty once it has exited): a receiver's file
    that is still open is not whole yet, and its mtime is not the time it was closed."""
    fd_dir = Path(f"/proc/{pid}/fd")
    paths: set[str] = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return paths
    for fd in fds:
        with contextlib.suppress(OSError):
            paths.add(os.readlink(fd))
    return paths

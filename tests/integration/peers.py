"""Real peers for integration tests: DCMTK processes and the router as a process.

Everything runs on loopback; every wait is a poll with a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.ports import PortInUse, reserve_port, retry_in_use

NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part-10 file: everything after the file meta group."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM":
        return raw
    # (0002,0000) UL group length right after the preamble
    assert raw[132:136] == b"\x02\x00\x00\x00", path
    length = int.from_bytes(raw[140:144], "little")
    return raw[144 + length :]


@dataclass
class StoreSCP:
    """DCMTK storescp writing what it receives, bit-preserving, into ``directory``."""

    port: int
    directory: Path
    ae_title: str
    proc: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def _writing(self) -> set[Path]:
        """Files storescp has open right now: a file appears when its receipt starts and
        is whole only once storescp has closed it."""
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        open_now: set[Path] = set()
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # storescp has exited: nothing is being written
            return open_now
        for fd in fds:
            try:
                open_now.add(Path(os.readlink(fd)))
            except OSError:
                continue
        return open_now

    def complete_files(self) -> list[Path]:
        """The files received whole (not still being written)."""
        writing = self._writing()
        return [p for p in self.files() if p.resolve() not in writing]

    def wait_files(self, n: int, timeout: float = 60.0) -> list[Path]:
        """At least ``n`` whole files; returns every file then (all whole)."""

        def whole() -> list[Path] | None:
            files, writing = self.files(), self._writing()
            done = [p for p in files if p.resolve() not in writing]
            return files if len(done) >= n and len(done) == len(files) else None

        got = wait_for(whole, timeout, f"{n} whole files at {self.ae_title}")
        assert isinstance(got, list)
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start_storescp(
    directory: Path,
    ae_title: str = "DEST",
    port: int | None = None,
    extra: Sequence[str] = (),
    accept_all: bool = True,
    bit_preserving: bool = True,
) -> StoreSCP:
    """``accept_all`` False: storescp's default, uncompressed transfer syntaxes only.
    ``bit_preserving`` False: files get unique names (receipts of one UID all kept).
    Without ``port``, on a reserved one (storescp cannot bind port 0: tests/ports.py),
    retried on another if it was taken anyway."""
    directory.mkdir(parents=True, exist_ok=True)
    args = (directory, ae_title, extra, accept_all, bit_preserving)
    if port is None:
        return retry_in_use(lambda p: _start_storescp(p, *args))
    return _start_storescp(port, *args)


def _start_storescp(
    port: int,
    directory: Path,
    ae_title: str,
    extra: Sequence[str],
    accept_all: bool,
    bit_preserving: bool,
) -> StoreSCP:
    proc = subprocess.Popen(
        [
            "storescp",
            "--aetitle",
            ae_title,
            "--output-directory",
            str(directory),
            *(["--bit-preserving"] if bit_preserving else ["--unique-filenames"]),
            *(["--accept-all"] if accept_all else []),
            *extra,
            str(port),
        ],
        env=NODELAY_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    scp = StoreSCP(port, directory, ae_title, proc)
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, "storescp to listen")
    except AssertionError:
        scp.stop()
        raise
    if proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        scp.stop()
        if "Address already in use" in err:
            raise PortInUse(err)
        raise RuntimeError(f"storescp exited: {err}")
    return scp


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called: str = "ROUTER",
    calling: str = "MODALITY",
    extra: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            called,
            "--no-halt",
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=NODELAY_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class RouterProcess:
    """``python -m router run`` in its own process, so kill -9 is real."""

    config_path: Path
    storage: Path
    port: int
    http_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self, timeout: float = 30.0, *, ready: bool = True) -> RouterProcess:
        """Start and wait for /readyz (or only /healthz and the DICOM port when
        ``ready`` is False: a router with low storage is alive but not ready)."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                return True
            if ready:
                return self.ready()
            return self.http("/healthz")[0] == 200 and port_open(self.port)

        wait_for(up, timeout, "the router to be ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.log()}")
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self.http("/readyz")[0] == 200

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.http("/metrics")
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"router did not stop in {timeout}s:\n{self.log()}") from None
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def write_config(
    directory: Path,
    destinations: dict[str, dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> RouterProcess:
    """A router config under ``directory`` with fast retry settings for tests. Its
    ports are reserved (tests/ports.py), not 0: the CLI's queue commands find the
    running router's API through this file, and a restarted router keeps them."""
    port, http_port = reserve_port(), reserve_port()
    storage = directory / "storage"
    fast = {
        "retry": {"max_attempts": 50, "initial_backoff": "100ms", "max_backoff": "1s"},
        "circuit_breaker": {"failures": 3, "probe_interval": "500ms"},
    }
    cfg: dict[str, Any] = {
        "ae_title": "ROUTER",
        "listen": {"host": "127.0.0.1", "port": port},
        "storage": {"path": str(storage), "min_free_bytes": 0},
        "http": {"host": "127.0.0.1", "port": http_port},
        "logging": {"format": "json", "level": "info"},
        "destinations": {n: {**fast, **d} for n, d in destinations.items()},
        "rules": rules if rules is not None else [{"name": "all", "forward": list(destinations)}],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = directory / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return RouterProcess(path, storage, port, http_port, directory / "router.log")


@contextlib.contextmanager
def running(router: RouterProcess, *, ready: bool = True) -> Iterator[RouterProcess]:
    router.start(ready=ready)
    try:
        yield router
    finally:
        if router.proc is not None and router.proc.poll() is None:
            router.proc.kill()
            router.proc.wait()
        router._close_log()

"""Soak: SOAK_MINUTES (default 30) of mixed senders, flapping destinations and kill -9 of
the router, then a drain; prints instances sent, acknowledged, delivered and lost, and
the router's RSS and open file descriptors over time. Exit status 1 if any acknowledged
instance is missing at any destination its rules match (Success means stored), else 0.

    make soak                      # 30 minutes
    SOAK_MINUTES=3 make soak       # a short check

Senders (each a thread, each instance new, with its own SOP Instance UID):
  - DCMTK storescu (TCP_NODELAY=1) in batches, acknowledgements read from its -v log;
  - pynetdicom, one association per batch, acknowledgement = status 0x0000;
  small instances (~20 KB) mostly, a large one (~6 MB) now and then; CT and MR.
Rules: everything -> pacs; MR -> ai (the oracle below knows this independently).
Destinations: DCMTK storescp, each stopped (SIGTERM or SIGKILL) and restarted at random.
The router: ``python -m router run``, kill -9'd and restarted at random intervals.
Not in CI. Stdlib + the project's own dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydicom.uid import MRImageStorage

from benchmarks.procs import reserve_port
from router.samples import make_dataset

NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
SMALL = 20_000
LARGE = 6_000_000
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = str(MRImageStorage)


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(pred: Callable[[], object], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


# -- bookkeeping ------------------------------------------------------------------------


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, str] = field(default_factory=dict)  # uid -> modality
    acked: set[str] = field(default_factory=set)
    by_sender: dict[str, list[int]] = field(default_factory=dict)  # name -> [sent, acked]

    def record(self, sender: str, uid: str, modality: str, ok: bool) -> None:
        with self.lock:
            self.sent[uid] = modality
            counts = self.by_sender.setdefault(sender, [0, 0])
            counts[0] += 1
            if ok:
                self.acked.add(uid)
                counts[1] += 1


def destinations_for(modality: str) -> list[str]:
    """The oracle of the soak's rules: everything to pacs, MR also to ai."""
    return ["pacs", "ai"] if modality == "MR" else ["pacs"]


# -- processes --------------------------------------------------------------------------


@dataclass
class Destination:
    name: str
    ae_title: str
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    outages: int = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "--aetitle", self.ae_title, "--output-directory", str(self.directory),
             "--bit-preserving", "--accept-all", str(self.port)],
            env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc = self.proc
        wait_for(lambda: port_open(self.port) or proc.poll() is not None, 20, f"{self.name} up")

    def stop(self, hard: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def uids(self) -> set[str]:
        """SOP Instance UIDs received: storescp names its files <modality>.<uid>."""
        return {p.name.split(".", 1)[1] for p in self.directory.iterdir() if "." in p.name}


@dataclass
class Router:
    config: Path
    port: int
    http_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or self.ready(), 120, "the router to be ready")
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with {proc.returncode}; see {self.log_path}")

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1

    def terminate(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    @property
    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None


@dataclass
class Sample:
    t: float
    incarnation: int
    rss_kib: int
    fds: int


def sample_proc(pid: int) -> tuple[int, int] | None:
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except (OSError, ValueError):
        return None


# -- senders ----------------------------------------------------------------------------


def new_instances(directory: Path, rng: random.Random, count: int) -> list[tuple[Path, str, str]]:
    """``count`` fresh instances as files: (path, SOP Instance UID, modality)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        mr = rng.random() < 0.3
        size = LARGE if rng.random() < 0.03 else SMALL
        ds = make_dataset(size, sop_class_uid=MR_CLASS if mr else CT_CLASS)
        ds.Modality = "MR" if mr else "CT"
        path = directory / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, str(ds.SOPInstanceUID), str(ds.Modality)))
    return out


_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \((\w+)")


def storescu_sender(
    name: str, port: int, workdir: Path, ledger: Ledger, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    batch_dir = workdir / name
    while not stop.is_set():
        batch = new_instances(batch_dir, rng, rng.randint(1, 12))
        by_path = {str(p): (uid, mod) for p, uid, mod in batch}
        acked: set[str] = set()
        try:
            res = subprocess.run(
                ["storescu", "-v", "--no-halt", "-aet", name.upper(), "-aec", "ROUTER",
                 "-to", "20", "-ta", "20", "-td", "60", "127.0.0.1", str(port),
                 *by_path],
                env=NODELAY_ENV, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            current = None
            for line in (res.stdout + res.stderr).splitlines():
                if m := _SENDING.search(line):
                    current = m.group(1).strip()
                elif (m := _RESPONSE.search(line)) and current is not None:
                    if m.group(1) == "Success" and current in by_path:
                        acked.add(current)
                    current = None
        except subprocess.TimeoutExpired:
            pass
        for path, (uid, mod) in by_path.items():
            ledger.record(name, uid, mod, path in acked)
        if not acked:
            stop.wait(rng.uniform(0.2, 1.0))  # router down: do not spin
        shutil.rmtree(batch_dir, ignore_errors=True)


def pynetdicom_sender(
    name: str, port: int, ledger: Ledger, stop: threading.Event, seed: int
) -> None:
    from pynetdicom import AE

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    ae = AE(ae_title=name.upper())
    ae.add_requested_context(CT_CLASS, "1.2.840.10008.1.2.1")
    ae.add_requested_context(MR_CLASS, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = 30
    ae.network_timeout = 30
    while not stop.is_set():
        count = rng.randint(1, 12)
        datasets = []
        for _ in range(count):
            mr = rng.random() < 0.3
            ds = make_dataset(
                LARGE if rng.random() < 0.03 else SMALL, sop_class_uid=MR_CLASS if mr else CT_CLASS
            )
            ds.Modality = "MR" if mr else "CT"
            datasets.append(ds)
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        if assoc.is_established:
            wrapped = assoc.dul.socket
            sock = wrapped.socket if wrapped is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        any_ok = False
        for ds in datasets:
            ok = False
            if assoc.is_established:
                try:
                    status = assoc.send_c_store(ds)
                    ok = bool(status) and int(status.Status) == 0
                except Exception:
                    ok = False
            any_ok |= ok
            ledger.record(name, str(ds.SOPInstanceUID), str(ds.Modality), ok)
        if assoc.is_established:
            assoc.release()
        if not any_ok:
            stop.wait(rng.uniform(0.2, 1.0))
    ae.shutdown()


# -- chaos ------------------------------------------------------------------------------


def flapper(dest: Destination, stop: threading.Event, scale: float, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(20, 45) * scale):
        hard = rng.random() < 0.5
        log(f"destination {dest.name} down ({'SIGKILL' if hard else 'SIGTERM'})")
        dest.stop(hard=hard)
        dest.outages += 1
        stop.wait(rng.uniform(5, 15) * scale)
        dest.start()
        log(f"destination {dest.name} up")


def killer(router: Router, stop: threading.Event, scale: float, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(40, 90) * scale):
        log("router kill -9")
        router.kill9()
        try:
            router.start()
        except RuntimeError as exc:  # reported; the drain starts it again
            log(f"router did not restart: {exc}")
            return
        log(f"router restarted (incarnation {router.starts})")


def sampler(
    router: Router, samples: list[Sample], stop: threading.Event, t0: float, period: float
) -> None:
    while not stop.wait(period):
        pid = router.pid
        if pid is None:
            continue
        got = sample_proc(pid)
        if got is not None:
            samples.append(Sample(time.monotonic() - t0, router.starts, got[0], got[1]))


# -- report -----------------------------------------------------------------------------


def report_series(samples: list[Sample], duration: float) -> list[str]:
    lines = []
    buckets = 12
    width = max(duration / buckets, 1.0)
    lines.append("  time        RSS MiB (min/max)   open fds (min/max)   incarnations")
    for b in range(buckets + 1):
        part = [s for s in samples if b * width <= s.t < (b + 1) * width]
        if not part:
            continue
        rss = [s.rss_kib / 1024 for s in part]
        fds = [s.fds for s in part]
        inc = sorted({s.incarnation for s in part})
        lines.append(
            f"  {b * width:6.0f}s  {min(rss):8.1f} / {max(rss):6.1f}      "
            f"{min(fds):6d} / {max(fds):4d}       {','.join(map(str, inc))}"
        )
    return lines


def flatness(samples: list[Sample]) -> str:
    """RSS and fds in the first and last quarter of the longest incarnation (after its
    first 10 s): flat means no steady growth."""
    by_inc: dict[int, list[Sample]] = {}
    for s in samples:
        by_inc.setdefault(s.incarnation, []).append(s)
    if not by_inc:
        return "no samples"
    longest = max(by_inc.values(), key=lambda v: v[-1].t - v[0].t)
    warm = [s for s in longest if s.t - longest[0].t >= 10] or longest
    q = max(1, len(warm) // 4)
    first, last = warm[:q], warm[-q:]

    def med(v: list[Sample], f: Callable[[Sample], float]) -> float:
        return statistics.median(f(s) for s in v)

    return (
        f"longest incarnation {longest[0].incarnation} ({longest[-1].t - longest[0].t:.0f}s): "
        f"RSS median {med(first, lambda s: s.rss_kib) / 1024:.1f} -> "
        f"{med(last, lambda s: s.rss_kib) / 1024:.1f} MiB, "
        f"fds median {med(first, lambda s: s.fds):.0f} -> {med(last, lambda s: s.fds):.0f}"
    )


# -- main -------------------------------------------------------------------------------


def write_router_config(workdir: Path, pacs: Destination, ai: Destination) -> Router:
    port, http_port = reserve_port(), reserve_port()
    fast = {
        "retry": {"max_attempts": 10_000, "initial_backoff": "200ms", "max_backoff": "2s"},
        "circuit_breaker": {"failures": 3, "probe_interval": "1s"},
        "max_associations": 2,
    }
    cfg = {
        "ae_title": "ROUTER",
        "listen": {"host": "127.0.0.1", "port": port, "max_associations": 32},
        "storage": {"path": str(workdir / "storage"), "min_free_bytes": 0},
        "http": {"host": "127.0.0.1", "port": http_port},
        "logging": {"format": "json", "level": "info"},
        "destinations": {
            d.name: {"ae_title": d.ae_title, "host": "127.0.0.1", "port": d.port, **fast}
            for d in (pacs, ai)
        },
        "rules": [
            {"name": "mr-to-ai", "match": {"Modality": "MR"}, "forward": ["ai"]},
            {"name": "all-to-pacs", "forward": ["pacs"]},
        ],
    }
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Router(path, port, http_port, workdir / "router.log")


def main() -> int:
    minutes = float(os.environ.get("SOAK_MINUTES", "30"))
    duration = minutes * 60
    scale = min(1.0, max(0.25, minutes / 10))  # short soaks flap and kill more often
    seed = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
    keep = os.environ.get("SOAK_KEEP") == "1"
    base = Path(os.environ.get("SOAK_DIR", "var"))
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=base)).resolve()
    log(f"{minutes:g} min, seed {seed}, workdir {workdir}")
    ledger = Ledger()
    samples: list[Sample] = []
    pacs = Destination("pacs", "PACS", reserve_port(), workdir / "pacs")
    ai = Destination("ai", "AI", reserve_port(), workdir / "ai")
    router = write_router_config(workdir, pacs, ai)
    stop_senders, stop_chaos, stop_sampler = threading.Event(), threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    t0 = time.monotonic()
    lost: dict[str, int] = {}
    try:
        pacs.start()
        ai.start()
        router.start()
        sampler_thread = threading.Thread(
            target=sampler, args=(router, samples, stop_sampler, t0, 2.0), daemon=True
        )
        sampler_thread.start()
        senders = [
            threading.Thread(
                target=storescu_sender,
                args=(f"scu{i}", router.port, workdir / "outbox", ledger, stop_senders, seed + i),
            )
            for i in range(2)
        ] + [
            threading.Thread(
                target=pynetdicom_sender,
                args=(f"pyn{i}", router.port, ledger, stop_senders, seed + 10 + i),
            )
            for i in range(2)
        ]
        chaos = [
            threading.Thread(target=flapper, args=(pacs, stop_chaos, scale, seed + 20)),
            threading.Thread(target=flapper, args=(ai, stop_chaos, scale, seed + 21)),
            threading.Thread(target=killer, args=(router, stop_chaos, scale, seed + 22)),
        ]
        threads = senders + chaos
        for t in threads:
            t.start()
        next_report = 60.0
        while time.monotonic() - t0 < duration:
            time.sleep(1)
            if time.monotonic() - t0 >= next_report:
                next_report += 60
                with ledger.lock:
                    log(f"sent {len(ledger.sent)}, acknowledged {len(ledger.acked)}")
        log("load stops; chaos stops; draining")
        stop_senders.set()
        for t in senders:
            t.join(600)
        stop_chaos.set()
        for t in chaos:
            t.join(600)
        for d in (pacs, ai):
            if d.proc is None:
                d.start()
        if router.pid is None:
            router.start()

        expected = {
            uid: destinations_for(ledger.sent[uid]) for uid in ledger.acked
        }  # acknowledged -> destinations

        def missing() -> dict[str, int]:
            have = {"pacs": pacs.uids(), "ai": ai.uids()}
            out = {"pacs": 0, "ai": 0}
            for uid, dests in expected.items():
                for d in dests:
                    if uid not in have[d]:
                        out[d] += 1
            return out

        drain_deadline = time.monotonic() + max(180.0, 60 * minutes / 3)
        while sum(missing().values()) and time.monotonic() < drain_deadline:
            time.sleep(1)
        drained_in = time.monotonic() - t0 - duration
        lost = missing()
        stop_sampler.set()
        rc = router.terminate()
    finally:
        stop_senders.set()
        stop_chaos.set()
        stop_sampler.set()
        for t in threads:
            t.join(60)
        if router.pid is not None:
            router.proc.kill()  # type: ignore[union-attr]
        pacs.stop()
        ai.stop()

    with ledger.lock:
        sent, acked = len(ledger.sent), len(ledger.acked)
        per_sender = dict(ledger.by_sender)
    expected_deliveries = sum(len(destinations_for(ledger.sent[u])) for u in ledger.acked)
    have = {"pacs": pacs.uids(), "ai": ai.uids()}
    delivered = sum(
        1 for u in ledger.acked for d in destinations_for(ledger.sent[u]) if u in have[d]
    )
    unacked_delivered = sum(1 for u in set(ledger.sent) - ledger.acked if u in have["pacs"])
    total_lost = sum(lost.values())
    print()
    print("=" * 72)
    print(f"soak: {minutes:g} min (seed {seed}), drained {drained_in:.0f}s after the load stopped")
    print(f"  instances sent          {sent}")
    print(f"  acknowledged (0x0000)   {acked}")
    print(f"  expected deliveries     {expected_deliveries} (pacs: all; ai: MR)")
    print(f"  delivered               {delivered}")
    print(f"  lost                    {total_lost}  {lost}")
    print(f"  not acknowledged, delivered anyway (at least once): {unacked_delivered}")
    print(
        "  per sender (sent/acked): "
        + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(per_sender.items()))
    )
    print(f"  router: {router.kills} kill -9, {router.starts} starts, final SIGTERM exit {rc}")
    print(f"  destination outages: pacs {pacs.outages}, ai {ai.outages}")
    print("  router RSS and open file descriptors over time (sampled every 2 s from /proc):")
    for line in report_series(samples, duration + max(drained_in, 0)):
        print(line)
    print("  " + flatness(samples))
    print("=" * 72)
    if not keep and total_lost == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")
    return 1 if total_lost else 0


if __name__ == "__main__":
    sys.exit(main())

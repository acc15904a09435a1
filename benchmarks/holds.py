"""Holds under load: a study of 5,000 instances across 10 series, held at one destination
(``until: study_complete``) and released in one transaction while a second study keeps
streaming in. Does ingest stall while the release runs?

    python -m benchmarks.holds                        # 5000 x 2 KiB, 10 series, quiet 2s
    python -m benchmarks.holds --instances 1000 --stream 500

Peers: storescu -> ``python -m router run`` -> storescp ``ai`` (the hold) and ``pacs``
(no hold), DCMTK with TCP_NODELAY=1. The study is sent first; the second study's sender
starts right after and streams during the release (its ``quiet`` later, the router
releases the held study). Reported, from the router's log (``stored`` events of the
second study, millisecond timestamps): its ack rate in the second before the release,
in the second after it began, and the longest gap between two of its acks around the
release; and how long sending the released study to ``ai`` took. The order ``ai``
received the study in is checked (SeriesNumber, then InstanceNumber); exit status 1 if
it is wrong or something is missing. Not in CI (``make bench`` does not run it).
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid

from benchmarks.common import dcmtk_env, py_env
from benchmarks.procs import reserve_port, spawn, stop
from router.config import parse_duration, parse_size
from router.samples import write_dataset


def _ts(text: str) -> float:
    """The log's ``2026-12-01T14:05:13.123Z`` as unix seconds."""
    head, ms = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _files(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_file()), key=lambda p: p.name)


def _storescp(directory: Path, ae: str, port: int) -> subprocess.Popen[bytes]:
    """storescp -v logging each file it stores, in order, to ``<directory>.log``."""
    directory.mkdir(parents=True)
    argv = ["storescp", "-v", "--aetitle", ae, "--output-directory", str(directory)]
    with directory.with_suffix(".log").open("wb") as log:
        return spawn(
            [*argv, "--accept-all", str(port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _arrivals(log: Path) -> list[str]:
    """SOP Instance UIDs in the order storescp stored them (its ``-v`` log)."""
    marker = "storing DICOM file: "
    return [
        line.split(marker, 1)[1].strip().rsplit("/", 1)[-1].split(".", 1)[1]
        for line in log.read_text(errors="replace").splitlines()
        if marker in line
    ]


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return spawn(
        ["storescu", "-aet", "MODALITY", "-aec", "ROUTER", "--no-halt", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run(args: argparse.Namespace, work: Path) -> int:
    size = parse_size(args.size)
    quiet = parse_duration(args.quiet)
    study, stream_study = generate_uid(), generate_uid()
    print(f"writing {args.instances} + {args.stream} instances of {size} bytes ...", flush=True)
    held: list[Path] = []
    numbers: dict[str, tuple[int, int]] = {}
    per = args.instances // args.series
    for s in range(1, args.series + 1):
        series_uid = generate_uid()
        for i in range(1, per + 1):
            held.append(
                write_dataset(
                    work / "src" / f"s{s:02d}_{i:05d}.dcm",
                    size,
                    StudyInstanceUID=study,
                    SeriesInstanceUID=series_uid,
                    SeriesNumber=s,
                    InstanceNumber=i,
                )
            )
    for f in held:
        ds = dcmread(f, stop_before_pixels=True)
        numbers[str(ds.SOPInstanceUID)] = (int(ds.SeriesNumber), int(ds.InstanceNumber))
    random.Random(1).shuffle(held)
    stream = [
        write_dataset(work / "stream" / f"x{i:05d}.dcm", size, StudyInstanceUID=stream_study)
        for i in range(args.stream)
    ]
    stream_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stream}

    ai_port, pacs_port, port, http_port = (reserve_port() for _ in range(4))
    ai = _storescp(work / "ai", "AI", ai_port)
    pacs = _storescp(work / "pacs", "PACS", pacs_port)
    cfg = {
        "ae_title": "ROUTER",
        "listen": {"host": "127.0.0.1", "port": port},
        "storage": {"path": str(work / "storage"), "min_free_bytes": 0},
        "http": {"host": "127.0.0.1", "port": http_port},
        "logging": {"format": "json", "level": "info"},
        "destinations": {
            "ai": {
                "ae_title": "AI",
                "host": "127.0.0.1",
                "port": ai_port,
                "hold": {"until": "study_complete", "quiet": args.quiet, "max_wait": "1h"},
            },
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
        },
        "rules": [{"name": "all", "forward": ["ai", "pacs"]}],
    }
    (work / "router.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = work / "router.log"
    with log_path.open("wb") as log:
        router = spawn(
            [sys.executable, "-m", "router", "run", "--config", str(work / "router.yaml")],
            env=py_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs = [ai, pacs, router]
    try:
        _wait(lambda: '"event":"started"' in log_path.read_text(), 60, "the router")
        _wait(lambda: _listening(ai_port) and _listening(pacs_port), 30, "storescp")
        t0 = time.time()
        sender = _storescu(port, held)
        if sender.wait(args.timeout) != 0:
            raise SystemExit("storescu of the held study failed")
        t1 = time.time()
        streamer = _storescu(port, stream)
        if streamer.wait(args.timeout) != 0:
            raise SystemExit("storescu of the streaming study failed")
        _wait(lambda: len(_files(work / "ai")) >= args.instances, args.timeout, "the held study")
        t_ai = time.time()
        _wait(
            lambda: len(_files(work / "pacs")) >= args.instances + args.stream,
            args.timeout,
            "pacs",
        )
    finally:
        for p in reversed(procs):
            stop(p)

    events = _events(log_path)
    releases = [e for e in events if e.get("event") == "hold_released" and e["count"] > 1]
    if not releases:
        raise SystemExit("no release of the held study in the router's log")
    release = releases[0]
    t_rel = _ts(release["ts"])
    acks = sorted(
        _ts(e["ts"])
        for e in events
        if e.get("event") == "stored" and e.get("sop_instance_uid") in stream_uids
    )
    before = sum(1 for t in acks if t_rel - 1 <= t < t_rel)
    after = sum(1 for t in acks if t_rel <= t < t_rel + 1)
    window = [t for t in acks if t_rel - 0.5 <= t <= t_rel + 2]
    gap = max((b - a for a, b in itertools.pairwise(window)), default=float("nan"))
    order = [numbers[uid] for uid in _arrivals(work / "ai.log") if uid in numbers]
    ordered = order == sorted(order) and len(order) == args.instances

    print(
        f"held study: {args.instances} instances in {args.series} series, sent in "
        f"{t1 - t0:.1f} s ({args.instances / (t1 - t0):.0f}/s acknowledged)"
    )
    print(
        f"release: {release['count']} deliveries ({release['reason']}) "
        f"{t_rel - t1:.2f} s after the study's sender ended (quiet {quiet:g} s)"
    )
    print(
        f"streaming study during the release: {before} acks in the second before, "
        f"{after} in the second after it began; longest gap between acks "
        f"around it {gap * 1000:.0f} ms; {len(acks)} acks in all"
    )
    print(
        f"ai had the whole study {t_ai - t_rel:.1f} s after the release "
        f"({args.instances / max(t_ai - t_rel, 1e-9):.0f}/s), in send order: {ordered}"
    )
    return 0 if ordered and len(acks) == args.stream else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--instances", type=int, default=5000)
    p.add_argument("--series", type=int, default=10)
    p.add_argument("--stream", type=int, default=3000, help="instances sent during release")
    p.add_argument("--size", default="2KiB")
    p.add_argument("--quiet", default="2s")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="holds-bench-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

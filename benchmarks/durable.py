"""The durable limit: the best a router that syncs every instance can do on this disk.

One association's C-STOREs are sequential, so a router that acknowledges an instance only
after it is on disk adds at least one sync per instance to the direct pair's time. What
one sync of an instance costs here is measured, in the same run, on the file system that
holds the router's storage: ``pwrite`` of that many bytes into a preallocated file, then
``fdatasync``, many times, median. The limit for a round is then the dcmtk-pair's time
per instance plus that median, and the router's rate is reported against it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from benchmarks.common import InputSet, RunResult

#: syncs timed per measurement (a 512 KB one takes about 1.5 ms here)
SYNCS = 200


def sync_seconds(directory: Path, size: int, n: int = SYNCS) -> float:
    """Median seconds of ``pwrite(size bytes) + fdatasync`` into a preallocated file."""
    path = directory / f".sync-probe-{size}-{os.getpid()}"
    data = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(size, 1))
        os.pwrite(fd, data, 0)
        os.fsync(fd)  # blocks allocated and written, metadata on disk: only data syncs now
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def durable_limit(pair: RunResult, inputs: InputSet, directory: Path) -> RunResult:
    """The durable limit of the round whose dcmtk-pair run is ``pair``."""
    size = int(statistics.median(f.size for f in inputs.files))
    sync = sync_seconds(directory, size)
    return RunResult(
        scenario="durable-limit",
        size=pair.size,
        round=pair.round,
        instances=pair.instances,
        bytes=pair.bytes,
        wall_s=pair.wall_s + pair.instances * sync,
        cpu_ours_s=None,
        cpu_peers={},
        peak_rss_ours_mib=None,
        peak_rss_peers_mib=0.0,
        sync_s=sync,
        notes=[
            f"dcmtk-pair {pair.wall_s / pair.instances * 1e3:.3f} ms + sync {sync * 1e3:.3f} ms"
        ],
    )

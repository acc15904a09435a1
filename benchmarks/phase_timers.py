"""`python -m router run` with a clock on each phase of an instance's acknowledgement.

Run by :mod:`benchmarks.phases`, never by the product. It wraps, for the length of one
process, the router's own methods at the boundaries an instance crosses (the ingest's
open, finish and answered hooks, the spool's install in an installer thread, the SQLite
queue's batch in its DB thread) with ``time.perf_counter`` stamps, and at exit writes
one JSON object to ``$PHASES_OUT``: per phase, the p50, p90 and mean in milliseconds.

Phases, in the order one instance meets them (the spool's are absent for inline data):

- ``peer_gap``: from our answer to the previous instance until the sender's next
  C-STORE-RQ has reached the ingest (the sender's own time, the network, our read of
  the command);
- ``receive``: the data set's PDUs, until the last one;
- ``to_install`` / ``install``: header read, rules, to an installer thread; its fsync of
  the spilled file and rename;
- ``to_batch`` / ``batch``: to the DB thread; its transaction with the WAL sync;
- ``to_resume``: the DB thread's answer back on the event loop;
- ``to_answered``: the C-STORE-RSP written.

Besides the phases, the JSON holds ``batches`` (the DB thread's transactions by what
they carried: acknowledgements only, forwarding work only, or both; count, p50 and mean
milliseconds) and ``threads`` (CPU milliseconds per instance of each of the router's
threads, by name, from the first instance until the queue stops): what receipt and
forwarding share shows there.
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.procs import cpu_seconds, stat_fields

PHASES = (
    "peer_gap",
    "receive",
    "to_install",
    "install",
    "to_batch",
    "batch",
    "to_resume",
    "to_answered",
    "total",
)
WARMUP = 20  # instances left out at the start (imports, caches, the first association)

_clock = time.perf_counter


class Stamps:
    """Times per instance, keyed by the router's id of the instance (its sink's)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.at: dict[str, dict[str, float]] = {}
        self.install: dict[str, tuple[float, float]] = {}
        self.batch: dict[str, tuple[float, float]] = {}
        #: the DB thread's transactions: (what they carried, seconds)
        self.batches: list[tuple[str, float]] = []
        #: CPU seconds of each thread (by name) when the first instance arrived
        self.cpu_start: dict[str, float] | None = None
        #: and when the queue began to stop (its threads end then)
        self.cpu_end: dict[str, float] | None = None

    def phases(self) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = []
        answered_before: float | None = None
        for key in self.order:
            at = self.at[key]
            if "answered" not in at or "finish_end" not in at:
                continue
            row = {"receive": at["finish"] - at["open"]}
            start = at["finish"]
            if key in self.install:
                a, b = self.install[key]
                row["to_install"], row["install"], start = a - start, b - a, b
            if key in self.batch:
                a, b = self.batch[key]
                row["to_batch"], row["batch"] = a - start, b - a
                row["to_resume"] = at["finish_end"] - b
            row["to_answered"] = at["answered"] - at["finish_end"]
            if answered_before is not None:
                row["peer_gap"] = at["open"] - answered_before
            row["total"] = at["answered"] - at["open"]
            answered_before = at["answered"]
            rows.append(row)
        return rows[WARMUP:]


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        fields = stat_fields(f"/proc/self/task/{t.native_id}/stat")
        if fields is not None:  # None: not Linux, or the thread just ended
            out[t.name] = out.get(t.name, 0.0) + cpu_seconds(fields)
    return out


def summary(stamps: Stamps) -> dict[str, Any]:
    rows = stamps.phases()
    out: dict[str, Any] = {"instances": len(rows)}
    for name in PHASES:
        values = [r[name] * 1e3 for r in rows if name in r]
        if len(values) >= 2:
            deciles = statistics.quantiles(values, n=10, method="inclusive")
            out[name] = {
                "p50_ms": statistics.median(values),
                "p90_ms": deciles[8],
                "mean_ms": statistics.fmean(values),
            }
    kinds: dict[str, list[float]] = {}
    for kind, seconds in stamps.batches[WARMUP:]:
        kinds.setdefault(kind, []).append(seconds * 1e3)
    out["batches"] = {
        kind: {"count": len(v), "p50_ms": statistics.median(v), "mean_ms": statistics.fmean(v)}
        for kind, v in kinds.items()
    }
    if stamps.cpu_start is not None and stamps.order:
        end, n = stamps.cpu_end or thread_cpu(), len(stamps.order)
        out["threads"] = {
            name: (end[name] - stamps.cpu_start.get(name, 0.0)) * 1e3 / n for name in end
        }
    return out


def install(stamps: Stamps) -> None:
    """Wrap the router's methods (this process only)."""
    from router import ingest
    from router.store import spool
    from router.store.sqlite import executor

    open_store = ingest.Ingest.open_store
    finish_store = ingest.Ingest.finish_store
    store_answered = ingest.Ingest.store_answered
    spool_install = spool.Spool.install
    run_batch = executor.run_batch
    stop_installers = executor.Installers.stop

    def timed_open(self: ingest.Ingest, info: Any, req: Any) -> ingest.GuardedSink:
        sink = open_store(self, info, req)
        if stamps.cpu_start is None:
            stamps.cpu_start = thread_cpu()
        stamps.order.append(sink.inner.id)
        stamps.at[sink.inner.id] = {"open": _clock()}
        return sink

    async def timed_finish(self: ingest.Ingest, info: Any, req: Any, sink: Any) -> int:
        at = stamps.at.setdefault(sink.inner.id, {})
        at["finish"] = _clock()
        try:
            return await finish_store(self, info, req, sink)
        finally:
            at["finish_end"] = _clock()

    def timed_answered(self: ingest.Ingest, info: Any, req: Any, sink: Any) -> None:
        stamps.at.setdefault(sink.inner.id, {})["answered"] = _clock()
        store_answered(self, info, req, sink)

    def timed_install(self: spool.Spool, sink: spool.SpooledSink) -> Any:
        a = _clock()
        try:
            return spool_install(self, sink)
        finally:
            stamps.install[sink.id] = (a, _clock())

    def timed_batch(core: Any, jobs: Sequence[Any]) -> Any:
        a = _clock()
        try:
            return run_batch(core, jobs)
        finally:
            b = _clock()
            acks = 0
            for j in jobs:
                if isinstance(j, executor.CommitJob):
                    stamps.batch[j.sink.id] = (a, b)
                    acks += 1
            kind = "acks" if acks == len(jobs) else "acks+other" if acks else "other"
            stamps.batches.append((kind, b - a))

    def stop_and_stamp(self: executor.Installers) -> None:
        if stamps.cpu_end is None:  # the first of the queue's threads to stop
            stamps.cpu_end = thread_cpu()
        stop_installers(self)

    setattr(ingest.Ingest, "open_store", timed_open)  # noqa: B010
    setattr(ingest.Ingest, "finish_store", timed_finish)  # noqa: B010
    setattr(ingest.Ingest, "store_answered", timed_answered)  # noqa: B010
    setattr(spool.Spool, "install", timed_install)  # noqa: B010
    setattr(executor, "run_batch", timed_batch)  # noqa: B010
    setattr(executor.Installers, "stop", stop_and_stamp)  # noqa: B010


def main(argv: Sequence[str]) -> int:
    out = os.environ.get("PHASES_OUT")
    if not out:
        print("PHASES_OUT is not set", file=sys.stderr)
        return 2
    stamps = Stamps()
    install(stamps)

    def write() -> None:
        with open(out, "w") as f:
            json.dump(summary(stamps), f)

    atexit.register(write)  # the router stops on SIGTERM and returns: exit handlers run
    from router.cli import main as router_main

    return router_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

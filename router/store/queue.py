"""The durable queue: SQLite (WAL) rows for instances and their deliveries.

One SQLite connection, owned by the queue's own thread (:class:`_DbThread`, started and
joined by :meth:`Queue.run`): every operation is a job handed straight to that thread,
which takes everything pending as one batch and runs it in one transaction (each job
inside a SAVEPOINT, so one failing job does not fail the others), then wakes the waiting
tasks with one call into the event loop. That is the group commit: many
``commit_instance`` calls from many associations cost one WAL sync together. The thread
is the explicit boundary: jobs cross it with their own completion, nothing else does.
(A dedicated thread, not anyio's worker pool through a serving task: on the ack path
each hand-over costs a loop iteration and a thread wake-up, measured at about a third of
a small instance's receipt-to-Success time.)

What ``commit_instance`` guarantees when it returns (invariant 1): a spilled data set has
been fsync'd, renamed into ``spool/<xx>/<id>.dcm`` and its directory fsync'd; the instance
row (with an inline data set as a BLOB) and one delivery row per destination are
committed with ``synchronous=FULL``. Only then may the ingest answer Success.

Schema (``queue.db``)::

    instance(id TEXT PRIMARY KEY,          -- router id (router.store.spool.new_id)
             received_at REAL,             -- unix time of the commit (or the record's)
             sop_class_uid, sop_instance_uid, transfer_syntax, study_uid TEXT,
             calling_ae, called_ae TEXT,
             size INTEGER,                 -- Part-10 bytes (header included)
             data_offset INTEGER,          -- where the data set starts (header length)
             data BLOB,                    -- inline Part-10 bytes; NULL when spooled
             spooled INTEGER,              -- 1: the bytes are in spool/<xx>/<id>.dcm
             unrouted INTEGER,             -- 1: no rule routed it (kept, counted, listed)
             done_at REAL,                 -- every delivery delivered (retention clock)
             digest TEXT)                  -- BLAKE2b of the data set (drop_identical only)
    delivery(id INTEGER PRIMARY KEY, instance_id TEXT REFERENCES instance(id),
             destination TEXT, state TEXT,  -- pending | leased | delivered | failed
             attempts INTEGER,              -- attempts started (counted at lease time)
             due_at REAL, lease_until REAL, last_status INTEGER, last_error TEXT,
             created_at REAL, updated_at REAL, UNIQUE(instance_id, destination))

States of a delivery: ``pending`` (waiting for ``due_at``), ``leased`` (a worker is
sending it; ``attempts`` already counts this attempt), ``delivered``, ``failed`` (dead
letter: the data is kept so :meth:`Queue.retry_failed` can replay it). An instance
without destinations is stored with ``unrouted = 1`` and shows as state ``unrouted``.
When every delivery of an instance is delivered the instance is done: its data and rows
are removed at once, or after ``retention`` seconds by :meth:`Queue.housekeeping`.

Times are unix seconds from the injected ``clock`` (default ``time.time``), because
``due_at`` must survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import math
import os
import queue as thread_queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from router.store.spool import Spool, SpooledSink, StoreRequestLike, fsync_dir

__all__ = [
    "DB_NAME",
    "STATES",
    "CommitResult",
    "Entry",
    "Filter",
    "InstanceRecord",
    "Lease",
    "Queue",
    "QueueAdmin",
    "QueueClosed",
    "QueueStats",
    "RouterRunning",
    "State",
]

log = logging.getLogger("router.store.queue")

DB_NAME = "queue.db"
LOCK_NAME = "router.lock"
T = TypeVar("T")


class State(enum.StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNROUTED = "unrouted"  # an instance state (no deliveries), for filters and stats


#: The states a delivery row can be in.
STATES: tuple[str, ...] = ("pending", "leased", "delivered", "failed")


class QueueClosed(RuntimeError):
    """The queue is not running (not started yet, or stopped)."""


class RouterRunning(RuntimeError):
    """A router holds the storage directory; standalone administration is refused."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the queue stores about a received instance besides its bytes.

    UIDs and AE titles only: never patient names or ids.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_instance_uid: str | None = None
    calling_ae: str = ""
    called_ae: str = ""
    received_at: float | None = None  # None: the commit time
    # BLAKE2b of the data set bytes; given, an identical instance still queued for a
    # destination is not queued for it again (``duplicates: drop_identical``).
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What :meth:`Queue.commit` did. ``stored``: a new instance row (with its data) was
    committed, with a delivery for each of ``queued``; ``dropped``: destinations for
    which an identical instance (same SOP class, instance UID, transfer syntax and data
    set digest) was still pending or leased, so it was not queued again. When every
    destination was dropped nothing new is stored and ``id`` is the existing instance."""

    id: str
    stored: bool
    queued: tuple[str, ...]
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """A delivery handed to a worker. Send ``source`` from ``data_offset`` (the data
    set without the Part-10 header) to ``destination``, then report an outcome with
    ``delivery_id``. ``attempt`` is this attempt's number (1 = first)."""

    delivery_id: int
    instance_id: str
    destination: str
    attempt: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    source: bytes | Path
    data_offset: int
    size: int
    received_at: float

    @property
    def length(self) -> int:
        """Bytes of the data set (without the Part-10 header)."""
        return self.size - self.data_offset


@dataclass(frozen=True, slots=True)
class Filter:
    """Selects deliveries for the operator commands; every given field must hold.

    ``state`` is one of STATES or "unrouted" (instances without deliveries); with
    neither ``state`` nor ``destination`` unrouted instances are included too.
    ``min_age``: received at least that many seconds ago. ``limit``: at most that many.
    """

    destination: str | None = None
    state: str | None = None
    min_age: float | None = None
    study_uid: str | None = None
    instance_id: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in (*STATES, "unrouted"):
            raise ValueError(f"unknown state {self.state!r}; one of {', '.join(STATES)}, unrouted")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")

    @property
    def includes_unrouted(self) -> bool:
        return self.state == "unrouted" or (self.state is None and self.destination is None)


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of ``list_deliveries``: a delivery, or an unrouted instance
    (``delivery_id``/``destination`` None, ``state`` "unrouted")."""

    delivery_id: int | None
    instance_id: str
    destination: str | None
    state: str
    attempts: int
    due_at: float | None
    last_status: int | None
    last_error: str | None
    received_at: float
    updated_at: float
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str | None
    size: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A cheap snapshot for metrics (from in-memory counters, no SQL)."""

    counts: dict[tuple[str, str], int]  # (destination, state) -> deliveries
    oldest_pending_age: dict[str, float]  # destination -> seconds (pending or leased)
    unrouted: int  # instances without deliveries
    instances: int  # instances not done (the bound of max_queue_instances)
    committing: int  # commit_instance calls in progress
    transactions: int  # transactions committed since start
    commits: int  # instances committed since start


# ----------------------------------------------------------------------------- core


_SCHEMA = """
CREATE TABLE IF NOT EXISTS instance (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT,
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    data_offset INTEGER NOT NULL,
    data BLOB,
    spooled INTEGER NOT NULL,
    unrouted INTEGER NOT NULL DEFAULT 0,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS instance_study ON instance(study_uid);
CREATE INDEX IF NOT EXISTS instance_done ON instance(done_at) WHERE done_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instance_unrouted ON instance(received_at) WHERE unrouted = 1;
CREATE TABLE IF NOT EXISTS delivery (
    id INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instance(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (instance_id, destination)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery(destination, state, due_at);
CREATE INDEX IF NOT EXISTS delivery_age ON delivery(destination, state, created_at);
PRAGMA user_version = 1;
"""

_SQL_CHUNK = 500  # host parameters per IN (...) list


def _chunks(items: Sequence[T], n: int = _SQL_CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(instance)")}
    if "digest" not in columns:  # a database from before drop_identical
        conn.execute("ALTER TABLE instance ADD COLUMN digest TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS instance_digest ON instance(sop_instance_uid, digest)"
        " WHERE digest IS NOT NULL"
    )
    return conn


@dataclass
class _Delta:
    """What a job changed, applied to the in-memory counters after the commit."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    unrouted: int = 0
    active: int = 0
    commits: int = 0
    remove: list[tuple[str, bool]] = field(default_factory=list)  # (id, spooled) after commit
    touched: set[str] = field(default_factory=set)  # destinations whose minima may grow
    added: dict[str, tuple[float, float]] = field(default_factory=dict)  # new rows' minima
    wake: set[str] = field(default_factory=set)  # destinations with new pending work

    def move(self, dest: str, old: str | None, new: str | None, n: int = 1) -> None:
        if old is not None:
            self.counts[(dest, old)] -= n
        if new is not None:
            self.counts[(dest, new)] += n
        self.touched.add(dest)
        if new == "pending":
            self.wake.add(dest)

    def insert(self, dest: str, due_at: float, created_at: float) -> None:
        """A new pending row: the minima only shrink, no query needed."""
        self.counts[(dest, "pending")] += 1
        self.wake.add(dest)
        old = self.added.get(dest)
        if old is not None:
            due_at, created_at = min(old[0], due_at), min(old[1], created_at)
        self.added[dest] = (due_at, created_at)

    def merge(self, other: _Delta) -> None:
        self.counts.update(other.counts)
        self.unrouted += other.unrouted
        self.active += other.active
        self.commits += other.commits
        self.remove.extend(other.remove)
        self.touched |= other.touched
        for dest, (due, created) in other.added.items():
            old = self.added.get(dest)
            self.added[dest] = (
                (due, created) if old is None else (min(old[0], due), min(old[1], created))
            )
        self.wake |= other.wake


class _Core:
    """The synchronous queue operations on one connection (one thread at a time)."""

    def __init__(
        self, conn: sqlite3.Connection, spool: Spool, retention: float, clock: Callable[[], float]
    ) -> None:
        self.conn = conn
        self.spool = spool
        self.retention = retention
        self.clock = clock
        self._synchronous = "FULL"

    # -- transactions

    def set_durable(self, durable: bool) -> None:
        want = "FULL" if durable else "NORMAL"
        if want != self._synchronous:
            self.conn.execute(f"PRAGMA synchronous={want}")
            self._synchronous = want

    def transaction(self, fn: Callable[[_Core, _Delta], T]) -> tuple[T, _Delta]:
        """Run ``fn`` in its own durable transaction, then remove data it released."""
        d = _Delta()
        self.set_durable(True)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self, d)
            self.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.remove_data(d.remove)
        return result, d

    def remove_data(self, items: Iterable[tuple[str, bool]]) -> None:
        for ident, spooled in items:
            if spooled:
                self.spool.remove(ident)

    # -- commit

    def identical_queued(self, record: InstanceRecord, dests: Sequence[str]) -> dict[str, str]:
        """Destination -> id of an identical instance with a delivery still pending or
        leased to it (or, for no destinations, "" -> an identical unrouted instance)."""
        same = (
            "i.sop_instance_uid = ? AND i.digest = ? AND i.sop_class_uid = ?"
            " AND i.transfer_syntax = ?"
        )
        key = (record.sop_instance_uid, record.digest, record.sop_class_uid, record.transfer_syntax)
        if not dests:
            row = self.conn.execute(
                f"SELECT i.id FROM instance i WHERE {same} AND i.unrouted = 1 LIMIT 1", key
            ).fetchone()
            return {"": row[0]} if row else {}
        found: dict[str, str] = {}
        for dest, inst in self.conn.execute(
            "SELECT d.destination, i.id FROM instance i JOIN delivery d ON d.instance_id = i.id"
            f" WHERE {same} AND d.state IN ('pending', 'leased')",
            key,
        ):
            if dest in dests:
                found.setdefault(dest, inst)
        return found

    def insert_instance(
        self,
        ident: str,
        record: InstanceRecord,
        sink: SpooledSink,
        destinations: Sequence[str],
        d: _Delta,
    ) -> CommitResult:
        now = self.clock()
        received = record.received_at if record.received_at is not None else now
        spooled = sink.spilled
        dests = list(dict.fromkeys(destinations))
        dropped: list[str] = []
        if record.digest is not None:
            same = self.identical_queued(record, dests)
            if same and (not dests or len(same) == len(dests)):
                d.remove.append((ident, spooled))  # the identical one's data is durable
                return CommitResult(next(iter(same.values())), False, (), tuple(dests))
            dropped = [dest for dest in dests if dest in same]
            dests = [dest for dest in dests if dest not in same]
        self.conn.execute(
            "INSERT INTO instance (id, received_at, sop_class_uid, sop_instance_uid,"
            " transfer_syntax, study_uid, calling_ae, called_ae, size, data_offset, data,"
            " spooled, unrouted, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                ident,
                received,
                record.sop_class_uid,
                record.sop_instance_uid,
                record.transfer_syntax,
                record.study_instance_uid,
                record.calling_ae,
                record.called_ae,
                sink.size,
                sink.data_offset,
                None if spooled else sink.inline_view,
                int(spooled),
                int(not dests),
                record.digest,
            ),
        )
        if dests:
            self.conn.executemany(
                "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
                " updated_at) VALUES (?,?,'pending',?,?,?)",
                [(ident, dest, now, received, now) for dest in dests],
            )
            for dest in dests:
                d.insert(dest, now, received)
        else:
            d.unrouted += 1
        d.active += 1
        d.commits += 1
        return CommitResult(ident, True, tuple(dests), tuple(dropped))

    # -- leasing and outcomes

    _LEASE_COLS = (
        "d.id, d.state, d.attempts, i.id, i.sop_class_uid, i.sop_instance_uid,"
        " i.transfer_syntax, i.spooled, i.data, i.data_offset, i.size, i.received_at"
    )

    def lease(self, destination: str, limit: int, lease_seconds: float, d: _Delta) -> list[Lease]:
        now = self.clock()
        rows = self.conn.execute(
            f"SELECT {self._LEASE_COLS} FROM delivery d JOIN instance i ON i.id = d.instance_id"
            " WHERE d.destination = ? AND d.state = 'pending' AND d.due_at <= ?"
            " ORDER BY d.due_at, d.id LIMIT ?",
            (destination, now, limit),
        ).fetchall()
        if len(rows) < limit:  # leases that expired (a worker vanished without an outcome)
            rows += self.conn.execute(
                f"SELECT {self._LEASE_COLS} FROM delivery d JOIN instance i"
                " ON i.id = d.instance_id WHERE d.destination = ? AND d.state = 'leased'"
                " AND d.lease_until <= ? ORDER BY d.lease_until, d.id LIMIT ?",
                (destination, now, limit - len(rows)),
            ).fetchall()
        if not rows:
            return []
        until = now + lease_seconds
        self.conn.executemany(
            "UPDATE delivery SET state = 'leased', attempts = attempts + 1, lease_until = ?,"
            " updated_at = ? WHERE id = ?",
            [(until, now, r[0]) for r in rows],
        )
        out: list[Lease] = []
        for r in rows:
            d.move(destination, r[1], "leased")
            source: bytes | Path = self.spool.path_for(r[3]) if r[7] else bytes(r[8])
            out.append(
                Lease(
                    delivery_id=r[0],
                    instance_id=r[3],
                    destination=destination,
                    attempt=r[2] + 1,
                    sop_class_uid=r[4],
                    sop_instance_uid=r[5],
                    transfer_syntax=r[6],
                    source=source,
                    data_offset=r[9],
                    size=r[10],
                    received_at=r[11],
                )
            )
        return out

    def delivered(self, ids: Sequence[int], status: int, d: _Delta) -> int:
        now = self.clock()
        instances: set[str] = set()
        n = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for dest, inst in self.conn.execute(
                "UPDATE delivery SET state = 'delivered', last_status = ?, last_error = NULL,"
                f" lease_until = NULL, updated_at = ? WHERE id IN ({marks})"
                " AND state = 'leased' RETURNING destination, instance_id",
                (status, now, *chunk),
            ).fetchall():
                d.move(dest, "leased", "delivered")
                instances.add(inst)
                n += 1
        self.settle(sorted(instances), d)
        return n

    def reschedule(
        self, id: int, due_at: float, status: int | None, error: str | None, d: _Delta
    ) -> bool:
        row = self.conn.execute(
            "UPDATE delivery SET state = 'pending', due_at = ?, last_status = ?, last_error = ?,"
            " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'leased'"
            " RETURNING destination",
            (due_at, status, error, self.clock(), id),
        ).fetchone()
        if row is None:
            return False
        d.move(row[0], "leased", "pending")
        return True

    def fail(self, id: int, status: int | None, error: str | None, d: _Delta) -> bool:
        row = self.conn.execute(
            "UPDATE delivery SET state = 'failed', last_status = ?, last_error = ?,"
            " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'leased'"
            " RETURNING destination",
            (status, error, self.clock(), id),
        ).fetchone()
        if row is None:
            return False
        d.move(row[0], "leased", "failed")
        return True

    def release(self, ids: Sequence[int], d: _Delta) -> int:
        now = self.clock()
        n = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for (dest,) in self.conn.execute(
                "UPDATE delivery SET state = 'pending', attempts = max(attempts - 1, 0),"
                f" lease_until = NULL, due_at = min(due_at, ?), updated_at = ?"
                f" WHERE id IN ({marks}) AND state = 'leased' RETURNING destination",
                (now, now, *chunk),
            ).fetchall():
                d.move(dest, "leased", "pending")
                n += 1
        return n

    # -- instances: done, removal

    def settle(self, instance_ids: Sequence[str], d: _Delta) -> None:
        """After deliveries changed: an instance with every delivery delivered is done
        (removed now, or kept for the retention); one with none left is removed."""
        now = self.clock()
        for inst in instance_ids:
            row = self.conn.execute(
                "SELECT count(*), sum(state = 'delivered') FROM delivery WHERE instance_id = ?",
                (inst,),
            ).fetchone()
            total, done = row[0], row[1] or 0
            if total == 0:
                self.remove_instance(inst, d)
            elif done == total:
                if self.retention <= 0:
                    self.remove_instance(inst, d)
                else:
                    cur = self.conn.execute(
                        "UPDATE instance SET done_at = ? WHERE id = ? AND done_at IS NULL",
                        (now, inst),
                    )
                    d.active -= cur.rowcount

    def remove_instance(self, inst: str, d: _Delta) -> None:
        for dest, state in self.conn.execute(
            "DELETE FROM delivery WHERE instance_id = ? RETURNING destination, state", (inst,)
        ).fetchall():
            d.move(dest, state, None)
        row = self.conn.execute(
            "DELETE FROM instance WHERE id = ? RETURNING spooled, unrouted, done_at", (inst,)
        ).fetchone()
        if row is None:
            return
        spooled, unrouted, done_at = row
        if unrouted:
            d.unrouted -= 1
        if done_at is None:
            d.active -= 1
        d.remove.append((inst, bool(spooled)))

    def housekeeping(self, d: _Delta, limit: int = 1000) -> int:
        """Remove done instances whose retention has passed (at most ``limit``)."""
        cutoff = self.clock() - self.retention
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM instance WHERE done_at IS NOT NULL AND done_at <= ? LIMIT ?",
                (cutoff, limit),
            ).fetchall()
        ]
        for inst in ids:
            self.remove_instance(inst, d)
        return len(ids)

    # -- operator commands

    def _where(self, f: Filter, now: float) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if f.destination is not None:
            clauses.append("d.destination = ?")
            args.append(f.destination)
        if f.state is not None:
            clauses.append("d.state = ?")
            args.append(f.state)
        clauses_i, args_i = self._where_instance(f, now)
        where = " AND ".join(clauses + clauses_i) or "1"
        return where, args + args_i

    def _where_instance(self, f: Filter, now: float) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if f.min_age is not None:
            clauses.append("i.received_at <= ?")
            args.append(now - f.min_age)
        if f.study_uid is not None:
            clauses.append("i.study_uid = ?")
            args.append(f.study_uid)
        if f.instance_id is not None:
            clauses.append("i.id = ?")
            args.append(f.instance_id)
        return clauses, args

    def list_deliveries(self, f: Filter) -> list[Entry]:
        now = self.clock()
        limit = f.limit if f.limit is not None else -1
        out: list[Entry] = []
        if f.state != "unrouted":
            where, args = self._where(f, now)
            for r in self.conn.execute(
                "SELECT d.id, i.id, d.destination, d.state, d.attempts, d.due_at,"
                " d.last_status, d.last_error, i.received_at, d.updated_at, i.sop_class_uid,"
                " i.sop_instance_uid, i.study_uid, i.size FROM delivery d"
                f" JOIN instance i ON i.id = d.instance_id WHERE {where}"
                " ORDER BY i.received_at, i.id, d.destination LIMIT ?",
                (*args, limit),
            ):
                out.append(Entry(*r))
        if f.includes_unrouted and (f.limit is None or len(out) < f.limit):
            clauses, args = self._where_instance(f, now)
            where = " AND ".join(["i.unrouted = 1", *clauses])
            rest = -1 if f.limit is None else f.limit - len(out)
            for r in self.conn.execute(
                "SELECT i.id, i.received_at, i.sop_class_uid, i.sop_instance_uid, i.study_uid,"
                f" i.size FROM instance i WHERE {where} ORDER BY i.received_at, i.id LIMIT ?",
                (*args, rest),
            ):
                out.append(
                    Entry(None, r[0], None, "unrouted", 0, None, None, None, r[1], r[1], *r[2:])
                )
        return out

    def retry_failed(self, f: Filter, d: _Delta) -> int:
        if f.state not in (None, "failed"):
            raise ValueError("retry applies to failed deliveries (dead letters) only")
        now = self.clock()
        where, args = self._where(f, now)
        limit = f.limit if f.limit is not None else -1
        n = 0
        for (dest,) in self.conn.execute(
            "UPDATE delivery SET state = 'pending', attempts = 0, due_at = ?, lease_until = NULL,"
            " updated_at = ? WHERE id IN (SELECT d.id FROM delivery d"
            f" JOIN instance i ON i.id = d.instance_id WHERE d.state = 'failed' AND {where}"
            " ORDER BY d.id LIMIT ?) RETURNING destination",
            (now, now, *args, limit),
        ).fetchall():
            d.move(dest, "failed", "pending")
            n += 1
        return n

    def purge(self, f: Filter, d: _Delta) -> int:
        now = self.clock()
        limit = f.limit if f.limit is not None else -1
        n = 0
        instances: set[str] = set()
        if f.state != "unrouted":
            where, args = self._where(f, now)
            for dest, state, inst in self.conn.execute(
                "DELETE FROM delivery WHERE id IN (SELECT d.id FROM delivery d"
                f" JOIN instance i ON i.id = d.instance_id WHERE {where} ORDER BY d.id LIMIT ?)"
                " RETURNING destination, state, instance_id",
                (*args, limit),
            ).fetchall():
                d.move(dest, state, None)
                instances.add(inst)
                n += 1
        if f.includes_unrouted and (f.limit is None or n < f.limit):
            clauses, args = self._where_instance(f, now)
            where = " AND ".join(["i.unrouted = 1", *clauses])
            rest = -1 if f.limit is None else f.limit - n
            ids = [
                r[0]
                for r in self.conn.execute(
                    f"SELECT i.id FROM instance i WHERE {where} ORDER BY i.id LIMIT ?",
                    (*args, rest),
                ).fetchall()
            ]
            for inst in ids:
                self.remove_instance(inst, d)
            n += len(ids)
        self.settle(sorted(instances), d)
        return n

    # -- counters and minima

    def count_states(self) -> tuple[Counter[tuple[str, str]], int, int]:
        counts: Counter[tuple[str, str]] = Counter()
        for dest, state, n in self.conn.execute(
            "SELECT destination, state, count(*) FROM delivery GROUP BY destination, state"
        ):
            counts[(dest, state)] = n
        unrouted = self.conn.execute("SELECT count(*) FROM instance WHERE unrouted = 1").fetchone()
        active = self.conn.execute("SELECT count(*) FROM instance WHERE done_at IS NULL").fetchone()
        return counts, unrouted[0], active[0]

    def minima(self, destination: str) -> tuple[float | None, float | None]:
        """(earliest due_at of pending, earliest created_at of pending or leased)."""
        due = self.conn.execute(
            "SELECT min(due_at) FROM delivery WHERE destination = ? AND state = 'pending'",
            (destination,),
        ).fetchone()[0]
        oldest = self.conn.execute(
            "SELECT min(created_at) FROM delivery WHERE destination = ?"
            " AND state IN ('pending', 'leased')",
            (destination,),
        ).fetchone()[0]
        return due, oldest

    # -- start-up recovery

    def recover(self, d: _Delta) -> None:
        """Leases back to pending, partial receipts swept, orphan spool files removed,
        rows whose spool file is missing failed loudly. Runs before anything else."""
        now = self.clock()
        for (dest,) in self.conn.execute(
            "UPDATE delivery SET state = 'pending', lease_until = NULL, updated_at = ?"
            " WHERE state = 'leased' RETURNING destination",
            (now,),
        ).fetchall():
            d.move(dest, "leased", "pending")
        swept = self.spool.sweep_tmp()
        if swept:
            log.info("removed %d partial receipts from %s", swept, self.spool.tmp_dir)
        on_disk = self.spool.iter_ids()
        orphans: list[str] = []
        for chunk in _chunks(on_disk):
            marks = ",".join("?" * len(chunk))
            known = {
                r[0]
                for r in self.conn.execute(
                    f"SELECT id FROM instance WHERE spooled = 1 AND id IN ({marks})", chunk
                )
            }
            orphans.extend(i for i in chunk if i not in known)
        for ident in orphans:
            self.spool.remove(ident)
        if orphans:
            log.info("removed %d spool files without queue rows", len(orphans))
        missing: list[str] = []
        for (ident,) in self.conn.execute("SELECT id FROM instance WHERE spooled = 1"):
            if not self.spool.path_for(ident).exists():
                missing.append(ident)
        for ident in missing:
            uid = self.conn.execute(
                "SELECT sop_instance_uid FROM instance WHERE id = ?", (ident,)
            ).fetchone()[0]
            log.error(
                "spool file of instance %s (SOP instance %s) is missing: its deliveries fail",
                ident,
                uid,
            )
            for (dest,) in self.conn.execute(
                "UPDATE delivery SET state = 'failed', last_error = 'spool file missing',"
                " updated_at = ? WHERE instance_id = ? AND state IN ('pending', 'leased')"
                " RETURNING destination",
                (now, ident),
            ).fetchall():
                d.move(dest, "pending", "failed")


# ----------------------------------------------------------------------------- jobs


class _Job(Generic[T]):
    __slots__ = ("done", "durable", "error", "fn", "result")

    def __init__(self, fn: Callable[[_Core, _Delta], T], durable: bool) -> None:
        self.fn = fn
        self.durable = durable
        self.done = anyio.Event()  # set in the event loop, never in the DB thread
        self.result: T | None = None
        self.error: BaseException | None = None


class _CommitJob(_Job[CommitResult]):
    __slots__ = ("sink",)

    def __init__(self, fn: Callable[[_Core, _Delta], CommitResult], sink: SpooledSink) -> None:
        super().__init__(fn, durable=True)
        self.sink = sink


@dataclass
class _BatchResult:
    delta: _Delta
    minima: dict[str, tuple[float | None, float | None]]  # recomputed after the commit
    committed: bool


def _run_batch(core: _Core, jobs: Sequence[_Job[Any]]) -> _BatchResult:
    """One transaction for every job (each in a savepoint). Runs in the worker thread."""
    total = _Delta()
    dirs = {
        core.spool.subdir_for(j.sink.id)
        for j in jobs
        if isinstance(j, _CommitJob) and j.sink.spilled
    }
    try:
        for sub in sorted(dirs):
            fsync_dir(sub)
    except OSError as e:
        for j in jobs:
            if isinstance(j, _CommitJob) and j.sink.spilled:
                j.error = e
    live = [j for j in jobs if j.error is None]
    committed = False
    if live:
        core.set_durable(any(j.durable for j in live))
        try:
            core.conn.execute("BEGIN IMMEDIATE")
            ok: list[tuple[_Job[Any], Any, _Delta]] = []
            if len(live) == 1:  # no savepoint needed: its failure is the transaction's
                d = _Delta()
                ok.append((live[0], live[0].fn(core, d), d))
            else:
                for j in live:
                    d = _Delta()
                    core.conn.execute("SAVEPOINT job")
                    try:
                        result = j.fn(core, d)
                    except Exception as e:
                        core.conn.execute("ROLLBACK TO job")
                        core.conn.execute("RELEASE job")
                        j.error = e
                    else:
                        core.conn.execute("RELEASE job")
                        ok.append((j, result, d))
            core.conn.execute("COMMIT")
            committed = True
        except Exception as e:
            with contextlib.suppress(sqlite3.Error):
                core.conn.execute("ROLLBACK")
            log.exception("queue transaction failed")
            for j in live:
                j.error = e
            ok = []
        for j, result, d in ok:
            j.result = result
            total.merge(d)
    # data of failed commits: nothing refers to it
    for j in jobs:
        if isinstance(j, _CommitJob) and j.error is not None and j.sink.spilled:
            core.spool.remove(j.sink.id)
    core.remove_data(total.remove)
    minima = {dest: core.minima(dest) for dest in total.touched}
    return _BatchResult(total, minima, committed)


class _DbThread:
    """The thread that owns the connection: takes jobs from a thread-safe FIFO, runs
    everything pending as one batch (:func:`_run_batch`) and hands each finished batch
    back to the event loop with one ``done`` callback. ``stop`` lets it finish the jobs
    already handed over, close the connection and end."""

    _STOP = object()

    def __init__(
        self,
        core: _Core,
        max_batch: int,
        done: Callable[[Sequence[_Job[Any]], _BatchResult], None],
        call_in_loop: Callable[..., object],
    ) -> None:
        self._core = core
        self._max_batch = max_batch
        self._done = done
        self._call_in_loop = call_in_loop
        self._jobs: thread_queue.SimpleQueue[Any] = thread_queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="router-queue-db", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, job: _Job[Any]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(self._STOP)

    def join(self) -> None:
        self._thread.join()

    def _main(self) -> None:
        try:
            stopping = False
            while not stopping:
                jobs: list[_Job[Any]] = []
                item = self._jobs.get()
                while True:
                    if item is self._STOP:
                        stopping = True
                    else:
                        jobs.append(item)
                    if len(jobs) >= self._max_batch:
                        break
                    try:
                        item = self._jobs.get_nowait()
                    except thread_queue.Empty:
                        break
                if jobs:
                    try:
                        res = _run_batch(self._core, jobs)
                    except Exception as e:  # a bug: SQL errors are caught per job
                        log.exception("queue batch failed")
                        for j in jobs:
                            if j.error is None:
                                j.error = e
                            if isinstance(j, _CommitJob) and j.sink.spilled:
                                with contextlib.suppress(OSError):
                                    self._core.spool.remove(j.sink.id)
                        res = _BatchResult(_Delta(), {}, committed=False)
                    try:
                        self._call_in_loop(self._done, jobs, res)
                    except RuntimeError:  # the loop is gone: nobody is waiting any more
                        return
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._core.conn.close()


# ----------------------------------------------------------------------------- queue


class Queue:
    """The queue of one router: start :meth:`run` in the app's task group
    (``await tg.start(queue.run)``), then use the async methods from any task.

    Every method goes through the queue's single executor (one thread, one connection,
    batched transactions), so operator commands are safe while the router runs.
    """

    def __init__(
        self,
        storage_dir: Path,
        *,
        inline_max: int = 64 * 1024,
        max_queue_instances: int = 100_000,
        max_batch: int = 512,
        max_pending_jobs: int = 4096,
        retention: float = 0.0,
        housekeeping_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.spool = Spool(self.storage_dir, inline_max=inline_max)
        self.max_queue_instances = max_queue_instances
        self.max_batch = max_batch
        self.retention = retention
        self.housekeeping_interval = housekeeping_interval
        self.clock = clock
        self.max_pending_jobs = max_pending_jobs
        self._db: _DbThread | None = None
        self._slots = anyio.Semaphore(max_pending_jobs)  # jobs handed over, not yet done
        self._started = False
        self._core: _Core | None = None
        self._running = False
        self._counts: Counter[tuple[str, str]] = Counter()
        self._unrouted = 0
        self._active = 0
        self._committing = 0
        self._next_due: dict[str, float] = {}
        self._oldest: dict[str, float] = {}
        self._events: dict[str, anyio.Event] = {}
        self.transactions = 0
        self.commits = 0

    # -- lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the database, recover, report started, then serve until cancelled."""
        if self._started:
            raise RuntimeError("a Queue runs once")
        self._started = True
        lock_fd = _lock_storage(self.storage_dir)
        try:
            core = await anyio.to_thread.run_sync(self._open_and_recover)
            self._core = core
            # the router runs on anyio's asyncio backend (router.dicom._stream needs it)
            loop = asyncio.get_running_loop()
            db = _DbThread(core, self.max_batch, self._batch_done, loop.call_soon_threadsafe)
            self._db = db
            db.start()
            self._running = True
            try:
                async with anyio.create_task_group() as tg:
                    if self.retention > 0 and math.isfinite(self.housekeeping_interval):
                        tg.start_soon(self._housekeeping_loop)
                    task_status.started()
                    await anyio.sleep_forever()
            finally:
                self._running = False
                db.stop()
                with anyio.CancelScope(shield=True):
                    # jobs handed over finish (their waiters are shielded), then it closes
                    await anyio.to_thread.run_sync(db.join)
                    self._db = None
        finally:
            os.close(lock_fd)

    def _open_and_recover(self) -> _Core:
        conn = _connect(self.storage_dir / DB_NAME)
        core = _Core(conn, self.spool, self.retention, self.clock)
        core.transaction(lambda c, d: c.recover(d))
        if self.retention > 0:
            core.transaction(lambda c, d: c.housekeeping(d, limit=1_000_000))
        counts, unrouted, active = core.count_states()
        self._counts = counts
        self._unrouted = unrouted
        self._active = active
        for dest in {k[0] for k in counts}:
            self._set_minima(dest, core.minima(dest))
        return core

    def _batch_done(self, jobs: Sequence[_Job[Any]], res: _BatchResult) -> None:
        """In the event loop: count the batch in, wake its waiters, free their slots.
        The waiters are woken whatever happens: they wait shielded from cancellation."""
        try:
            self._apply(res)
        finally:
            for j in jobs:
                j.done.set()
                self._slots.release()

    async def _submit(self, job: _Job[Any]) -> None:
        """Hand ``job`` to the DB thread (waiting while ``max_pending_jobs`` are in it)."""
        await self._slots.acquire()
        db = self._db
        if not self._running or db is None:
            self._slots.release()
            raise QueueClosed("the queue stopped")
        db.put(job)

    def _apply(self, res: _BatchResult) -> None:
        d = res.delta
        if res.committed:
            self.transactions += 1
        self.commits += d.commits
        self._counts.update(d.counts)
        self._unrouted += d.unrouted
        self._active += d.active
        for dest, mins in res.minima.items():
            self._set_minima(dest, mins)
        for dest, (due, created) in d.added.items():
            if dest not in res.minima:
                old_due = self._next_due.get(dest)
                self._next_due[dest] = due if old_due is None else min(old_due, due)
                old_age = self._oldest.get(dest)
                self._oldest[dest] = created if old_age is None else min(old_age, created)
        for dest in d.wake:
            self._notify(dest)

    def _set_minima(self, dest: str, mins: tuple[float | None, float | None]) -> None:
        due, oldest = mins
        if due is None:
            self._next_due.pop(dest, None)
        else:
            self._next_due[dest] = due
        if oldest is None:
            self._oldest.pop(dest, None)
        else:
            self._oldest[dest] = oldest

    def _notify(self, dest: str) -> None:
        ev = self._events.pop(dest, None)
        if ev is not None:
            ev.set()

    def wake(self, destination: str) -> None:
        """Wake whoever waits for work of ``destination`` (e.g. after a reload removed
        it, so its idle workers leave at once)."""
        self._notify(destination)

    async def _housekeeping_loop(self) -> None:
        while True:
            await anyio.sleep(self.housekeeping_interval)
            await self.housekeeping()

    async def _call(self, fn: Callable[[_Core, _Delta], T], *, durable: bool = True) -> T:
        if not self._running:
            raise QueueClosed("the queue is not running")
        job: _Job[T] = _Job(fn, durable)
        with anyio.CancelScope(shield=True):
            await self._submit(job)
            await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    # -- ingest side

    def new_sink(self, req: StoreRequestLike) -> SpooledSink:
        return self.spool.new_sink(req)

    def is_full(self) -> bool:
        """True when no more instances should be accepted (answer A700)."""
        return self._active + self._committing >= self.max_queue_instances

    async def commit_instance(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> str:
        """Make the instance durable with one delivery per destination; return its id.

        Returns only after the data and rows are durable (see the module docstring);
        then the C-STORE may be acknowledged. Not cancellable once started (it finishes
        within one batch). Raises QueueClosed when the queue is not running, or the
        error of the transaction; in both cases nothing of the instance remains.
        """
        return (await self.commit(record, sink, destinations)).id

    async def commit(
        self, record: InstanceRecord, sink: SpooledSink, destinations: Sequence[str]
    ) -> CommitResult:
        """:meth:`commit_instance`, telling what was queued and what was dropped as an
        identical duplicate (only when ``record.digest`` is given)."""
        if not self._running:
            raise QueueClosed("the queue is not running")
        if sink.aborted:
            raise ValueError("cannot commit an aborted sink")
        ident = sink.id
        dests = tuple(destinations)
        self._committing += 1
        try:
            with anyio.CancelScope(shield=True):
                if sink.spilled:
                    try:
                        await anyio.to_thread.run_sync(self.spool.install, sink)
                    except BaseException:
                        sink.abort()
                        self.spool.remove(ident)
                        raise
                else:
                    sink.close()
                job = _CommitJob(
                    lambda c, d: c.insert_instance(ident, record, sink, dests, d), sink
                )
                try:
                    await self._submit(job)
                except QueueClosed:
                    self.spool.remove(ident)
                    raise
                await job.done.wait()
        finally:
            self._committing -= 1
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    # -- forward side

    async def lease(self, destination: str, limit: int, lease_seconds: float) -> list[Lease]:
        """Up to ``limit`` due deliveries for ``destination`` (oldest due first), marked
        leased until now + ``lease_seconds``; each attempt is counted here. Expired
        leases of a vanished worker are leased again."""
        if limit <= 0:
            return []
        return await self._call(
            lambda c, d: c.lease(destination, limit, lease_seconds, d), durable=False
        )

    async def delivered(self, ids: Sequence[int], status: int = 0x0000) -> int:
        """Leased deliveries were delivered (``status``: 0 or the warning received).
        Instances whose deliveries are all delivered are done. Returns rows changed."""
        ids = list(ids)
        return await self._call(lambda c, d: c.delivered(ids, status, d), durable=False)

    async def retry(
        self, id: int, due_at: float, status: int | None = None, error: str | None = None
    ) -> bool:
        """A leased delivery goes back to pending, due at ``due_at`` (clock time)."""
        return await self._call(lambda c, d: c.reschedule(id, due_at, status, error, d))

    async def failed(self, id: int, status: int | None = None, error: str | None = None) -> bool:
        """A leased delivery becomes a dead letter (its data is kept for a replay)."""
        return await self._call(lambda c, d: c.fail(id, status, error, d))

    async def release(self, ids: Sequence[int]) -> int:
        """Leased deliveries that were not attempted go back to pending (the attempt is
        not counted), e.g. when a worker stops with part of its batch unsent."""
        ids = list(ids)
        return await self._call(lambda c, d: c.release(ids, d), durable=False)

    def next_due(self, destination: str) -> float | None:
        """Clock time of the earliest pending delivery for ``destination``, or None."""
        return self._next_due.get(destination)

    async def wait_for_work(self, destination: str, timeout: float | None = None) -> bool:
        """Return True as soon as work may be available for ``destination`` (rows
        committed, retried or released, or the earliest due time reached); False when
        ``timeout`` seconds passed first. Spurious wake-ups are possible: lease() may
        then return nothing."""
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            due = self._next_due.get(destination)
            now = self.clock()
            if due is not None and due <= now:
                return True
            remaining = math.inf if deadline is None else deadline - anyio.current_time()
            if remaining <= 0:
                return False
            wait = remaining if due is None else min(remaining, due - now)
            ev = self._events.get(destination)
            if ev is None:
                ev = self._events[destination] = anyio.Event()
            with anyio.move_on_after(wait):
                await ev.wait()
                return True

    # -- metrics

    def stats(self) -> QueueStats:
        now = self.clock()
        return QueueStats(
            counts={k: v for k, v in self._counts.items() if v},
            oldest_pending_age={k: max(0.0, now - v) for k, v in self._oldest.items()},
            unrouted=self._unrouted,
            instances=self._active,
            committing=self._committing,
            transactions=self.transactions,
            commits=self.commits,
        )

    # -- operator commands and housekeeping

    async def list_deliveries(self, f: Filter = Filter()) -> list[Entry]:
        return await self._call(lambda c, d: c.list_deliveries(f), durable=False)

    async def retry_failed(self, f: Filter = Filter()) -> int:
        """Dead letters matching ``f`` go back to pending with attempts reset."""
        return await self._call(lambda c, d: c.retry_failed(f, d))

    async def purge(self, f: Filter) -> int:
        """Delete matching deliveries (and unrouted instances); an instance left with
        none loses its data too. Returns the number of deliveries/instances deleted."""
        return await self._call(lambda c, d: c.purge(f, d))

    async def housekeeping(self) -> int:
        """Remove done instances whose retention has passed."""
        return await self._call(lambda c, d: c.housekeeping(d))


def _lock_storage(storage_dir: Path) -> int:
    """Hold an exclusive lock on the storage directory for the router's lifetime."""
    storage_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(storage_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RouterRunning(f"another router is using {storage_dir}") from None
    return fd


class QueueAdmin:
    """Synchronous queue administration for the command line while the router is not
    running (it takes the storage lock, so a router cannot start meanwhile).

    Use as a context manager: ``with QueueAdmin(path) as q: q.list_deliveries(...)``.
    """

    def __init__(
        self, storage_dir: Path, *, retention: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.storage_dir = Path(storage_dir)
        if not (self.storage_dir / DB_NAME).exists():
            raise FileNotFoundError(f"no queue database in {self.storage_dir}")
        self._lock_fd = _lock_storage(self.storage_dir)
        try:
            conn = _connect(self.storage_dir / DB_NAME)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._core = _Core(conn, Spool(self.storage_dir), retention, clock)

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._core.conn.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> QueueAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> tuple[dict[tuple[str, str], int], int, int]:
        """(deliveries per (destination, state), unrouted, instances not done) by SQL."""
        counts, unrouted, active = self._core.count_states()
        return dict(counts), unrouted, active

    def list_deliveries(self, f: Filter = Filter()) -> list[Entry]:
        return self._core.list_deliveries(f)

    def retry_failed(self, f: Filter = Filter()) -> int:
        return self._core.transaction(lambda c, d: c.retry_failed(f, d))[0]

    def purge(self, f: Filter) -> int:
        return self._core.transaction(lambda c, d: c.purge(f, d))[0]

    def housekeeping(self) -> int:
        return self._core.transaction(lambda c, d: c.housekeeping(d, limit=1_000_000))[0]


def count_by_sql(storage_dir: Path) -> tuple[dict[tuple[str, str], int], int, int]:
    """A fresh GROUP BY over the database (for tests and `queue status` when stopped);
    does not take the storage lock, reads through WAL concurrently."""
    conn = sqlite3.connect(Path(storage_dir) / DB_NAME)
    try:
        counts: dict[tuple[str, str], int] = {}
        for dest, state, n in conn.execute(
            "SELECT destination, state, count(*) FROM delivery GROUP BY destination, state"
        ):
            counts[(dest, state)] = n
        unrouted = conn.execute("SELECT count(*) FROM instance WHERE unrouted = 1").fetchone()[0]
        active = conn.execute("SELECT count(*) FROM instance WHERE done_at IS NULL").fetchone()[0]
        return counts, int(unrouted), int(active)
    finally:
        conn.close()


def read_deliveries(storage_dir: Path, f: Filter = Filter()) -> list[Entry]:
    """``list_deliveries`` for the command line, read-only and without the storage lock,
    so it works while the router runs (WAL readers do not block the writer)."""
    uri = (Path(storage_dir) / DB_NAME).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30.0)
    try:
        return _Core(conn, Spool.__new__(Spool), 0.0, time.time).list_deliveries(f)
    finally:
        conn.close()

"""The SQLite queue's SQL for the hot path: committing instances, leasing, outcomes,
settling done instances, and start-up recovery. One :class:`Core` per connection, used
by one thread at a time (the DB thread of :mod:`router.store.sqlite.executor`, or the
standalone administration).

Every change is recorded in a :class:`Delta` so the running queue can keep its
in-memory counters, minima and wake-ups exact without counting rows again.

States of a delivery (:class:`~router.store.records.State`): ``held`` (its
destination's hold group is open: :mod:`router.store.sqlite.holds`), ``pending`` (waiting
for ``due_at``), ``leased`` (a worker is sending it; ``attempts`` already counts this
attempt), ``delivered``, ``failed`` (dead letter: the data is kept so it can be
retried). An instance without destinations is stored with ``unrouted = 1`` and shows as
state ``unrouted``. When every delivery of an instance is delivered the instance is
done: its data and rows are removed at once, or after ``retention`` seconds by
housekeeping. Times are unix seconds from the injected ``clock``, because ``due_at``
must survive a restart.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from router.holds import Hold
from router.store.records import CommitResult, InstanceRecord, Lease, State
from router.store.spool import Spool, SpooledSink
from router.store.sqlite import holds as hold_sql

log = logging.getLogger("router.store.queue")

T = TypeVar("T")

# The delivery states as the rows hold them, bound once: the commit path counts with
# them per destination, and an enum attribute lookup is slow next to a module global.
PENDING = State.PENDING.value
LEASED = State.LEASED.value
DELIVERED = State.DELIVERED.value
FAILED = State.FAILED.value
HELD = State.HELD.value

SQL_CHUNK = 500  # host parameters per IN (...) list


def chunks(items: Sequence[T], n: int = SQL_CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass
class Delta:
    """What a job changed, applied to the in-memory counters after the commit."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    unrouted: int = 0
    active: int = 0
    commits: int = 0
    remove: list[tuple[str, bool]] = field(default_factory=list)  # (id, spooled) after commit
    touched: set[str] = field(default_factory=set)  # destinations whose minima may grow
    added: dict[str, tuple[float, float]] = field(default_factory=dict)  # new rows' minima
    wake: set[str] = field(default_factory=set)  # destinations with new pending work
    hold_min: float | None = None  # earliest release time an arrival wrote
    hold_reset: bool = False  # groups were released or deleted: read the minimum again
    released: list[hold_sql.Released] = field(default_factory=list)  # to log after commit

    def move(self, dest: str, old: str | None, new: str | None, n: int = 1) -> None:
        if old is not None:
            self.counts[(dest, old)] -= n
        if new is not None:
            self.counts[(dest, new)] += n
        self.touched.add(dest)
        if new == PENDING:
            self.wake.add(dest)

    def insert(self, dest: str, due_at: float, created_at: float) -> None:
        """A new pending row: the minima only shrink, no query needed."""
        self.counts[(dest, PENDING)] += 1
        self.wake.add(dest)
        old = self.added.get(dest)
        if old is not None:
            due_at, created_at = min(old[0], due_at), min(old[1], created_at)
        self.added[dest] = (due_at, created_at)

    def held(self, dest: str) -> None:
        """A new held row: no worker to wake, no due time."""
        self.counts[(dest, HELD)] += 1

    def hold_arrived(self, release_at: float) -> None:
        if self.hold_min is None or release_at < self.hold_min:
            self.hold_min = release_at

    def merge(self, other: Delta) -> None:
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
        if other.hold_min is not None:
            self.hold_arrived(other.hold_min)
        self.hold_reset |= other.hold_reset
        self.released.extend(other.released)


class Core:
    """The synchronous queue operations on one connection (one thread at a time)."""

    def __init__(
        self, conn: sqlite3.Connection, spool: Spool, retention: float, clock: Callable[[], float]
    ) -> None:
        self.conn = conn
        self.spool = spool
        self.retention = retention
        self.clock = clock
        self._synchronous = "FULL"
        #: destination -> its hold policy; set by the queue (and on each reload)
        self.holds: Mapping[str, Hold] = {}
        #: where the spool files of removed instances go once their rows are committed
        #: away; None: unlinked at once (the queue sets a thread of its own)
        self.discard: Callable[[Sequence[str]], None] | None = None

    # -- transactions

    def set_durable(self, durable: bool) -> None:
        want = "FULL" if durable else "NORMAL"
        if want != self._synchronous:
            self.conn.execute(f"PRAGMA synchronous={want}")
            self._synchronous = want

    def transaction(self, fn: Callable[[Core, Delta], T]) -> tuple[T, Delta]:
        """Run ``fn`` in its own durable transaction, then remove data it released."""
        d = Delta()
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
        """Remove the spool files of instances whose removal is committed."""
        spooled = [ident for ident, sp in items if sp]
        if self.discard is not None:
            self.discard(spooled)
            return
        self.spool.remove_all(spooled)

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
            f" WHERE {same} AND d.state IN ('pending', 'leased', 'held')",
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
        d: Delta,
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
            " spooled, unrouted, digest, series_uid, series_number, instance_number)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                record.series_instance_uid,
                record.series_number,
                record.instance_number,
            ),
        )
        if dests:
            holds = self.holds
            rows: list[tuple[str, str, str, float, float, float, str | None]] = []
            for dest in dests:
                hold = holds.get(dest)
                if hold is None:
                    rows.append((ident, dest, PENDING, now, received, now, None))
                    d.insert(dest, now, received)
                else:
                    key = hold_sql.group_key(
                        hold, ident, record.study_instance_uid, record.series_instance_uid
                    )
                    hold_sql.arrive(self, dest, hold, key, now, d)
                    rows.append((ident, dest, HELD, now, received, now, key))
                    d.held(dest)
            self.conn.executemany(
                "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
                " updated_at, hold_key) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
        else:
            d.unrouted += 1
        d.active += 1
        d.commits += 1
        return CommitResult(ident, True, tuple(dests), tuple(dropped))

    # -- leasing and outcomes

    _LEASE_COLS = (
        "d.id, d.state, d.attempts, i.id, i.sop_class_uid, i.sop_instance_uid,"
        " i.transfer_syntax, i.spooled, i.data, i.data_offset, i.size, i.received_at,"
        " i.study_uid"
    )

    def lease(self, destination: str, limit: int, lease_seconds: float, d: Delta) -> list[Lease]:
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
            d.move(destination, r[1], LEASED)
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
                    study_uid=r[12],
                )
            )
        return out

    def delivered(self, ids: Sequence[int], status: int, d: Delta) -> int:
        now = self.clock()
        instances: set[str] = set()
        n = 0
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            for dest, inst in self.conn.execute(
                "UPDATE delivery SET state = 'delivered', last_status = ?, last_error = NULL,"
                f" lease_until = NULL, updated_at = ? WHERE id IN ({marks})"
                " AND state = 'leased' RETURNING destination, instance_id",
                (status, now, *chunk),
            ).fetchall():
                d.move(dest, LEASED, DELIVERED)
                instances.add(inst)
                n += 1
        self.settle(sorted(instances), d)
        return n

    def reschedule(
        self, id: int, due_at: float, status: int | None, error: str | None, d: Delta
    ) -> bool:
        row = self.conn.execute(
            "UPDATE delivery SET state = 'pending', due_at = ?, last_status = ?, last_error = ?,"
            " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'leased'"
            " RETURNING destination",
            (due_at, status, error, self.clock(), id),
        ).fetchone()
        if row is None:
            return False
        d.move(row[0], LEASED, PENDING)
        return True

    def fail(self, id: int, status: int | None, error: str | None, d: Delta) -> bool:
        row = self.conn.execute(
            "UPDATE delivery SET state = 'failed', last_status = ?, last_error = ?,"
            " lease_until = NULL, updated_at = ? WHERE id = ? AND state = 'leased'"
            " RETURNING destination",
            (status, error, self.clock(), id),
        ).fetchone()
        if row is None:
            return False
        d.move(row[0], LEASED, FAILED)
        return True

    def release(self, ids: Sequence[int], d: Delta) -> int:
        now = self.clock()
        n = 0
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            for (dest,) in self.conn.execute(
                "UPDATE delivery SET state = 'pending', attempts = max(attempts - 1, 0),"
                f" lease_until = NULL, due_at = min(due_at, ?), updated_at = ?"
                f" WHERE id IN ({marks}) AND state = 'leased' RETURNING destination",
                (now, now, *chunk),
            ).fetchall():
                d.move(dest, LEASED, PENDING)
                n += 1
        return n

    # -- instances: done, removal

    def settle(self, instance_ids: Sequence[str], d: Delta) -> None:
        """After deliveries changed: an instance with every delivery delivered is done
        (removed now, or kept for the retention); one with none left is removed. One
        query and one removal for the whole batch, not per instance: the delivered
        marks of a session come in batches, and the statements per instance were most
        of the queue thread's share of forwarding."""
        now = self.clock()
        for chunk in chunks(instance_ids):
            marks = ",".join("?" * len(chunk))
            counts = {
                inst: (total, done or 0)
                for inst, total, done in self.conn.execute(
                    "SELECT instance_id, count(*), sum(state = 'delivered') FROM delivery"
                    f" WHERE instance_id IN ({marks}) GROUP BY instance_id",
                    tuple(chunk),
                )
            }
            gone: list[str] = []
            finished: list[str] = []
            for inst in chunk:
                total, done = counts.get(inst, (0, 0))
                if total == 0:
                    gone.append(inst)
                elif done == total:
                    (gone if self.retention <= 0 else finished).append(inst)
            self.remove_instances(gone, d)
            if finished:
                cur = self.conn.execute(
                    f"UPDATE instance SET done_at = ? WHERE id IN ({','.join('?' * len(finished))})"
                    " AND done_at IS NULL",
                    (now, *finished),
                )
                d.active -= cur.rowcount

    def remove_instances(self, instance_ids: Sequence[str], d: Delta) -> None:
        """Remove instances with their deliveries; their data goes after the commit."""
        for chunk in chunks(instance_ids):
            marks = ",".join("?" * len(chunk))
            for dest, state in self.conn.execute(
                f"DELETE FROM delivery WHERE instance_id IN ({marks}) RETURNING destination, state",
                tuple(chunk),
            ).fetchall():
                d.move(dest, state, None)
            for inst, spooled, unrouted, done_at in self.conn.execute(
                f"DELETE FROM instance WHERE id IN ({marks})"
                " RETURNING id, spooled, unrouted, done_at",
                tuple(chunk),
            ).fetchall():
                if unrouted:
                    d.unrouted -= 1
                if done_at is None:
                    d.active -= 1
                d.remove.append((inst, bool(spooled)))

    def housekeeping(self, d: Delta, limit: int = 1000) -> int:
        """Remove done instances whose retention has passed (at most ``limit``)."""
        cutoff = self.clock() - self.retention
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM instance WHERE done_at IS NOT NULL AND done_at <= ? LIMIT ?",
                (cutoff, limit),
            ).fetchall()
        ]
        self.remove_instances(ids, d)
        return len(ids)

    # -- minima

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

    def recover(self, d: Delta) -> None:
        """Leases back to pending, partial receipts swept, orphan spool files removed,
        rows whose spool file is missing failed loudly. Runs before anything else."""
        now = self.clock()
        for (dest,) in self.conn.execute(
            "UPDATE delivery SET state = 'pending', lease_until = NULL, updated_at = ?"
            " WHERE state = 'leased' RETURNING destination",
            (now,),
        ).fetchall():
            d.move(dest, LEASED, PENDING)
        swept = self.spool.sweep_tmp()
        if swept:
            log.info("removed %d partial receipts from %s", swept, self.spool.tmp_dir)
        on_disk = self.spool.iter_ids()
        orphans: list[str] = []
        for chunk in chunks(on_disk):
            marks = ",".join("?" * len(chunk))
            known = {
                r[0]
                for r in self.conn.execute(
                    f"SELECT id FROM instance WHERE spooled = 1 AND id IN ({marks})", chunk
                )
            }
            orphans.extend(i for i in chunk if i not in known)
        self.spool.remove_all(orphans)
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
            lost = self.conn.execute(
                "SELECT id, destination, state FROM delivery WHERE instance_id = ?"
                " AND state IN ('pending', 'leased', 'held')",
                (ident,),
            ).fetchall()
            self.conn.executemany(
                "UPDATE delivery SET state = 'failed', last_error = 'spool file missing',"
                " hold_key = NULL, updated_at = ? WHERE id = ?",
                [(now, r[0]) for r in lost],
            )
            for _id, dest, state in lost:
                d.move(dest, state, FAILED)

"""The SQLite queue's SQL for the operator commands: counts by state, listing, retrying
dead letters, purging, releasing holds (housekeeping is :meth:`Core.housekeeping`,
which start-up uses too). The same functions serve the running queue (as jobs on its DB
thread) and the standalone administration, so each query exists once.

Reads take a bare connection (the read-only administration has no spool); changes take
the :class:`~router.store.sqlite.core.Core` and record them in a ``Delta``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from router.store.records import Entry, Filter, QueueCounts, State, StateCount
from router.store.sqlite import holds as hold_sql
from router.store.sqlite.core import Core, Delta
from router.store.sqlite.schema import version_of

#: The schema version that has holds (series columns, the hold table).
_HOLDS_VERSION = 3


def _where(f: Filter, now: float) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.destination is not None:
        clauses.append("d.destination = ?")
        args.append(f.destination)
    if f.state is not None:
        clauses.append("d.state = ?")
        args.append(f.state.value)
    clauses_i, args_i = _where_instance(f, now)
    where = " AND ".join(clauses + clauses_i) or "1"
    return where, args + args_i


def _where_instance(f: Filter, now: float) -> tuple[list[str], list[Any]]:
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
    if f.series_uid is not None:
        clauses.append("i.series_uid = ?")
        args.append(f.series_uid)
    return clauses, args


def status_counts(conn: sqlite3.Connection) -> QueueCounts:
    """Deliveries per (destination, state) with the oldest's creation, unrouted
    instances with the oldest's receipt, and instances not done: one GROUP BY."""
    deliveries = {
        (dest, State(state)): StateCount(int(n), oldest)
        for dest, state, n, oldest in conn.execute(
            "SELECT destination, state, count(*), min(created_at) FROM delivery"
            " GROUP BY destination, state"
        )
    }
    unrouted, unrouted_oldest = conn.execute(
        "SELECT count(*), min(received_at) FROM instance WHERE unrouted = 1"
    ).fetchone()
    (active,) = conn.execute("SELECT count(*) FROM instance WHERE done_at IS NULL").fetchone()
    return QueueCounts(deliveries, StateCount(int(unrouted), unrouted_oldest), int(active))


def list_deliveries(conn: sqlite3.Connection, f: Filter, now: float) -> list[Entry]:
    limit = f.limit if f.limit is not None else -1
    out: list[Entry] = []
    # a read-only open may see an older schema (an older router runs on it)
    holds = version_of(conn) >= _HOLDS_VERSION
    series = "i.series_uid" if holds else "NULL"
    if f.state is not State.UNROUTED:
        where, args = _where(f, now)
        hold_cols, hold_join = ", NULL, NULL", ""
        if holds:
            hold_cols = ", h.release_at, h.reason"
            hold_join = (
                " LEFT JOIN hold h ON d.state = 'held' AND h.destination = d.destination"
                " AND h.key = d.hold_key"
            )
        for r in conn.execute(
            "SELECT d.id, i.id, d.destination, d.state, d.attempts, d.due_at,"
            " d.last_status, d.last_error, i.received_at, d.updated_at, i.sop_class_uid,"
            f" i.sop_instance_uid, i.study_uid, i.size, {series}{hold_cols} FROM delivery d"
            f" JOIN instance i ON i.id = d.instance_id{hold_join} WHERE {where}"
            " ORDER BY i.received_at, i.id, d.destination LIMIT ?",
            (*args, limit),
        ):
            out.append(Entry(r[0], r[1], r[2], State(r[3]), *r[4:]))
    if f.includes_unrouted and (f.limit is None or len(out) < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted = 1", *clauses])
        rest = -1 if f.limit is None else f.limit - len(out)
        for r in conn.execute(
            "SELECT i.id, i.received_at, i.sop_class_uid, i.sop_instance_uid, i.study_uid,"
            f" i.size, {series} FROM instance i WHERE {where}"
            " ORDER BY i.received_at, i.id LIMIT ?",
            (*args, rest),
        ):
            out.append(
                Entry(None, r[0], None, State.UNROUTED, 0, None, None, None, r[1], r[1], *r[2:])
            )
    return out


def retry_failed(core: Core, f: Filter, d: Delta) -> int:
    """Dead letters matching ``f`` back to pending, due now, attempts reset."""
    if f.state not in (None, State.FAILED):
        raise ValueError("retry applies to failed deliveries (dead letters) only")
    now = core.clock()
    where, args = _where(f, now)
    limit = f.limit if f.limit is not None else -1
    n = 0
    for (dest,) in core.conn.execute(
        "UPDATE delivery SET state = 'pending', attempts = 0, due_at = ?, lease_until = NULL,"
        " updated_at = ? WHERE id IN (SELECT d.id FROM delivery d"
        f" JOIN instance i ON i.id = d.instance_id WHERE d.state = 'failed' AND {where}"
        " ORDER BY d.id LIMIT ?) RETURNING destination",
        (now, now, *args, limit),
    ).fetchall():
        d.move(dest, State.FAILED, State.PENDING)
        n += 1
    return n


def purge(core: Core, f: Filter, d: Delta) -> int:
    """Delete matching deliveries (and unrouted instances); an instance left with none
    loses its data too, one left with only delivered ones is done."""
    now = core.clock()
    limit = f.limit if f.limit is not None else -1
    n = 0
    instances: set[str] = set()
    if f.state is not State.UNROUTED:
        where, args = _where(f, now)
        for dest, state, inst in core.conn.execute(
            "DELETE FROM delivery WHERE id IN (SELECT d.id FROM delivery d"
            f" JOIN instance i ON i.id = d.instance_id WHERE {where} ORDER BY d.id LIMIT ?)"
            " RETURNING destination, state, instance_id",
            (*args, limit),
        ).fetchall():
            d.move(dest, state, None)
            instances.add(inst)
            n += 1
    if f.includes_unrouted and (f.limit is None or n < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted = 1", *clauses])
        rest = -1 if f.limit is None else f.limit - n
        ids = [
            r[0]
            for r in core.conn.execute(
                f"SELECT i.id FROM instance i WHERE {where} ORDER BY i.id LIMIT ?",
                (*args, rest),
            ).fetchall()
        ]
        core.remove_instances(ids, d)
        n += len(ids)
    core.settle(sorted(instances), d)
    hold_sql.drop_empty_groups(core, d)
    return n


def check_release_filter(f: Filter) -> None:
    """ValueError unless ``f`` can select hold groups (no other state, no limit)."""
    if f.state not in (None, State.HELD):
        raise ValueError("release applies to held deliveries only")
    if f.limit is not None:
        raise ValueError("release takes whole series or studies: no limit")


def release_holds(core: Core, f: Filter, d: Delta) -> int:
    """Release now the hold groups (series or studies) that hold a delivery matching
    ``f``: each whole, in its send order. Returns the deliveries released."""
    check_release_filter(f)
    where, args = _where(dataclasses.replace(f, state=None), core.clock())
    pairs = core.conn.execute(
        "SELECT DISTINCT d.destination, d.hold_key FROM delivery d"
        f" JOIN instance i ON i.id = d.instance_id WHERE d.state = 'held' AND {where}"
        " ORDER BY d.destination, d.hold_key",
        args,
    ).fetchall()
    return hold_sql.release_groups(core, hold_sql.groups_of(core, pairs), d)

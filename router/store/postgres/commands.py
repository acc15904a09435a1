"""The cluster queue's operator commands and numbers: list, replay, purge and release
holds with the SQLite queue's Filter semantics, counts by destination and state, and the snapshot
behind ``stats()``. They act on the whole cluster, whichever node runs them."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from router.store.hold_release import Released
from router.store.postgres import holds as pg_holds
from router.store.postgres import ops
from router.store.records import Entry, Filter, QueueCounts, State, StateCount

__all__ = [
    "Snapshot",
    "counts",
    "list_deliveries",
    "purge",
    "release_holds",
    "retry_failed",
    "snapshot",
]


# ----------------------------------------------------------------------------- operator


def _where_instance(f: Filter, now: float) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.min_age is not None:
        clauses.append("i.received_at <= %s")
        args.append(now - f.min_age)
    if f.study_uid is not None:
        clauses.append("i.study_uid = %s")
        args.append(f.study_uid)
    if f.instance_id is not None:
        clauses.append("i.id = %s")
        args.append(f.instance_id)
    if f.series_uid is not None:
        clauses.append("i.series_uid = %s")
        args.append(f.series_uid)
    return clauses, args


def _where(f: Filter, now: float) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if f.destination is not None:
        clauses.append("d.destination = %s")
        args.append(f.destination)
    if f.state is not None:
        clauses.append("d.state = %s")
        args.append(f.state)
    clauses_i, args_i = _where_instance(f, now)
    return " AND ".join(clauses + clauses_i) or "true", args + args_i


async def list_deliveries(conn: ops.Conn, f: Filter, now: float) -> list[Entry]:
    out: list[Entry] = []
    if f.state != "unrouted":
        where, args = _where(f, now)
        for r in await ops.fetch(
            conn,
            "SELECT d.id, i.id, d.destination, d.state, d.attempts, d.due_at,"
            " d.last_status, d.last_error, i.received_at, d.updated_at, i.sop_class_uid,"
            " i.sop_instance_uid, i.study_uid, i.size, i.series_uid, h.release_at, h.reason"
            " FROM delivery d JOIN instance i ON i.id = d.instance_id"
            " LEFT JOIN hold h ON d.state = 'held' AND h.destination = d.destination"
            f" AND h.key = d.hold_key WHERE {where}"
            " ORDER BY i.received_at, i.id, d.destination LIMIT %s",
            (*args, f.limit),
        ):
            out.append(Entry(r[0], r[1], r[2], State(r[3]), *r[4:]))
    if f.includes_unrouted and (f.limit is None or len(out) < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted", *clauses])
        rest = None if f.limit is None else f.limit - len(out)
        for r in await ops.fetch(
            conn,
            "SELECT i.id, i.received_at, i.sop_class_uid, i.sop_instance_uid, i.study_uid,"
            f" i.size, i.series_uid FROM instance i WHERE {where}"
            " ORDER BY i.received_at, i.id LIMIT %s",
            (*args, rest),
        ):
            out.append(
                Entry(None, r[0], None, State.UNROUTED, 0, None, None, None, r[1], r[1], *r[2:])
            )
    return out


async def retry_failed(conn: ops.Conn, f: Filter, now: float) -> list[str]:
    """Dead letters matching ``f`` back to pending, attempts reset; their destinations."""
    if f.state not in (None, "failed"):
        raise ValueError("retry applies to failed deliveries (dead letters) only")
    where, args = _where(f, now)
    rows = await ops.fetch(
        conn,
        "UPDATE delivery SET state = 'pending', attempts = 0, due_at = %s, updated_at = %s"
        " WHERE id IN (SELECT d.id FROM delivery d JOIN instance i ON i.id = d.instance_id"
        f" WHERE d.state = 'failed' AND {where} ORDER BY d.id LIMIT %s"
        " FOR UPDATE OF d SKIP LOCKED) RETURNING destination",
        (now, now, *args, f.limit),
    )
    return [r[0] for r in rows]


async def release_holds(conn: ops.Conn, f: Filter, now: float) -> list[Released]:
    """Release now the hold groups (series or studies) that hold a delivery matching
    ``f``: each whole, in its send order (the caller notifies and logs them)."""
    pg_holds.check_release_filter(f)
    where, args = _where(dataclasses.replace(f, state=None), now)
    return await pg_holds.release_filtered(conn, where, args, now)


async def purge(conn: ops.Conn, f: Filter, now: float, retention: float) -> tuple[int, ops.Removed]:
    """Delete matching deliveries (and unrouted instances); an instance left with none
    loses its data too. Returns (deliveries and instances deleted, data to remove)."""
    n = 0
    removed: ops.Removed = []
    if f.state != "unrouted":
        where, args = _where(f, now)
        picked = await ops.fetch(
            conn,
            f"SELECT d.id FROM delivery d JOIN instance i ON i.id = d.instance_id WHERE {where}"
            " ORDER BY d.id LIMIT %s",
            (*args, f.limit),
        )
        ids = [r[0] for r in picked]
        if ids:
            await ops.lock_instances_of(conn, ids)
            await ops.lock_deliveries(conn, ids)
            rows = await ops.fetch(
                conn,
                "DELETE FROM delivery WHERE id = ANY(%s)"
                " RETURNING instance_id, destination, hold_key",
                (ids,),
            )
            n += len(rows)
            removed += await ops.settle(conn, sorted({r[0] for r in rows}), now, retention)
            await pg_holds.drop_empty_groups(conn, [(r[1], r[2]) for r in rows if r[2]])
    if f.includes_unrouted and (f.limit is None or n < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted", *clauses])
        rest = None if f.limit is None else f.limit - n
        rows = await ops.fetch(
            conn,
            f"SELECT i.id FROM instance i WHERE {where} ORDER BY i.id LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (*args, rest),
        )
        gone = await ops.remove_instances(conn, [r[0] for r in rows])
        n += len(gone)
        removed += gone
    return n, removed


# ----------------------------------------------------------------------------- counts


async def counts(conn: ops.Conn) -> QueueCounts:
    """Deliveries per (destination, state) with the oldest's creation, unrouted
    instances with the oldest's receipt, and instances not done: the whole cluster's."""
    deliveries = {
        (r[0], State(r[1])): StateCount(int(r[2]), float(r[3]))
        for r in await ops.fetch(
            conn,
            "SELECT destination, state, count(*), min(created_at) FROM delivery"
            " GROUP BY destination, state",
        )
    }
    rows = await ops.fetch(
        conn,
        "SELECT count(*) FILTER (WHERE unrouted), min(received_at) FILTER (WHERE unrouted),"
        " count(*) FILTER (WHERE done_at IS NULL) FROM instance",
    )
    unrouted, oldest, active = rows[0]
    return QueueCounts(
        deliveries,
        StateCount(int(unrouted), None if oldest is None else float(oldest)),
        int(active),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The cluster's numbers for metrics and for waking idle workers."""

    counts: Counter[tuple[str, str]]
    next_due: dict[str, float]  # destination -> earliest due_at of pending
    oldest: dict[str, float]  # destination -> earliest created_at of pending or leased
    expired: set[str]  # destinations with a lease past lease_until (to be taken over)
    unrouted: int
    active: int
    next_release: float | None = None  # the earliest release time of a hold group


async def snapshot(conn: ops.Conn) -> Snapshot:
    c: Counter[tuple[str, str]] = Counter()
    next_due: dict[str, float] = {}
    oldest: dict[str, float] = {}
    expired: set[str] = set()
    for dest, state, n, due, created, late in await ops.fetch(
        conn,
        "SELECT destination, state, count(*), min(due_at), min(created_at),"
        " count(*) FILTER (WHERE lease_until <= now())"
        " FROM delivery GROUP BY destination, state",
    ):
        c[(dest, state)] = int(n)
        if state == "pending":
            next_due[dest] = float(due)
        if state in ("pending", "leased"):
            old = oldest.get(dest)
            oldest[dest] = float(created) if old is None else min(old, float(created))
        if late:
            expired.add(dest)
    unrouted, active = await _count_instances(conn)
    release = await pg_holds.next_release(conn)
    return Snapshot(c, next_due, oldest, expired, unrouted, active, release)


async def _count_instances(conn: ops.Conn) -> tuple[int, int]:
    rows = await ops.fetch(
        conn,
        "SELECT count(*) FILTER (WHERE unrouted), count(*) FILTER (WHERE done_at IS NULL)"
        " FROM instance",
    )
    return int(rows[0][0]), int(rows[0][1])

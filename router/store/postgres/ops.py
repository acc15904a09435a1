"""The cluster queue's operations: SQL on one connection, inside a transaction the caller
opens (the backend and the group-commit writer do).

They mirror the SQLite queue's (router/store/queue.py) state machine exactly: deliveries
go pending -> leased -> delivered | pending (rescheduled, released) | failed; attempts are
counted at lease time; an instance whose deliveries are all delivered is done (removed, or
kept for the retention); one left with no delivery is removed. What the cluster adds:

- a lease names its node (``leased_by``) and carries a fencing token (``lease_token``,
  a new value of a sequence for every lease); an outcome applies only while the token it
  was leased with is still the row's, so a node whose lease expired and was taken over
  records nothing over the new owner's;
- ``lease_until`` is computed and compared on the database's clock (``now()``);
- rows are picked with ``FOR UPDATE SKIP LOCKED``, so nodes leasing together never get
  the same delivery and never wait for one another;
- settling locks the instance row first (``FOR UPDATE``, in id order): of two nodes that
  deliver an instance's last two deliveries at once, the second waits for the first and
  then sees both delivered, so the instance is settled exactly once, by one node.

Data removal (spool files) is returned to the caller as ``(instance id, spooled)`` pairs,
to be done after the commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from router.store.queue import CommitResult, Entry, Filter, InstanceRecord, Lease
from router.store.spool import Spool, SpooledSink

__all__ = [
    "CHANNEL",
    "Conn",
    "NewInstance",
    "Removed",
    "Snapshot",
    "counts",
    "delivered",
    "fail",
    "housekeeping",
    "insert_instance",
    "insert_many",
    "known_spooled",
    "lease",
    "list_deliveries",
    "lock_digests",
    "next_due",
    "notify",
    "purge",
    "release",
    "release_node",
    "renew",
    "reschedule",
    "retry_failed",
    "snapshot",
]

Conn = AsyncConnection[TupleRow]
Removed = list[tuple[str, bool]]  # (instance id, spooled): data to remove after the commit

#: NOTIFY channel; the payload is the destination with new pending work.
CHANNEL = "dicom_router_work"


async def _rows(conn: Conn, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[TupleRow]:
    cur = await conn.execute(sql.encode(), args)
    return await cur.fetchall() if cur.description is not None else []


async def notify(conn: Conn, destinations: Sequence[str]) -> None:
    """Tell every node's listener (delivered when the transaction commits)."""
    if destinations:
        await _rows(
            conn,
            "SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS x",
            (CHANNEL, sorted(set(destinations))),
        )


# ----------------------------------------------------------------------------- commit


async def lock_digests(conn: Conn, records: Sequence[InstanceRecord]) -> None:
    """Serialise drop_identical checks of the same SOP instance across nodes: one
    transaction-scoped advisory lock per UID, taken in order (no deadlock between two
    nodes' batches)."""
    uids = sorted({r.sop_instance_uid for r in records if r.digest is not None})
    if uids:
        await _rows(
            conn,
            "SELECT pg_advisory_xact_lock(hashtext('instance:' || u))"
            " FROM unnest(%s::text[]) AS u ORDER BY u",
            (uids,),
        )


async def _identical_queued(
    conn: Conn, record: InstanceRecord, dests: Sequence[str]
) -> dict[str, str]:
    same = (
        "i.sop_instance_uid = %s AND i.digest = %s AND i.sop_class_uid = %s"
        " AND i.transfer_syntax = %s"
    )
    key = (record.sop_instance_uid, record.digest, record.sop_class_uid, record.transfer_syntax)
    if not dests:
        rows = await _rows(
            conn, f"SELECT i.id FROM instance i WHERE {same} AND i.unrouted LIMIT 1", key
        )
        return {"": rows[0][0]} if rows else {}
    found: dict[str, str] = {}
    for dest, inst in await _rows(
        conn,
        "SELECT d.destination, i.id FROM instance i JOIN delivery d ON d.instance_id = i.id"
        f" WHERE {same} AND d.state IN ('pending', 'leased') ORDER BY i.id",
        key,
    ):
        if dest in dests:
            found.setdefault(dest, inst)
    return found


_INSERT_INSTANCE = (
    "INSERT INTO instance (id, received_at, sop_class_uid, sop_instance_uid,"
    " transfer_syntax, study_uid, calling_ae, called_ae, size, data_offset, data,"
    " spooled, unrouted, digest, node_id)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%b,%s,%s,%s,%s)"
)


def _instance_row(
    ident: str,
    record: InstanceRecord,
    sink: SpooledSink,
    dests: Sequence[str],
    node_id: str,
    received: float,
) -> tuple[Any, ...]:
    data = None if sink.spilled else sink.inline_view
    return (
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
        None if data is None else bytes(data),
        sink.spilled,
        not dests,
        record.digest,
        node_id,
    )


@dataclass(frozen=True, slots=True)
class NewInstance:
    """One instance of a batch to insert."""

    ident: str
    record: InstanceRecord
    sink: SpooledSink
    destinations: Sequence[str]


async def insert_many(
    conn: Conn, items: Sequence[NewInstance], node_id: str, now: float
) -> list[CommitResult]:
    """Many instances without ``digest`` (no duplicate check) in two statements sent
    pipelined: the fast path of a group commit. One bad row fails them all; the caller
    then inserts them one by one to find it."""
    if not items:
        return []
    rows = []
    ident_of: list[str] = []
    dest_of: list[str] = []
    created: list[float] = []
    results: list[CommitResult] = []
    for it in items:
        assert it.record.digest is None
        received = it.record.received_at if it.record.received_at is not None else now
        dests = list(dict.fromkeys(it.destinations))
        rows.append(_instance_row(it.ident, it.record, it.sink, dests, node_id, received))
        for dest in dests:
            ident_of.append(it.ident)
            dest_of.append(dest)
            created.append(received)
        results.append(CommitResult(it.ident, True, tuple(dests)))
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT_INSTANCE.encode(), rows)
    if ident_of:
        await _rows(
            conn,
            "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
            " updated_at) SELECT t.i, t.d, 'pending', %s, t.c, %s"
            " FROM unnest(%s::text[], %s::text[], %s::float8[]) AS t(i, d, c)",
            (now, now, ident_of, dest_of, created),
        )
    return results


async def insert_instance(
    conn: Conn,
    ident: str,
    record: InstanceRecord,
    sink: SpooledSink,
    destinations: Sequence[str],
    node_id: str,
    now: float,
) -> CommitResult:
    """The instance row (an inline data set inside it) and one pending delivery per
    destination. With ``record.digest``, destinations that still have an identical
    instance pending or leased are dropped (see :class:`CommitResult`)."""
    received = record.received_at if record.received_at is not None else now
    dests = list(dict.fromkeys(destinations))
    dropped: list[str] = []
    if record.digest is not None:
        same = await _identical_queued(conn, record, dests)
        if same and (not dests or len(same) == len(dests)):
            return CommitResult(next(iter(same.values())), False, (), tuple(dests))
        dropped = [dest for dest in dests if dest in same]
        dests = [dest for dest in dests if dest not in same]
    await _rows(
        conn, _INSERT_INSTANCE, _instance_row(ident, record, sink, dests, node_id, received)
    )
    if dests:
        await _rows(
            conn,
            "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
            " updated_at) SELECT %s, x, 'pending', %s, %s, %s FROM unnest(%s::text[]) AS x",
            (ident, now, received, now, dests),
        )
    return CommitResult(ident, True, tuple(dests), tuple(dropped))


# ----------------------------------------------------------------------------- leases


async def lease(
    conn: Conn,
    spool: Spool,
    destination: str,
    limit: int,
    lease_seconds: float,
    node_id: str,
    now: float,
) -> list[tuple[Lease, int]]:
    """Up to ``limit`` deliveries of ``destination``: pending ones due by ``now`` (the
    node's clock, as ``due_at`` is), then leased ones whose ``lease_until`` has passed
    on the database's clock (a node vanished: taken over). Each gets a new token."""
    rows = await _rows(
        conn,
        "WITH picked AS ("
        " SELECT d.id FROM delivery d WHERE d.destination = %(dest)s AND ("
        "  (d.state = 'pending' AND d.due_at <= %(now)s)"
        "  OR (d.state = 'leased' AND d.lease_until <= now()))"
        " ORDER BY d.due_at, d.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
        " UPDATE delivery d SET state = 'leased', attempts = d.attempts + 1,"
        "  lease_until = now() + make_interval(secs => %(lease)s), leased_by = %(node)s,"
        "  lease_token = nextval('lease_token'), updated_at = %(now)s"
        " FROM picked p, instance i WHERE d.id = p.id AND i.id = d.instance_id"
        " RETURNING d.id, d.lease_token, d.attempts, i.id, i.sop_class_uid,"
        "  i.sop_instance_uid, i.transfer_syntax, i.spooled, i.data, i.data_offset, i.size,"
        "  i.received_at, d.due_at",
        {"dest": destination, "now": now, "limit": limit, "lease": lease_seconds, "node": node_id},
    )
    rows.sort(key=lambda r: (r[12], r[0]))
    out: list[tuple[Lease, int]] = []
    for r in rows:
        source: bytes | Path = spool.path_for(r[3]) if r[7] else bytes(r[8])
        out.append(
            (
                Lease(
                    delivery_id=r[0],
                    instance_id=r[3],
                    destination=destination,
                    attempt=r[2],
                    sop_class_uid=r[4],
                    sop_instance_uid=r[5],
                    transfer_syntax=r[6],
                    source=source,
                    data_offset=r[9],
                    size=r[10],
                    received_at=r[11],
                ),
                r[1],
            )
        )
    return out


async def next_due(conn: Conn, destination: str) -> float | None:
    """Earliest ``due_at`` of the destination's pending deliveries (after a lease that
    took fewer than asked: what is left, so idle workers do not spin)."""
    rows = await _rows(
        conn,
        "SELECT min(due_at) FROM delivery WHERE destination = %s AND state = 'pending'",
        (destination,),
    )
    return None if not rows or rows[0][0] is None else float(rows[0][0])


async def renew(conn: Conn, items: Sequence[tuple[int, int, float]]) -> set[int]:
    """Extend leases (id, token, seconds) still held with that token to the database's
    now() + seconds; returns the ids renewed (the others were taken over or ended)."""
    rows = await _rows(
        conn,
        "UPDATE delivery d SET lease_until = now() + make_interval(secs => t.secs)"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::float8[]) AS t(id, token, secs)"
        " WHERE d.id = t.id AND d.state = 'leased' AND d.lease_token = t.token"
        " RETURNING d.id",
        ([i[0] for i in items], [i[1] for i in items], [i[2] for i in items]),
    )
    return {r[0] for r in rows}


async def _lock_instances_of(conn: Conn, delivery_ids: Sequence[int]) -> list[str]:
    """Lock (in id order) the instance rows of these deliveries; returns their ids."""
    rows = await _rows(
        conn,
        "SELECT id FROM instance WHERE id IN"
        " (SELECT instance_id FROM delivery WHERE id = ANY(%s)) ORDER BY id FOR UPDATE",
        (list(delivery_ids),),
    )
    return [r[0] for r in rows]


async def delivered(
    conn: Conn,
    tokens: Sequence[tuple[int, int]],
    status: int,
    now: float,
    retention: float,
) -> tuple[int, Removed]:
    """Deliveries (id, token) still leased with that token become delivered; instances
    with every delivery delivered are settled. Returns (rows changed, data to remove)."""
    if not tokens:
        return 0, []
    await _lock_instances_of(conn, [t[0] for t in tokens])
    rows = await _rows(
        conn,
        "UPDATE delivery d SET state = 'delivered', last_status = %s, last_error = NULL,"
        " lease_until = NULL, lease_token = NULL, updated_at = %s"
        " FROM unnest(%s::bigint[], %s::bigint[]) AS t(id, token)"
        " WHERE d.id = t.id AND d.state = 'leased' AND d.lease_token = t.token"
        " RETURNING d.instance_id",
        (status, now, [t[0] for t in tokens], [t[1] for t in tokens]),
    )
    removed = await settle(conn, sorted({r[0] for r in rows}), now, retention)
    return len(rows), removed


async def reschedule(
    conn: Conn,
    id: int,
    token: int,
    due_at: float,
    status: int | None,
    error: str | None,
    now: float,
) -> str | None:
    """Back to pending, due at ``due_at``; returns the destination, None if fenced off."""
    rows = await _rows(
        conn,
        "UPDATE delivery SET state = 'pending', due_at = %s, last_status = %s,"
        " last_error = %s, lease_until = NULL, lease_token = NULL, updated_at = %s"
        " WHERE id = %s AND state = 'leased' AND lease_token = %s RETURNING destination",
        (due_at, status, error, now, id, token),
    )
    return rows[0][0] if rows else None


async def fail(
    conn: Conn, id: int, token: int, status: int | None, error: str | None, now: float
) -> bool:
    """A dead letter (the data stays for a replay); False if fenced off."""
    rows = await _rows(
        conn,
        "UPDATE delivery SET state = 'failed', last_status = %s, last_error = %s,"
        " lease_until = NULL, lease_token = NULL, updated_at = %s"
        " WHERE id = %s AND state = 'leased' AND lease_token = %s RETURNING id",
        (status, error, now, id, token),
    )
    return bool(rows)


async def release(conn: Conn, tokens: Sequence[tuple[int, int]], now: float) -> list[str]:
    """Leased, not attempted: back to pending, the attempt uncounted. Returns the
    destination of each row changed."""
    if not tokens:
        return []
    rows = await _rows(
        conn,
        "UPDATE delivery d SET state = 'pending', attempts = greatest(d.attempts - 1, 0),"
        " lease_until = NULL, lease_token = NULL, due_at = least(d.due_at, %s),"
        " updated_at = %s FROM unnest(%s::bigint[], %s::bigint[]) AS t(id, token)"
        " WHERE d.id = t.id AND d.state = 'leased' AND d.lease_token = t.token"
        " RETURNING d.destination",
        (now, now, [t[0] for t in tokens], [t[1] for t in tokens]),
    )
    return [r[0] for r in rows]


async def release_node(conn: Conn, node_id: str, now: float) -> list[str]:
    """At a node's start: the leases its previous run held go back to pending at once
    (nobody sends them any more), instead of waiting for them to expire."""
    rows = await _rows(
        conn,
        "UPDATE delivery SET state = 'pending', lease_until = NULL, lease_token = NULL,"
        " updated_at = %s WHERE state = 'leased' AND leased_by = %s RETURNING destination",
        (now, node_id),
    )
    return [r[0] for r in rows]


# ----------------------------------------------------------------------------- settle


async def settle(conn: Conn, instance_ids: Sequence[str], now: float, retention: float) -> Removed:
    """Instances (already locked by the caller) whose deliveries all ended delivered are
    done: removed now, or marked for the retention; one with no delivery is removed."""
    if not instance_ids:
        return []
    state = {
        r[0]: (r[1], r[2])
        for r in await _rows(
            conn,
            "SELECT instance_id, count(*), count(*) FILTER (WHERE state = 'delivered')"
            " FROM delivery WHERE instance_id = ANY(%s) GROUP BY instance_id",
            (list(instance_ids),),
        )
    }
    gone = [i for i in instance_ids if i not in state]
    done = [i for i in instance_ids if i in state and state[i][0] == state[i][1]]
    if retention <= 0:
        gone += done
    elif done:
        await _rows(
            conn,
            "UPDATE instance SET done_at = %s WHERE id = ANY(%s) AND done_at IS NULL",
            (now, done),
        )
    return await remove_instances(conn, sorted(gone))


async def remove_instances(conn: Conn, instance_ids: Sequence[str]) -> Removed:
    if not instance_ids:
        return []
    ids = list(instance_ids)
    await _rows(conn, "DELETE FROM delivery WHERE instance_id = ANY(%s)", (ids,))
    rows = await _rows(
        conn, "DELETE FROM instance WHERE id = ANY(%s) RETURNING id, spooled", (ids,)
    )
    return [(r[0], bool(r[1])) for r in rows]


async def housekeeping(conn: Conn, now: float, retention: float, limit: int = 1000) -> Removed:
    """Remove done instances whose retention has passed (rows another node is removing
    right now are skipped, not waited for)."""
    rows = await _rows(
        conn,
        "SELECT id FROM instance WHERE done_at IS NOT NULL AND done_at <= %s"
        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (now - retention, limit),
    )
    return await remove_instances(conn, [r[0] for r in rows])


async def known_spooled(conn: Conn, ids: Sequence[str]) -> set[str]:
    """Which of these ids have a row naming a spool file."""
    rows = await _rows(conn, "SELECT id FROM instance WHERE spooled AND id = ANY(%s)", (list(ids),))
    return {r[0] for r in rows}


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


async def list_deliveries(conn: Conn, f: Filter, now: float) -> list[Entry]:
    out: list[Entry] = []
    if f.state != "unrouted":
        where, args = _where(f, now)
        for r in await _rows(
            conn,
            "SELECT d.id, i.id, d.destination, d.state, d.attempts, d.due_at,"
            " d.last_status, d.last_error, i.received_at, d.updated_at, i.sop_class_uid,"
            " i.sop_instance_uid, i.study_uid, i.size FROM delivery d"
            f" JOIN instance i ON i.id = d.instance_id WHERE {where}"
            " ORDER BY i.received_at, i.id, d.destination LIMIT %s",
            (*args, f.limit),
        ):
            out.append(Entry(*r))
    if f.includes_unrouted and (f.limit is None or len(out) < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted", *clauses])
        rest = None if f.limit is None else f.limit - len(out)
        for r in await _rows(
            conn,
            "SELECT i.id, i.received_at, i.sop_class_uid, i.sop_instance_uid, i.study_uid,"
            f" i.size FROM instance i WHERE {where} ORDER BY i.received_at, i.id LIMIT %s",
            (*args, rest),
        ):
            out.append(Entry(None, r[0], None, "unrouted", 0, None, None, None, r[1], r[1], *r[2:]))
    return out


async def retry_failed(conn: Conn, f: Filter, now: float) -> list[str]:
    """Dead letters matching ``f`` back to pending, attempts reset; their destinations."""
    if f.state not in (None, "failed"):
        raise ValueError("retry applies to failed deliveries (dead letters) only")
    where, args = _where(f, now)
    rows = await _rows(
        conn,
        "UPDATE delivery SET state = 'pending', attempts = 0, due_at = %s, updated_at = %s"
        " WHERE id IN (SELECT d.id FROM delivery d JOIN instance i ON i.id = d.instance_id"
        f" WHERE d.state = 'failed' AND {where} ORDER BY d.id LIMIT %s"
        " FOR UPDATE OF d SKIP LOCKED) RETURNING destination",
        (now, now, *args, f.limit),
    )
    return [r[0] for r in rows]


async def purge(conn: Conn, f: Filter, now: float, retention: float) -> tuple[int, Removed]:
    """Delete matching deliveries (and unrouted instances); an instance left with none
    loses its data too. Returns (deliveries and instances deleted, data to remove)."""
    n = 0
    removed: Removed = []
    if f.state != "unrouted":
        where, args = _where(f, now)
        picked = await _rows(
            conn,
            f"SELECT d.id FROM delivery d JOIN instance i ON i.id = d.instance_id WHERE {where}"
            " ORDER BY d.id LIMIT %s",
            (*args, f.limit),
        )
        ids = [r[0] for r in picked]
        if ids:
            await _lock_instances_of(conn, ids)
            rows = await _rows(
                conn, "DELETE FROM delivery WHERE id = ANY(%s) RETURNING instance_id", (ids,)
            )
            n += len(rows)
            removed += await settle(conn, sorted({r[0] for r in rows}), now, retention)
    if f.includes_unrouted and (f.limit is None or n < f.limit):
        clauses, args = _where_instance(f, now)
        where = " AND ".join(["i.unrouted", *clauses])
        rest = None if f.limit is None else f.limit - n
        rows = await _rows(
            conn,
            f"SELECT i.id FROM instance i WHERE {where} ORDER BY i.id LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (*args, rest),
        )
        gone = await remove_instances(conn, [r[0] for r in rows])
        n += len(gone)
        removed += gone
    return n, removed


# ----------------------------------------------------------------------------- counts


async def counts(conn: Conn) -> tuple[dict[tuple[str, str], int], int, int]:
    """(deliveries per (destination, state), unrouted instances, instances not done)
    for the whole cluster."""
    by_state = {
        (r[0], r[1]): int(r[2])
        for r in await _rows(
            conn, "SELECT destination, state, count(*) FROM delivery GROUP BY destination, state"
        )
    }
    unrouted, active = await _count_instances(conn)
    return by_state, unrouted, active


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The cluster's numbers for metrics and for waking idle workers."""

    counts: Counter[tuple[str, str]]
    next_due: dict[str, float]  # destination -> earliest due_at of pending
    oldest: dict[str, float]  # destination -> earliest created_at of pending or leased
    expired: set[str]  # destinations with a lease past lease_until (to be taken over)
    unrouted: int
    active: int


async def snapshot(conn: Conn) -> Snapshot:
    c: Counter[tuple[str, str]] = Counter()
    next_due: dict[str, float] = {}
    oldest: dict[str, float] = {}
    expired: set[str] = set()
    for dest, state, n, due, created, late in await _rows(
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
    return Snapshot(c, next_due, oldest, expired, unrouted, active)


async def _count_instances(conn: Conn) -> tuple[int, int]:
    rows = await _rows(
        conn,
        "SELECT count(*) FILTER (WHERE unrouted), count(*) FILTER (WHERE done_at IS NULL)"
        " FROM instance",
    )
    return int(rows[0][0]), int(rows[0][1])

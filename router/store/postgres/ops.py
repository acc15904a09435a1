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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from router.holds import Hold
from router.store.postgres import holds as pg_holds
from router.store.queue import CommitResult, InstanceRecord, Lease
from router.store.spool import Spool, SpooledSink

__all__ = [
    "CHANNEL",
    "Conn",
    "NewInstance",
    "Removed",
    "delivered",
    "fail",
    "fetch",
    "housekeeping",
    "insert_instance",
    "insert_many",
    "known_spooled",
    "lease",
    "lock_deliveries",
    "lock_digests",
    "lock_instances_of",
    "next_due",
    "notify",
    "release",
    "release_node",
    "remove_instances",
    "renew",
    "reschedule",
    "settle",
]

Conn = AsyncConnection[TupleRow]
Removed = list[tuple[str, bool]]  # (instance id, spooled): data to remove after the commit

#: NOTIFY channel; the payload is the destination with new pending work.
CHANNEL = "dicom_router_work"


async def fetch(conn: Conn, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[TupleRow]:
    cur = await conn.execute(sql.encode(), args)
    return await cur.fetchall() if cur.description is not None else []


async def notify(conn: Conn, destinations: Sequence[str]) -> None:
    """Tell every node's listener (delivered when the transaction commits)."""
    if destinations:
        await fetch(
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
        await fetch(
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
        rows = await fetch(
            conn, f"SELECT i.id FROM instance i WHERE {same} AND i.unrouted LIMIT 1", key
        )
        return {"": rows[0][0]} if rows else {}
    found: dict[str, str] = {}
    for dest, inst in await fetch(
        conn,
        "SELECT d.destination, i.id FROM instance i JOIN delivery d ON d.instance_id = i.id"
        f" WHERE {same} AND d.state IN ('held', 'pending', 'leased') ORDER BY i.id",
        key,
    ):
        if dest in dests:
            found.setdefault(dest, inst)
    return found


_INSERT_INSTANCE = (
    "INSERT INTO instance (id, received_at, sop_class_uid, sop_instance_uid,"
    " transfer_syntax, study_uid, calling_ae, called_ae, size, data_offset, data,"
    " spooled, unrouted, digest, node_id, series_uid, series_number, instance_number)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%b,%s,%s,%s,%s,%s,%s,%s)"
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
        record.series_instance_uid,
        record.series_number,
        record.instance_number,
    )


@dataclass(frozen=True, slots=True)
class NewInstance:
    """One instance of a batch to insert."""

    ident: str
    record: InstanceRecord
    sink: SpooledSink
    destinations: Sequence[str]


async def insert_many(
    conn: Conn,
    items: Sequence[NewInstance],
    node_id: str,
    now: float,
    hold_of: Mapping[str, Hold] | None = None,
) -> tuple[list[CommitResult], float | None]:
    """Many instances without ``digest`` (no duplicate check) in two statements sent
    pipelined: the fast path of a group commit. One bad row fails them all; the caller
    then inserts them one by one to find it. Deliveries to a destination in ``hold_of``
    are held (router/store/postgres/holds.py); also returns the earliest release time
    their arrivals set."""
    if not items:
        return [], None
    rows = []
    new: list[pg_holds.NewDelivery] = []
    results: list[CommitResult] = []
    for it in items:
        assert it.record.digest is None
        received = it.record.received_at if it.record.received_at is not None else now
        dests = list(dict.fromkeys(it.destinations))
        rows.append(_instance_row(it.ident, it.record, it.sink, dests, node_id, received))
        study, series = it.record.study_instance_uid, it.record.series_instance_uid
        new += [pg_holds.NewDelivery(it.ident, d, received, study, series) for d in dests]
        results.append(CommitResult(it.ident, True, tuple(dests)))
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT_INSTANCE.encode(), rows)
    release_at = await pg_holds.insert_deliveries(conn, new, hold_of or {}, now)
    return results, release_at


async def insert_instance(
    conn: Conn,
    ident: str,
    record: InstanceRecord,
    sink: SpooledSink,
    destinations: Sequence[str],
    node_id: str,
    now: float,
    hold_of: Mapping[str, Hold] | None = None,
) -> tuple[CommitResult, float | None]:
    """The instance row (an inline data set inside it) and one delivery per destination
    (held for one in ``hold_of``, pending otherwise), and the earliest release time its
    arrivals set. With ``record.digest``, destinations that still have an identical
    instance held, pending or leased are dropped (see :class:`CommitResult`)."""
    received = record.received_at if record.received_at is not None else now
    dests = list(dict.fromkeys(destinations))
    dropped: list[str] = []
    if record.digest is not None:
        same = await _identical_queued(conn, record, dests)
        if same and (not dests or len(same) == len(dests)):
            return CommitResult(next(iter(same.values())), False, (), tuple(dests)), None
        dropped = [dest for dest in dests if dest in same]
        dests = [dest for dest in dests if dest not in same]
    await fetch(
        conn, _INSERT_INSTANCE, _instance_row(ident, record, sink, dests, node_id, received)
    )
    study, series = record.study_instance_uid, record.series_instance_uid
    release_at = await pg_holds.insert_deliveries(
        conn,
        [pg_holds.NewDelivery(ident, d, received, study, series) for d in dests],
        hold_of or {},
        now,
    )
    return CommitResult(ident, True, tuple(dests), tuple(dropped)), release_at


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
    rows = await fetch(
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
        "  i.received_at, d.due_at, i.study_uid",
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
                    study_uid=r[13],
                ),
                r[1],
            )
        )
    return out


async def next_due(conn: Conn, destination: str) -> float | None:
    """Earliest ``due_at`` of the destination's pending deliveries (after a lease that
    took fewer than asked: what is left, so idle workers do not spin)."""
    rows = await fetch(
        conn,
        "SELECT min(due_at) FROM delivery WHERE destination = %s AND state = 'pending'",
        (destination,),
    )
    return None if not rows or rows[0][0] is None else float(rows[0][0])


async def renew(conn: Conn, items: Sequence[tuple[int, int, float]]) -> set[int]:
    """Extend leases (id, token, seconds) still held with that token to the database's
    now() + seconds; returns the ids renewed (the others were taken over or ended)."""
    await lock_deliveries(conn, [i[0] for i in items])
    rows = await fetch(
        conn,
        "UPDATE delivery d SET lease_until = now() + make_interval(secs => t.secs)"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::float8[]) AS t(id, token, secs)"
        " WHERE d.id = t.id AND d.state = 'leased' AND d.lease_token = t.token"
        " RETURNING d.id",
        ([i[0] for i in items], [i[1] for i in items], [i[2] for i in items]),
    )
    return {r[0] for r in rows}


async def lock_deliveries(conn: Conn, delivery_ids: Sequence[int]) -> None:
    """Lock delivery rows in id order before changing several: every transaction that
    waits for more than one delivery row takes them in the same order (no deadlock
    between, say, a node's lease renewal and its own outcomes)."""
    await fetch(
        conn,
        "SELECT id FROM delivery WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (sorted(delivery_ids),),
    )


async def lock_instances_of(conn: Conn, delivery_ids: Sequence[int]) -> list[str]:
    """Lock (in id order) the instance rows of these deliveries; returns their ids."""
    rows = await fetch(
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
    await lock_instances_of(conn, [t[0] for t in tokens])
    await lock_deliveries(conn, [t[0] for t in tokens])
    rows = await fetch(
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
    rows = await fetch(
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
    rows = await fetch(
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
    await lock_deliveries(conn, [t[0] for t in tokens])
    rows = await fetch(
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
    rows = await fetch(
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
        for r in await fetch(
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
        await fetch(
            conn,
            "UPDATE instance SET done_at = %s WHERE id = ANY(%s) AND done_at IS NULL",
            (now, done),
        )
    return await remove_instances(conn, sorted(gone))


async def remove_instances(conn: Conn, instance_ids: Sequence[str]) -> Removed:
    if not instance_ids:
        return []
    ids = list(instance_ids)
    await fetch(conn, "DELETE FROM delivery WHERE instance_id = ANY(%s)", (ids,))
    rows = await fetch(
        conn, "DELETE FROM instance WHERE id = ANY(%s) RETURNING id, spooled", (ids,)
    )
    return [(r[0], bool(r[1])) for r in rows]


async def housekeeping(conn: Conn, now: float, retention: float, limit: int = 1000) -> Removed:
    """Remove done instances whose retention has passed (rows another node is removing
    right now are skipped, not waited for)."""
    rows = await fetch(
        conn,
        "SELECT id FROM instance WHERE done_at IS NOT NULL AND done_at <= %s"
        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
        (now - retention, limit),
    )
    return await remove_instances(conn, [r[0] for r in rows])


async def spooled_ids(conn: Conn) -> list[str]:
    """Every instance whose data set is a spool file."""
    return [r[0] for r in await fetch(conn, "SELECT id FROM instance WHERE spooled")]


#: the last_error of a delivery whose instance's spool file was found missing
SPOOL_FILE_MISSING = "spool file missing"


async def fail_missing(conn: Conn, instance_ids: Sequence[str], now: float) -> list[TupleRow]:
    """Fail every delivery still to send of these instances (their spool file is gone:
    no retry can bring it back). Returns (instance id, SOP Instance UID) of each
    instance that had one; an instance another node removed meanwhile has none."""
    rows = await fetch(
        conn,
        "SELECT id FROM delivery WHERE instance_id = ANY(%s)"
        " AND state IN ('pending', 'leased', 'held')",
        (list(instance_ids),),
    )
    await lock_deliveries(conn, [r[0] for r in rows])
    return await fetch(
        conn,
        "WITH failed AS (UPDATE delivery SET state = 'failed', last_error = %s,"
        " lease_until = NULL, lease_token = NULL, leased_by = NULL, hold_key = NULL,"
        " updated_at = %s WHERE id = ANY(%s) AND state IN ('pending', 'leased', 'held')"
        " RETURNING instance_id)"
        " SELECT DISTINCT i.id, i.sop_instance_uid FROM failed f JOIN instance i"
        " ON i.id = f.instance_id ORDER BY i.id",
        (SPOOL_FILE_MISSING, now, [r[0] for r in rows]),
    )


async def known_spooled(conn: Conn, ids: Sequence[str]) -> set[str]:
    """Which of these ids have a row naming a spool file."""
    rows = await fetch(conn, "SELECT id FROM instance WHERE spooled AND id = ANY(%s)", (list(ids),))
    return {r[0] for r in rows}

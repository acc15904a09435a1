"""The cluster queue's SQL for holds: held deliveries and their group on commit, and
releasing groups (when due, or on the operator's word). The timing is
:mod:`router.holds`; this module stores what it computes, the same rows as the SQLite
queue's (router/store/sqlite/holds.py), safe with several nodes:

- an arrival is one ``INSERT ... ON CONFLICT DO UPDATE`` of the group's row, inside the
  statement that inserts the deliveries (no extra round trip on the commit path). The
  upsert locks the row, so two nodes committing instances of one series at once both
  move its release time (``greatest``/``least`` on the stored values: no arrival lost,
  a node whose clock is behind never moves it earlier). Rows are upserted in
  (destination, key) order, the order every locker of several hold rows uses;
- a due group is released by whichever node gets there first: its row is taken with
  ``FOR UPDATE SKIP LOCKED`` (a row another node is releasing, or an arrival is moving,
  is skipped, never waited for), then in the same transaction its held deliveries become
  pending with consecutive due times in the send order and the row is deleted. A
  commit that waited for the row lock finds it gone and opens a new group; its
  deliveries were not yet visible to the release, so they stay held in that group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from router import holds
from router.holds import Hold, HoldUntil, Release
from router.store.hold_release import Released, due_times
from router.store.postgres import ops
from router.store.records import Filter, State

__all__ = [
    "NewDelivery",
    "check_release_filter",
    "drop_empty_groups",
    "group_key",
    "insert_deliveries",
    "next_release",
    "release_due",
    "release_filtered",
]

#: Groups released per transaction by the timer (it loops while there are more).
BATCH = 500


def group_key(hold: Hold, ident: str, study_uid: str | None, series_uid: str | None) -> str:
    """The group of a new held delivery. An instance without the UID its hold needs is
    a group of its own (keyed by its id), so it is sent after ``quiet`` like any other."""
    return holds.group_key(hold, study_uid, series_uid) or f"instance:{ident}"


@dataclasses.dataclass(frozen=True, slots=True)
class NewDelivery:
    instance_id: str
    destination: str
    created_at: float
    study_uid: str | None
    series_uid: str | None


_UPSERT_HOLD = (
    "INSERT INTO hold AS g (destination, key, until, quiet, max_wait, first_at, last_at,"
    " release_at, reason)"
    " SELECT t.d, t.k, t.u, t.q, t.m, %(now)s, %(now)s, %(now)s + least(t.q, t.m),"
    "  CASE WHEN t.q >= t.m THEN 'max_wait' ELSE 'quiet' END"
    " FROM unnest(%(hd)s::text[], %(hk)s::text[], %(hu)s::text[], %(hq)s::float8[],"
    "  %(hm)s::float8[]) AS t(d, k, u, q, m) ORDER BY t.d, t.k"
    " ON CONFLICT (destination, key) DO UPDATE SET until = excluded.until,"
    "  quiet = excluded.quiet, max_wait = excluded.max_wait,"
    "  last_at = greatest(g.last_at, excluded.last_at),"
    "  release_at = least(greatest(g.last_at, excluded.last_at) + excluded.quiet,"
    "   g.first_at + excluded.max_wait),"
    "  reason = CASE WHEN greatest(g.last_at, excluded.last_at) + excluded.quiet"
    "   >= g.first_at + excluded.max_wait THEN 'max_wait' ELSE 'quiet' END"
    " RETURNING g.release_at"
)

_INSERT_DELIVERIES = (
    "INSERT INTO delivery (instance_id, destination, state, due_at, created_at,"
    " updated_at, hold_key) SELECT t.i, t.d, t.s, %(now)s, t.c, %(now)s, t.k"
    " FROM unnest(%(di)s::text[], %(dd)s::text[], %(ds)s::text[], %(dc)s::float8[],"
    "  %(dk)s::text[]) AS t(i, d, s, c, k)"
)


async def insert_deliveries(
    conn: ops.Conn, rows: Sequence[NewDelivery], hold_of: Mapping[str, Hold], now: float
) -> float | None:
    """One delivery per row: ``held`` in its group for a destination with a hold (the
    group opened or moved in the same statement), ``pending`` otherwise. Returns the
    earliest release time the arrivals set (for the node's timer), or None."""
    if not rows:
        return None
    args: dict[str, Any] = {"now": now, "di": [], "dd": [], "ds": [], "dc": [], "dk": []}
    groups: dict[tuple[str, str], Hold] = {}
    for r in rows:
        hold = hold_of.get(r.destination)
        key = None
        if hold is not None:
            key = group_key(hold, r.instance_id, r.study_uid, r.series_uid)
            groups[(r.destination, key)] = hold
        args["di"].append(r.instance_id)
        args["dd"].append(r.destination)
        args["ds"].append(State.PENDING.value if key is None else State.HELD.value)
        args["dc"].append(r.created_at)
        args["dk"].append(key)
    if not groups:
        await ops.fetch(conn, _INSERT_DELIVERIES, args)
        return None
    ordered = sorted(groups.items())  # one row each (an upsert changes a row once)
    args["hd"] = [d for (d, _), _ in ordered]
    args["hk"] = [k for (_, k), _ in ordered]
    args["hu"] = [h.until.value for _, h in ordered]
    args["hq"] = [h.quiet for _, h in ordered]
    args["hm"] = [h.max_wait for _, h in ordered]
    found = await ops.fetch(
        conn,
        f"WITH h AS ({_UPSERT_HOLD}), d AS ({_INSERT_DELIVERIES} RETURNING 1)"
        " SELECT (SELECT min(release_at) FROM h), (SELECT count(*) FROM d)",
        args,
    )
    value = found[0][0] if found else None
    return None if value is None else float(value)


async def next_release(conn: ops.Conn) -> float | None:
    """When the next group is due (as far as this transaction sees), or None."""
    rows = await ops.fetch(conn, "SELECT min(release_at) FROM hold")
    return None if not rows or rows[0][0] is None else float(rows[0][0])


Group = tuple[str, str, str, str]  # (destination, key, until, reason)


async def _release_groups(conn: ops.Conn, groups: Sequence[Group], now: float) -> list[Released]:
    """Release ``groups`` (their rows locked by the caller): held deliveries to pending
    in the send order after the destination's fresh pending work, rows deleted."""
    if not groups:
        return []
    dests = [g[0] for g in groups]
    keys = [g[1] for g in groups]
    rows = await ops.fetch(
        conn,
        "SELECT d.id, d.destination, d.hold_key, i.series_number, i.instance_number,"
        " i.received_at FROM delivery d JOIN instance i ON i.id = d.instance_id"
        " WHERE d.state = 'held' AND (d.destination, d.hold_key) IN"
        "  (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY d.id FOR UPDATE OF d",
        (dests, keys),
    )
    await ops.fetch(
        conn,
        "DELETE FROM hold WHERE (destination, key) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))",
        (dests, keys),
    )
    by_group: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        by_group.setdefault((r[1], r[2]), []).append(r)
    order: dict[str, list[int]] = {}  # destination -> delivery ids in send order
    released: list[Released] = []
    for dest, key, until, reason in groups:
        members = by_group.get((dest, key), [])
        members.sort(key=lambda r: holds.send_order(r[3], r[4], r[5], r[0]))
        order.setdefault(dest, []).extend(r[0] for r in members)
        if members:
            released.append(Released(dest, until, key, len(members), reason))
    ids: list[int] = []
    dues: list[float] = []
    for dest, members_ids in order.items():
        if not members_ids:
            continue
        # after the fresh work already waiting for this destination (earlier releases),
        # not after its retries: those wait for their own due time
        tail = await ops.fetch(
            conn,
            "SELECT max(due_at) FROM delivery WHERE destination = %s AND state = 'pending'"
            " AND attempts = 0",
            (dest,),
        )
        ids += members_ids
        dues += due_times(now, len(members_ids), tail[0][0] if tail else None)
    if ids:
        await ops.fetch(
            conn,
            "UPDATE delivery d SET state = 'pending', due_at = t.due, hold_key = NULL,"
            " updated_at = %s FROM unnest(%s::bigint[], %s::float8[]) AS t(id, due)"
            " WHERE d.id = t.id",
            (now, ids, dues),
        )
    return released


async def release_due(conn: ops.Conn, now: float) -> tuple[list[Released], bool]:
    """Release up to :data:`BATCH` groups whose release time has come (earliest first),
    skipping those another transaction holds. Returns them and whether more may be due."""
    groups = await ops.fetch(
        conn,
        "SELECT destination, key, until, reason FROM hold WHERE release_at <= %s"
        " ORDER BY release_at, destination, key LIMIT %s FOR UPDATE SKIP LOCKED",
        (now, BATCH),
    )
    picked = [(g[0], g[1], g[2], g[3]) for g in groups]
    return await _release_groups(conn, picked, now), len(picked) == BATCH


def check_release_filter(f: Filter) -> None:
    """ValueError unless ``f`` can select hold groups (no other state, no limit)."""
    if f.state not in (None, State.HELD):
        raise ValueError("release applies to held deliveries only")
    if f.limit is not None:
        raise ValueError("release takes whole series or studies: no limit")


async def release_filtered(
    conn: ops.Conn, where: str, args: Sequence[Any], now: float
) -> list[Released]:
    """Release now (reason operator) the groups holding a delivery matching ``where``
    (over ``delivery d JOIN instance i``): each whole, in its send order. Waits for rows
    another transaction holds (in (destination, key) order, as every locker does)."""
    pairs = await ops.fetch(
        conn,
        "SELECT DISTINCT d.destination, d.hold_key FROM delivery d"
        f" JOIN instance i ON i.id = d.instance_id WHERE d.state = 'held' AND {where}"
        " ORDER BY 1, 2",
        args,
    )
    if not pairs:
        return []
    dests = [p[0] for p in pairs]
    keys = [p[1] for p in pairs]
    until = {
        (r[0], r[1]): r[2]
        for r in await ops.fetch(
            conn,
            "SELECT destination, key, until FROM hold WHERE (destination, key) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))"
            " ORDER BY destination, key FOR UPDATE",
            (dests, keys),
        )
    }
    # a held delivery without its row (cannot happen, but must never stay stuck)
    groups = [
        (d, k, until.get((d, k), HoldUntil.SERIES.value), Release.OPERATOR.value)
        for d, k in zip(dests, keys, strict=True)
    ]
    return await _release_groups(conn, groups, now)


async def drop_empty_groups(conn: ops.Conn, touched: Sequence[tuple[str, str]]) -> None:
    """After a purge deleted held deliveries of ``touched`` groups: delete the rows of
    those left without any. A row another transaction holds is skipped: an arrival
    (then the group is not empty) or a release (which deletes it)."""
    if not touched:
        return
    pairs = sorted(set(touched))
    locked = await ops.fetch(
        conn,
        "SELECT destination, key FROM hold WHERE (destination, key) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " ORDER BY destination, key FOR UPDATE SKIP LOCKED",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    )
    if not locked:
        return
    # a statement of its own: it sees every arrival committed before the lock was taken
    await ops.fetch(
        conn,
        "DELETE FROM hold h WHERE (h.destination, h.key) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[])) AND NOT EXISTS"
        " (SELECT 1 FROM delivery d WHERE d.state = 'held' AND d.destination = h.destination"
        "  AND d.hold_key = h.key)",
        ([r[0] for r in locked], [r[1] for r in locked]),
    )

"""The SQLite queue's SQL for holds: a held delivery's group on commit, and releasing
groups (when due, or on the operator's word). The timing is :mod:`router.holds`; this
module only stores what it computes.

A destination with a hold gets its deliveries as ``held`` with ``hold_key`` = the group
(series or study UID). Each open group has one ``hold`` row (first and latest arrival,
release time and the limit that set it), created or moved by every arrival in the
commit's own transaction. Releasing a group, in one transaction: its held deliveries
become ``pending`` with consecutive ``due_at`` values in the send order
(:func:`router.holds.send_order`), so the lease order (``due_at``, then id) sends them in
that order, and its row is deleted, so a later instance of the series opens a new group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from router import holds
from router.holds import Hold, HoldGroup, HoldUntil, Release
from router.store.hold_release import Released, due_times, log_released
from router.store.records import State

if TYPE_CHECKING:  # core commits through this module
    from router.store.sqlite.core import Core, Delta

__all__ = [
    "Released",
    "arrive",
    "drop_empty_groups",
    "group_key",
    "groups_of",
    "log_released",
    "next_release",
    "release_due",
    "release_groups",
]

HELD = State.HELD.value
PENDING = State.PENDING.value


def group_key(hold: Hold, ident: str, study_uid: str | None, series_uid: str | None) -> str:
    """The group of a new held delivery. An instance without the UID its hold needs is
    a group of its own (keyed by its id), so it is sent after ``quiet`` like any other."""
    return holds.group_key(hold, study_uid, series_uid) or f"instance:{ident}"


def arrive(core: Core, destination: str, hold: Hold, key: str, now: float, d: Delta) -> None:
    """An instance of group ``key`` arrived for ``destination``: open or move its group."""
    conn = core.conn
    row = conn.execute(
        "SELECT first_at, last_at, release_at FROM hold WHERE destination = ? AND key = ?",
        (destination, key),
    ).fetchone()
    group = None if row is None else HoldGroup(key, row[0], row[1], row[2])
    new = holds.arrive(hold, group, key, now)
    conn.execute(
        "INSERT INTO hold (destination, key, until, first_at, last_at, release_at, reason)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (destination, key) DO UPDATE SET"
        " last_at = excluded.last_at, release_at = excluded.release_at,"
        " reason = excluded.reason",
        (
            destination,
            key,
            hold.until.value,
            new.first_at,
            new.last_at,
            new.release_at,
            new.reason(hold).value,
        ),
    )
    d.hold_arrived(new.release_at)


def next_release(conn: sqlite3.Connection) -> float | None:
    """When the next group is due (the one timer the queue sets), or None."""
    value = conn.execute("SELECT min(release_at) FROM hold").fetchone()[0]
    return None if value is None else float(value)


def release_groups(core: Core, groups: Sequence[tuple[str, str, str, str]], d: Delta) -> int:
    """Release ``groups`` ((destination, key, until, reason) each, in this order) now:
    their held deliveries go to pending in the send order, their rows are deleted.
    Returns the deliveries released."""
    conn = core.conn
    now = core.clock()
    released: dict[str, list[int]] = {}  # destination -> delivery ids in send order
    for dest, key, until, reason in groups:
        rows = conn.execute(
            "SELECT d.id, i.series_number, i.instance_number, i.received_at FROM delivery d"
            " JOIN instance i ON i.id = d.instance_id"
            " WHERE d.destination = ? AND d.hold_key = ? AND d.state = 'held'",
            (dest, key),
        ).fetchall()
        conn.execute("DELETE FROM hold WHERE destination = ? AND key = ?", (dest, key))
        rows.sort(key=lambda r: holds.send_order(r[1], r[2], r[3], r[0]))
        released.setdefault(dest, []).extend(r[0] for r in rows)
        if rows:
            d.released.append(Released(dest, until, key, len(rows), reason))
    total = 0
    for dest, ids in released.items():
        if not ids:
            continue
        # after the fresh work already waiting for this destination (earlier releases),
        # not after its retries: those wait for their own due time
        (tail,) = conn.execute(
            "SELECT max(due_at) FROM delivery WHERE destination = ? AND state = 'pending'"
            " AND attempts = 0",
            (dest,),
        ).fetchone()
        conn.executemany(
            "UPDATE delivery SET state = 'pending', due_at = ?, hold_key = NULL,"
            " updated_at = ? WHERE id = ?",
            [
                (due, now, ident)
                for due, ident in zip(due_times(now, len(ids), tail), ids, strict=True)
            ],
        )
        d.move(dest, HELD, PENDING, len(ids))
        total += len(ids)
    d.hold_reset = True
    return total


def release_due(core: Core, d: Delta) -> int:
    """Release every group whose release time has come (earliest first)."""
    groups = core.conn.execute(
        "SELECT destination, key, until, reason FROM hold WHERE release_at <= ?"
        " ORDER BY release_at, destination, key",
        (core.clock(),),
    ).fetchall()
    if not groups:
        d.hold_reset = True  # the timer's minimum was stale: read it again
        return 0
    return release_groups(core, groups, d)


def groups_of(core: Core, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
    """(destination, key, until, reason=operator) of the open groups among ``pairs``."""
    out: list[tuple[str, str, str, str]] = []
    for dest, key in pairs:
        row = core.conn.execute(
            "SELECT until FROM hold WHERE destination = ? AND key = ?", (dest, key)
        ).fetchone()
        # a held delivery without its row (cannot happen, but must never stay stuck)
        until = HoldUntil.SERIES.value if row is None else row[0]
        out.append((dest, key, until, Release.OPERATOR.value))
    return out


def drop_empty_groups(core: Core, d: Delta) -> None:
    """Delete the rows of groups left without held deliveries (after a purge)."""
    cur = core.conn.execute(
        "DELETE FROM hold WHERE NOT EXISTS (SELECT 1 FROM delivery d WHERE d.state = 'held'"
        " AND d.destination = hold.destination AND d.hold_key = hold.key)"
    )
    if cur.rowcount:
        d.hold_reset = True

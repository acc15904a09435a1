"""Upkeep of the cluster's storage and connections, apart from the queue's own work.

Sweeping files no row names (a node that died between a commit and an unlink, or mid
receipt), the settings every pooled connection gets, and the checks of the connection
string and node name. These run on any node and are safe with several at once: a file is
removed only when no row names it and it is old enough that no commit can be naming it
right now.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from router.store.postgres import ops
from router.store.postgres.errors import DatabaseUnavailable
from router.store.postgres.schema import migrate
from router.store.spool import Spool

__all__ = [
    "NODE_ID",
    "check_conninfo",
    "check_settings",
    "configure",
    "default_node_id",
    "sweep_orphans",
    "sweep_partials",
]

log = logging.getLogger("router.store.postgres")

#: a short transaction on a pooled connection (the queue's ``_tx(durable=False)``)
Tx = Callable[[], AbstractAsyncContextManager[ops.Conn]]

NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_conninfo(conninfo: str) -> str:
    """``conninfo`` when libpq can parse it; ValueError (without the password) if not."""
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as e:
        raise ValueError(f"queue.dsn: not a PostgreSQL connection string or URL: {e}") from None
    return conninfo


def default_node_id() -> str:
    """The host name, as the node's name in leases and logs."""
    return socket.gethostname().split(".")[0] or "router"


async def sweep_orphans(tx: Tx, spool: Spool, min_age: float) -> int:
    """Remove spool files that no row names and that are older than ``min_age``
    seconds (file time): left by a node that died between a commit removing rows
    and its unlink, or by a commit whose outcome was uncertain. Younger files are
    left alone: another node may be committing the row that names them."""
    cutoff = time.time() - min_age
    candidates = await anyio.to_thread.run_sync(_old_spool_ids, spool, cutoff)
    gone: list[str] = []
    for i in range(0, len(candidates), 1000):
        chunk = candidates[i : i + 1000]
        async with tx() as conn:
            known = await ops.known_spooled(conn, chunk)
        gone += [ident for ident in chunk if ident not in known]
    if gone:
        await anyio.to_thread.run_sync(spool.remove_all, gone)
        log.info("removed %d spool files without queue rows", len(gone))
    return len(gone)


async def fail_missing_files(tx: Tx, spool: Spool, now: float) -> int:
    """At start: fail loudly the deliveries of instances whose spool file is gone, as
    the SQLite queue does. A row is committed only once its file is durable, and a
    file is removed only after its row, so a row naming no file means data lost
    outside the router (a restored backup, a file system error, a hand): said once,
    in the log and as dead letters an operator sees, rather than as retries that can
    never succeed. Returns the deliveries failed."""
    async with tx() as conn:
        ids = await ops.spooled_ids(conn)
    missing = await anyio.to_thread.run_sync(_missing_files, spool, ids)
    if not missing:
        return 0
    failed = 0
    for i in range(0, len(missing), 1000):
        async with tx() as conn:
            lost = await ops.fail_missing(conn, missing[i : i + 1000], now)
        for ident, uid in lost:
            log.error(
                "spool file of instance %s (SOP instance %s) is missing: its deliveries fail",
                ident,
                uid,
            )
        failed += len(lost)
    return failed


def _missing_files(spool: Spool, ids: list[str]) -> list[str]:
    return [ident for ident in ids if not spool.path_for(ident).exists()]


async def check_spool_files(tx: Tx, spool: Spool, now: float) -> int:
    """:func:`fail_missing_files`, with a database or disk failure logged (the node
    starts anyway; the next start checks again)."""
    try:
        return await fail_missing_files(tx, spool, now)
    except (DatabaseUnavailable, psycopg.Error, OSError) as e:
        log.warning("checking spool files against the queue failed: %s", e)
        return 0


async def sweep(tx: Tx, spool: Spool, orphan_age: float) -> None:
    """Spool files no row names and partial receipts nobody writes to, older than
    ``orphan_age``; a failure is logged and the next sweep tries again."""
    try:
        await sweep_orphans(tx, spool, orphan_age)
        await sweep_partials(spool.tmp_dir, orphan_age)
    except (DatabaseUnavailable, psycopg.Error, OSError) as e:
        log.warning("sweeping orphan spool files failed: %s", e)


async def sweep_every(interval: float, tx: Tx, spool: Spool, orphan_age: float) -> None:
    """:func:`sweep` every ``interval`` seconds, after the one at start."""
    while True:
        await anyio.sleep(interval)
        await sweep(tx, spool, orphan_age)


async def housekeep_every(interval: float, housekeeping: Callable[[], Awaitable[int]]) -> None:
    """The retention's removals every ``interval`` seconds; a database failure is
    logged and the next round tries again."""
    while True:
        await anyio.sleep(interval)
        try:
            await housekeeping()
        except (DatabaseUnavailable, psycopg.Error) as e:
            log.warning("queue housekeeping failed: %s", e)


async def sweep_partials(tmp_dir: Path, min_age: float) -> int:
    """Remove partial receipts of the other nodes (``tmp/<node>/``) not written to for
    ``min_age`` seconds: left by a node that died mid-ingest and has not restarted
    (a node clears its own at start). A receipt in progress is written to all the
    time, so it is never that old."""
    cutoff = time.time() - min_age
    n = await anyio.to_thread.run_sync(_sweep_old_partials, tmp_dir, cutoff)
    if n:
        log.info("removed %d partial receipts left by nodes that stopped", n)
    return n


def _sweep_old_partials(own: Path, cutoff: float) -> int:
    n = 0
    for node_dir in own.parent.iterdir():
        if node_dir == own or not node_dir.is_dir() or node_dir.is_symlink():
            continue
        for entry in os.scandir(node_dir):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    n += 1
            except FileNotFoundError:
                pass
    return n


def _old_spool_ids(spool: Spool, cutoff: float) -> list[str]:
    old: list[str] = []
    for ident in spool.iter_ids():
        try:
            if spool.path_for(ident).stat().st_mtime < cutoff:
                old.append(ident)
        except FileNotFoundError:
            pass
    return old


async def configure(conn: ops.Conn) -> None:
    """Every pooled connection: commits wait for the WAL flush unless a transaction
    says otherwise (a server default of ``off`` is overridden; ``local`` and stronger
    settings such as ``remote_apply`` are kept)."""
    cur = await conn.execute(b"SHOW synchronous_commit")
    row = await cur.fetchone()
    if row is not None and row[0] == "off":
        await conn.execute(b"SET synchronous_commit = on")


async def check_settings(conn: ops.Conn) -> None:
    cur = await conn.execute(b"SHOW fsync")
    row = await cur.fetchone()
    if row is not None and row[0] != "on":
        log.error(
            "the queue database runs with fsync=%s: acknowledged instances can be lost"
            " in a crash of the database server; set fsync = on",
            row[0],
        )


def make_pool(conninfo: str, size: int, timeout: float, name: str) -> AsyncConnectionPool[ops.Conn]:
    """The node's connection pool (not opened): autocommit connections, checked when
    taken, configured by :func:`configure`."""
    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "connect_timeout": math.ceil(timeout)},
        configure=configure,
        check=AsyncConnectionPool.check_connection,
        timeout=timeout,
        name=name,
        open=False,
    )


async def wait_for_database(conninfo: str, timeout: float, trouble: Callable[[str], None]) -> None:
    """Until a connection succeeds: one warning per failure, retried with back-off (up
    to 10 s); ``trouble`` gets each reason (``/readyz`` says why the node is not ready)."""
    delay = 0.5
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, connect_timeout=math.ceil(timeout)
            )
        except psycopg.OperationalError as e:
            problem = one_line(e)
            trouble(problem)
            log.warning("waiting for the queue database (retry in %gs): %s", delay, problem)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        await conn.close()
        return


async def prepare(conn: ops.Conn, node_id: str, now: float) -> None:
    """At a node's start: the schema migrated, the server's settings checked, and this
    node's leases from its previous run back to pending."""
    applied = await migrate(conn)
    if applied:
        log.info("queue schema migrated to version %d", applied[-1])
    await check_settings(conn)
    async with conn.transaction():
        back = await ops.release_node(conn, node_id, now)
    if back:
        log.info("%d leases of this node's previous run back to pending", len(back))


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__

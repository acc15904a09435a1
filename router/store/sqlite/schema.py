"""The SQLite queue's schema as numbered migrations, the connection settings, and the
storage lock.

``PRAGMA user_version`` records the version a database is at. Opening it for writing
applies every migration above that version, each in its own transaction together with
the new version number, so an upgrade interrupted by a crash resumes at the next open.
A database newer than :data:`VERSION` (written by a newer router) is refused: this code
cannot know what the newer columns mean. Read-only opens (the operator's ``status`` and
``list`` next to a running router) never migrate.

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
             digest TEXT,                  -- BLAKE2b of the data set (version 2)
             series_uid TEXT,              -- version 3: the hold group and send order
             series_number INTEGER, instance_number INTEGER)
    delivery(id INTEGER PRIMARY KEY, instance_id TEXT REFERENCES instance(id),
             destination TEXT, state TEXT,  -- a delivery State
             attempts INTEGER,              -- attempts started (counted at lease time)
             due_at REAL, lease_until REAL, last_status INTEGER, last_error TEXT,
             created_at REAL, updated_at REAL,
             hold_key TEXT,                 -- version 3: the hold group of a held delivery
             UNIQUE(instance_id, destination))
    hold(destination TEXT, key TEXT,        -- version 3: one row per open hold group
         until TEXT,                        -- series_complete | study_complete
         first_at REAL, last_at REAL,       -- its first and latest arrival
         release_at REAL,                   -- when it goes out (router.holds.arrive)
         reason TEXT,                       -- quiet | max_wait: the limit release_at is
         PRIMARY KEY (destination, key))
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from router.store.records import RouterRunning, SchemaError, StoreError

DB_NAME = "queue.db"
LOCK_NAME = "router.lock"

_V1 = """
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
"""


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    """The data set digest for ``duplicates: drop_identical``. Routers before numbered
    migrations added the column at version 1 already: then only the index is new."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(instance)")}
    if "digest" not in columns:
        conn.execute("ALTER TABLE instance ADD COLUMN digest TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS instance_digest ON instance(sop_instance_uid, digest)"
        " WHERE digest IS NOT NULL"
    )


_DELIVERY_V3 = """
CREATE TABLE delivery_v3 (
    id INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instance(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'leased', 'delivered', 'failed', 'held')),
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    hold_key TEXT,
    UNIQUE (instance_id, destination)
)
"""

_DELIVERY_COLUMNS_V1 = (
    "id, instance_id, destination, state, attempts, due_at, lease_until, last_status,"
    " last_error, created_at, updated_at"
)


def _v3(conn: sqlite3.Connection) -> None:
    """Holds: the ``held`` state (SQLite cannot change a CHECK constraint, so the
    delivery table is rebuilt: rows, ids and indexes kept), a delivery's hold group, the
    instance's series and numbers for the send order, and the open hold groups."""
    for column, kind in (
        ("series_uid", "TEXT"),
        ("series_number", "INTEGER"),
        ("instance_number", "INTEGER"),
    ):
        conn.execute(f"ALTER TABLE instance ADD COLUMN {column} {kind}")
    conn.execute(_DELIVERY_V3)
    conn.execute(
        f"INSERT INTO delivery_v3 ({_DELIVERY_COLUMNS_V1})"
        f" SELECT {_DELIVERY_COLUMNS_V1} FROM delivery"
    )
    conn.execute("DROP TABLE delivery")  # its indexes go with it
    conn.execute("ALTER TABLE delivery_v3 RENAME TO delivery")
    conn.execute("CREATE INDEX delivery_due ON delivery(destination, state, due_at)")
    conn.execute("CREATE INDEX delivery_age ON delivery(destination, state, created_at)")
    conn.execute(
        "CREATE INDEX delivery_hold ON delivery(destination, hold_key) WHERE state = 'held'"
    )
    conn.execute(
        "CREATE TABLE hold ("
        " destination TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " until TEXT NOT NULL,"
        " first_at REAL NOT NULL,"
        " last_at REAL NOT NULL,"
        " release_at REAL NOT NULL,"
        " reason TEXT NOT NULL,"
        " PRIMARY KEY (destination, key))"
    )
    conn.execute("CREATE INDEX hold_release ON hold(release_at)")
    conn.execute("CREATE INDEX instance_series ON instance(series_uid)")


#: MIGRATIONS[n - 1] takes a database from version n - 1 to version n.
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (_v1, _v2, _v3)
#: The schema version this code reads and writes.
VERSION = len(MIGRATIONS)


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_not_newer(path: Path, version: int) -> None:
    if version > VERSION:
        raise SchemaError(
            f"{path} is at queue schema version {version}, newer than this router's "
            f"{VERSION}: it was written by a newer dicom-router; run that version on it"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database up to :data:`VERSION`; returns the version it was at."""
    start = version_of(conn)
    _check_not_newer(path, start)
    for target in range(start + 1, VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version_of(conn) < target:  # another opener may have upgraded meanwhile
                MIGRATIONS[target - 1](conn)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    return start


def connect(path: Path) -> sqlite3.Connection:
    """The read-write connection (WAL, synchronous=FULL), schema at :data:`VERSION`."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the queue database {path}: {e}") from e
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, path)
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open the queue database {path}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that never blocks a running router's writer (WAL) and
    never migrates; refuses a newer schema, reads an older one (the operator's queries
    use version 3's hold columns only when the database has them)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30.0)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the queue database {path}: {e}") from e
    try:
        version = version_of(conn)
        _check_not_newer(path, version)
        if version == 0:
            raise SchemaError(f"{path} holds no queue yet (the router has not run there)")
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open the queue database {path}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def lock_storage(storage_dir: Path) -> int:
    """Hold an exclusive lock on the storage directory (the router for its lifetime,
    the standalone administration while it changes the queue)."""
    storage_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(storage_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RouterRunning(f"another router is using {storage_dir}") from None
    return fd

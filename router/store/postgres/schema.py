"""The cluster queue's schema and its numbered migrations.

Every node runs :func:`migrate` at start. The migrations run inside one transaction that
first takes a transaction-scoped advisory lock, so nodes starting together queue up
behind the first one: it applies what is missing, the others then find nothing to do.
A migration is never edited once released; a change of schema is a new number.

Times: ``received_at``, ``due_at``, ``created_at``, ``updated_at`` and ``done_at`` are
unix seconds from the nodes' clocks (as in the SQLite queue: ``due_at`` is what the retry
policy of a node computed). ``lease_until`` alone is a ``timestamptz`` on the database's
clock: leases are taken over by comparing it with the database's ``now()``, so clock
skew between nodes cannot shorten or stretch them. A hold's ``first_at``, ``last_at`` and
``release_at`` (version 2) are unix seconds from the clocks of the nodes that committed
its instances, like ``due_at``.
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from router.store.records import SchemaError

__all__ = ["LOCK_KEY", "MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

#: Advisory lock key of the migrations (an arbitrary constant: "dicomrtr" in ASCII).
LOCK_KEY = 0x6469636F6D727472

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE SEQUENCE lease_token;
        CREATE TABLE instance (
            id text PRIMARY KEY,
            received_at double precision NOT NULL,
            sop_class_uid text NOT NULL,
            sop_instance_uid text NOT NULL,
            transfer_syntax text NOT NULL,
            study_uid text,
            calling_ae text NOT NULL DEFAULT '',
            called_ae text NOT NULL DEFAULT '',
            size bigint NOT NULL,
            data_offset integer NOT NULL,
            data bytea,
            spooled boolean NOT NULL,
            unrouted boolean NOT NULL DEFAULT false,
            done_at double precision,
            digest text,
            node_id text NOT NULL
        );
        -- DICOM pixel data hardly compresses: store it out of line without trying
        ALTER TABLE instance ALTER COLUMN data SET STORAGE EXTERNAL;
        CREATE INDEX instance_study ON instance (study_uid);
        CREATE INDEX instance_done ON instance (done_at) WHERE done_at IS NOT NULL;
        CREATE INDEX instance_unrouted ON instance (received_at) WHERE unrouted;
        CREATE INDEX instance_digest ON instance (sop_instance_uid, digest)
            WHERE digest IS NOT NULL;
        CREATE TABLE delivery (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            instance_id text NOT NULL REFERENCES instance (id),
            destination text NOT NULL,
            state text NOT NULL
                CHECK (state IN ('pending', 'leased', 'delivered', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            due_at double precision NOT NULL,
            lease_until timestamptz,
            leased_by text,
            lease_token bigint,
            last_status integer,
            last_error text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            UNIQUE (instance_id, destination),
            CHECK ((state = 'leased') = (lease_until IS NOT NULL AND lease_token IS NOT NULL))
        );
        CREATE INDEX delivery_due ON delivery (destination, state, due_at);
        CREATE INDEX delivery_lease ON delivery (destination, lease_until)
            WHERE state = 'leased';
        CREATE INDEX delivery_age ON delivery (destination, state, created_at);
        """,
    ),
    (
        2,
        # holds: a delivery 'held' in its group (hold_key), the instance's series and
        # numbers for the send order, one hold row per open group. quiet and max_wait
        # are the policy of the latest arrival, so an upsert moves the release time
        # without reading the row first (see router/store/postgres/holds.py).
        """
        ALTER TABLE delivery DROP CONSTRAINT delivery_state_check;
        ALTER TABLE delivery ADD CONSTRAINT delivery_state_check
            CHECK (state IN ('held', 'pending', 'leased', 'delivered', 'failed'));
        ALTER TABLE delivery ADD COLUMN hold_key text;
        ALTER TABLE delivery ADD CONSTRAINT delivery_hold_check
            CHECK ((state = 'held') = (hold_key IS NOT NULL));
        CREATE INDEX delivery_hold ON delivery (destination, hold_key) WHERE state = 'held';
        ALTER TABLE instance ADD COLUMN series_uid text;
        ALTER TABLE instance ADD COLUMN series_number integer;
        ALTER TABLE instance ADD COLUMN instance_number integer;
        CREATE INDEX instance_series ON instance (series_uid);
        CREATE TABLE hold (
            destination text NOT NULL,
            key text NOT NULL,
            until text NOT NULL CHECK (until IN ('series_complete', 'study_complete')),
            quiet double precision NOT NULL,
            max_wait double precision NOT NULL,
            first_at double precision NOT NULL,
            last_at double precision NOT NULL,
            release_at double precision NOT NULL,
            reason text NOT NULL CHECK (reason IN ('quiet', 'max_wait')),
            PRIMARY KEY (destination, key)
        );
        CREATE INDEX hold_release ON hold (release_at);
        """,
    ),
)

#: The newest schema version this code knows.
SCHEMA_VERSION = MIGRATIONS[-1][0]


async def schema_version(conn: AsyncConnection[TupleRow]) -> int:
    """The version the database is at (0: no schema yet)."""
    cur = await conn.execute("SELECT to_regclass('schema_migration') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migration")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: AsyncConnection[TupleRow]) -> list[int]:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the versions applied here.

    Safe to run from many connections at once (the advisory lock serialises them).
    Refuses a database whose schema is newer than this code (a node of an older release
    must not write into it).
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn)
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"the queue database has schema version {current}, newer than this"
                f" router's {SCHEMA_VERSION}: upgrade the router"
            )
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO schema_migration (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied

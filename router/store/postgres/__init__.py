"""The queue on PostgreSQL, shared by several router nodes (see docs/cluster.md)."""

from router.store.postgres.backend import PgQueue, check_conninfo, default_node_id
from router.store.postgres.errors import CommitUncertain, DatabaseUnavailable
from router.store.postgres.schema import SCHEMA_VERSION, migrate

__all__ = [
    "SCHEMA_VERSION",
    "CommitUncertain",
    "DatabaseUnavailable",
    "PgQueue",
    "check_conninfo",
    "default_node_id",
    "migrate",
]

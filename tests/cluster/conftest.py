"""Registers the PostgreSQL fixtures (see tests/pg/fixtures.py)."""

from tests.pg.fixtures import pg_dsn, pg_server

__all__ = ["pg_dsn", "pg_server"]

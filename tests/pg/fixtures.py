"""The PostgreSQL fixtures: one server per test session, a fresh schema per test.

tests/pg/conftest.py registers them; another test package that needs the server imports
them into its own conftest.py (``from tests.pg.fixtures import pg_dsn, pg_server``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg.server import PgServer, find_bindir

__all__ = ["pg_dsn", "pg_server"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's server (``kill()``/``start()`` it for crash tests; it is removed at
    the end). Skips when PostgreSQL is not installed (`make test` installs it)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A libpq DSN whose connections see a fresh, empty schema of their own."""
    return pg_server.create_schema()

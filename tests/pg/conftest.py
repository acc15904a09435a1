"""The PostgreSQL server fixtures: one server per session, one database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg.server import PgServer, find_bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
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
    """A fresh schema on the session's server, as good as a new database."""
    return pg_server.create_schema()

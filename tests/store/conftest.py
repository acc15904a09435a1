"""The ``backend`` fixture: every queue backend runs the same contract tests (see
tests/store/helpers.py to add one)."""

from __future__ import annotations

import pytest

from tests.pg.fixtures import pg_dsn, pg_server
from tests.store.helpers import BACKENDS, Backend, backend_named

__all__ = ["backend", "pg_dsn", "pg_server"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgresql":
        dsn = request.getfixturevalue("pg_dsn")
        return backend_named(request.param, dsn, request.getfixturevalue("pg_server"))
    return backend_named(request.param)

"""The ``backend`` fixture: every queue backend runs the same contract tests (see
tests/store/helpers.py to add one)."""

from __future__ import annotations

import pytest

from tests.store.helpers import BACKENDS, Backend, backend_named


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_named(request.param)

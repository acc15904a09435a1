"""Fixtures: a real Orthanc with its DICOMweb plugin (see orthanc_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.forward.stow.orthanc_server import PASSWORD, USER, Orthanc, start_orthanc, stop_orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc without authentication."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), users=None)
    yield server
    stop_orthanc(server)


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc requiring HTTP basic authentication as USER / PASSWORD."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={USER: PASSWORD})
    yield server
    stop_orthanc(server)

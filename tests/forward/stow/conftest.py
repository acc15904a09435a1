"""Fixtures: a real Orthanc with its DICOMweb plugin (see orthanc_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.config import ServerTLS
from router.tls import server_context
from tests.forward.stow.orthanc_server import PASSWORD, USER, Orthanc, start_orthanc, stop_orthanc
from tests.forward.stow.tls_proxy import TLSProxy
from tests.tls.pki import Pki, make_pki


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


@pytest.fixture(scope="session")
def stow_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("stow-pki"))


@pytest.fixture(scope="session")
def https_dicomweb(orthanc: Orthanc, stow_pki: Pki) -> Iterator[str]:
    """The DICOMweb root of `orthanc` over HTTPS (tls_proxy.py), requiring a client
    certificate signed by the test CA."""
    tls = ServerTLS(
        cert=stow_pki.server.cert, key=stow_pki.server.key, ca=stow_pki.ca, require_client_cert=True
    )
    host, port = orthanc.url.removeprefix("http://").split(":")
    with TLSProxy(server_context(tls), (host, int(port))) as proxy:
        yield f"https://127.0.0.1:{proxy.port}/dicom-web"

"""The DICOMweb kind built from a destination's config (router.forward.destination):
its TLS section and secrets reach the client, against the real Orthanc behind TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import Config
from router.forward import destination
from router.forward.dicomweb import DicomWebKind
from router.forward.kind import TransportError
from router.forward.outcome import TransportFailure
from tests.forward.stow.orthanc_server import PASSWORD, USER, Orthanc
from tests.tls.pki import Pki


def config(tmp_path: Path, web: dict[str, object]) -> Config:
    return Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path / "storage")},
            "destinations": {"web": {"dicomweb": web}},
        },
        context={"base_dir": tmp_path, "check_files": True},
    )


@pytest.mark.asyncio
async def test_https_with_the_configured_ca_and_client_certificate(
    https_dicomweb: str, stow_pki: Pki, tmp_path: Path
) -> None:
    tls = {
        "ca": str(stow_pki.ca),
        "cert": str(stow_pki.client.cert),
        "key": str(stow_pki.client.key),
    }
    cfg = config(tmp_path, {"url": https_dicomweb, "tls": tls})
    kind = destination.kind_for(cfg, cfg.destinations["web"], None)
    assert isinstance(kind, DicomWebKind)
    echo = await kind.echo()
    assert (echo.ok, echo.detail) == (True, "HTTP 200")
    assert (await destination.echo(cfg, "web")).ok

    untrusted = config(tmp_path, {"url": https_dicomweb, "tls": {"ca": str(stow_pki.other_ca)}})
    with pytest.raises(TransportError) as e:
        await destination.echo(untrusted, "web")
    assert e.value.failure is TransportFailure.CONNECT_REFUSED


@pytest.mark.asyncio
async def test_basic_auth_from_the_password_file(orthanc_auth: Orthanc, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    web = {"url": orthanc_auth.dicomweb, "auth": {"username": USER, "password_file": "pw"}}
    cfg = config(tmp_path, web)
    assert (await destination.echo(cfg, "web")).ok
    (tmp_path / "pw").write_text("wrong\n")
    echo = await destination.echo(cfg, "web")
    assert not echo.ok and echo.detail.startswith("HTTP 401")
    (tmp_path / "pw").unlink()  # gone since the check: the destination refuses us, retried
    with pytest.raises(TransportError) as e:
        await destination.echo(cfg, "web")
    assert e.value.failure is TransportFailure.REJECTED_PERMANENT

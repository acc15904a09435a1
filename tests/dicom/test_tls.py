"""DICOM over TLS: our requestor and DCMTK's echoscu against our acceptor."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from dicom_helpers import (
    VERIFICATION,
    RecordingHandler,
    config,
    raw_connect,
    run_tool,
    running,
    wait_for,
)

from router.dicom import Acceptor, ConnectError, associate

pytestmark = pytest.mark.asyncio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certificate[1]), str(certificate[0]))
    return ctx


def client_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificate[1]))
    return ctx


async def test_tls_echo_and_store(
    certificate: tuple[Path, Path], handler: RecordingHandler
) -> None:
    cfg = config(ssl_context=server_context(certificate), tls_handshake_timeout=5)
    data = b"\x08\x00\x16\x00UI\x04\x001.2\x00" * 20_000
    async with (
        running(Acceptor(cfg, handler)) as port,
        associate(
            "127.0.0.1",
            port,
            calling_ae="TLS",
            called_ae="ROUTER",
            contexts=[(VERIFICATION, ["1.2.840.10008.1.2"]), (CT, [EXPLICIT])],
            ssl_context=client_context(certificate),
        ) as assoc,
    ):
        assert await assoc.c_echo() == 0
        assert (await assoc.c_store(CT, "1.2.3", EXPLICIT, data)).status == 0
    assert handler.stored[0].path.read_bytes() == data


async def test_dcmtk_echoscu_over_tls(
    dcmtk: Path, certificate: tuple[Path, Path], handler: RecordingHandler
) -> None:
    cfg = config(ssl_context=server_context(certificate))
    async with running(Acceptor(cfg, handler)) as port:
        rc, out = await run_tool(
            ["echoscu", "+tla", "+cf", str(certificate[1]), "-aec", "ROUTER",
             "127.0.0.1", str(port)]
        )  # fmt: skip
        assert rc == 0, out


async def test_silent_tls_client_does_not_block_others(
    certificate: tuple[Path, Path], handler: RecordingHandler
) -> None:
    cfg = config(ssl_context=server_context(certificate), tls_handshake_timeout=0.5)
    kw = dict(
        calling_ae="TLS",
        called_ae="ROUTER",
        contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])],
        ssl_context=client_context(certificate),
    )
    async with running(Acceptor(cfg, handler)) as port:
        silent = await raw_connect(port)  # connects, never says a word
        plain = await raw_connect(port)
        await plain.send(b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16)  # DICOM without TLS
        async with associate("127.0.0.1", port, **kw) as assoc:  # type: ignore[arg-type]
            assert await assoc.c_echo() == 0
        await wait_for(lambda: len(handler.errors) >= 2, 5)
        assert sorted(handler.errors) == ["tls_handshake", "tls_timeout"]
        await silent.aclose()
        await plain.aclose()
        # a client that does not trust our certificate fails with a ConnectError
        with pytest.raises(ConnectError):
            await associate(
                "127.0.0.1",
                port,
                calling_ae="TLS",
                called_ae="ROUTER",
                contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])],
                ssl_context=ssl.create_default_context(),
            )

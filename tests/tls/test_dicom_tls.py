"""DICOM over TLS end to end, with a throwaway PKI made at test time and real peers:
DCMTK storescu/storescp built with TLS, pynetdicom over ssl, and the router process."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pynetdicom import AE

from router.config import ClientTLS, ServerTLS
from router.samples import write_dataset, write_many
from router.tls import client_context, server_context
from tests.integration.peers import (
    RouterProcess,
    StoreSCP,
    dataset_bytes,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)
from tests.tls.pki import Pair, Pki

pytestmark = pytest.mark.usefixtures("dcmtk")

CT = "1.2.840.10008.5.1.4.1.1.2"


def tls_client_args(pki: Pki, pair: Pair | None) -> list[str]:
    """storescu options: TLS with ``pair`` as client certificate (or anonymous TLS,
    no certificate), trusting our CA."""
    auth = ["+tls", str(pair.key), str(pair.cert), "-pw"] if pair else ["+tla"]
    return [*auth, "+cf", str(pki.ca)]


def start_tls_storescp(
    directory: Path, pki: Pki, ae_title: str = "PACS", extra: Sequence[str] = ()
) -> StoreSCP:
    """DCMTK storescp serving TLS with the server certificate; by default it requires a
    client certificate signed by our CA (DCMTK's default, -rc)."""
    return start_storescp(
        directory,
        ae_title,
        extra=[
            "+tls",
            str(pki.server.key),
            str(pki.server.cert),
            "-pw",
            "+cf",
            str(pki.ca),
            *extra,
        ],
    )


def listen_tls(pki: Pki, *, require_client_cert: bool = False) -> dict[str, Any]:
    tls: dict[str, Any] = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    if require_client_cert:
        tls |= {"ca": str(pki.ca), "require_client_cert": True}
    return {"tls": tls, "tls_handshake_timeout": "30s"}


def dest_tls(pki: Pki, scp: StoreSCP, ca: Path | None = None) -> dict[str, Any]:
    return {
        "ae_title": scp.ae_title,
        "host": "127.0.0.1",
        "port": scp.port,
        "tls": {
            "ca": str(ca or pki.ca),
            "cert": str(pki.client.cert),
            "key": str(pki.client.key),
        },
    }


def uids(paths: Sequence[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def delivered(router: RouterProcess, destination: str) -> float:
    return router.metric(
        "dicom_router_forwarded_instances_total", destination=destination, outcome="delivered"
    )


# -- the profile itself ---------------------------------------------------------------


def test_contexts_follow_the_bcp195_profile(pki: Pki) -> None:
    server = server_context(
        ServerTLS(cert=pki.server.cert, key=pki.server.key, ca=pki.ca, require_client_cert=True)
    )
    client = client_context(ClientTLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key))
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        for cipher in ctx.get_ciphers():
            if cipher["protocol"] == "TLSv1.3":
                continue  # every TLS 1.3 suite is AEAD with forward secrecy
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
            assert cipher["aead"], cipher["name"]
            assert cipher["auth"] in ("auth-rsa", "auth-ecdsa"), cipher["name"]
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    optional = server_context(ServerTLS(cert=pki.server.cert, key=pki.server.key, ca=pki.ca))
    assert optional.verify_mode == ssl.CERT_OPTIONAL


def test_listener_prefers_tls13_and_refuses_weak_tls12_suites(pki: Pki, tmp_path: Path) -> None:
    """Against the router's listener: TLS 1.3 is negotiated by a modern client, TLS 1.2
    by one capped there; one offering only CBC/SHA-1 suites on TLS 1.2 gets no session
    (TLS 1.1 is in test_openssl_cli_agrees_on_the_profile: Python's ssl refuses it)."""
    router = write_config(tmp_path, {}, rules=[], listen=listen_tls(pki))
    with running(router):

        def handshake(ctx: ssl.SSLContext) -> str | None:
            with (
                socket.create_connection(("127.0.0.1", router.port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                return tls.version()

        modern = ssl.create_default_context(cafile=str(pki.ca))
        assert handshake(modern) == "TLSv1.3"

        cbc = ssl.create_default_context(cafile=str(pki.ca))
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-RSA-AES128-SHA256:AES128-SHA:AES256-SHA")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(cbc)

        tls12 = ssl.create_default_context(cafile=str(pki.ca))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert handshake(tls12) == "TLSv1.2"


# -- through the router ---------------------------------------------------------------


def test_storescu_tls_to_router_to_storescp_tls_byte_identical(pki: Pki, tmp_path: Path) -> None:
    src = write_many(tmp_path / "src", 5, size=30_000)
    src.append(write_dataset(tmp_path / "src" / "big.dcm", 700_000))  # spilled to a file
    pacs = start_tls_storescp(tmp_path / "pacs", pki)  # requires the router's client cert
    try:
        router = write_config(tmp_path, {"pacs": dest_tls(pki, pacs)}, listen=listen_tls(pki))
        with running(router):
            res = storescu(router.port, src, extra=tls_client_args(pki, pki.client))
            assert res.returncode == 0, res.stderr
            got = pacs.wait_files(len(src))
            wait_for(lambda: delivered(router, "pacs") == len(src), 30, "deliveries")
        sent, arrived = uids(src), uids(got)
        assert sent.keys() == arrived.keys()
        for uid, path in sent.items():
            assert dataset_bytes(arrived[uid]) == dataset_bytes(path), uid
    finally:
        pacs.stop()


def _pynetdicom_store(port: int, path: Path, ctx: ssl.SSLContext) -> int:
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER", tls_args=(ctx, "127.0.0.1"))
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_store(dcmread(path))
        return int(status.Status) if status else -2
    finally:
        assoc.release()
        ae.shutdown()


def test_mutual_tls_requires_a_client_certificate_from_our_ca(pki: Pki, tmp_path: Path) -> None:
    src = write_many(tmp_path / "src", 4, size=10_000)
    pacs = start_storescp(tmp_path / "pacs", "PACS")  # plain TCP behind the router
    try:
        dest = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}}
        router = write_config(tmp_path, dest, listen=listen_tls(pki, require_client_cert=True))
        with running(router):
            # no certificate (anonymous TLS): refused
            res = storescu(router.port, src[:1], extra=tls_client_args(pki, None))
            assert res.returncode != 0
            # a certificate from another CA: refused
            res = storescu(router.port, src[1:2], extra=tls_client_args(pki, pki.stranger))
            assert res.returncode != 0
            assert router.metric("dicom_router_received_instances_total") == 0
            # a certificate signed by our CA: accepted (DCMTK)
            res = storescu(router.port, src[2:3], extra=tls_client_args(pki, pki.client))
            assert res.returncode == 0, res.stderr
            # ... and pynetdicom over ssl with its certificate (pynetdicom refused leaks
            # its SSLSocket, an unraisable warning here: DCMTK covers the refusals)
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
            assert _pynetdicom_store(router.port, src[3], ctx) == 0
            assert router.metric("dicom_router_received_instances_total") == 2
            got = pacs.wait_files(2)
        assert sorted(uids(got)) == sorted(uids([src[2], src[3]]))
    finally:
        pacs.stop()


def test_destination_with_the_wrong_ca_fails_with_a_tls_error_then_recovers(
    pki: Pki, tmp_path: Path
) -> None:
    src = write_many(tmp_path / "src", 3, size=10_000)
    pacs = start_tls_storescp(tmp_path / "pacs", pki)
    try:
        router = write_config(
            tmp_path, {"pacs": dest_tls(pki, pacs, ca=pki.other_ca)}, listen=listen_tls(pki)
        )
        with running(router):
            res = storescu(router.port, src, extra=tls_client_args(pki, pki.client))
            assert res.returncode == 0, res.stderr  # acknowledged: durable in the router
            wait_for(
                lambda: (
                    router.metric("dicom_router_forward_retries_total", destination="pacs") >= 2
                ),
                30,
                "retries after TLS failures",
            )
            assert delivered(router, "pacs") == 0
            assert pacs.files() == []
            failures = [
                line
                for line in router.log().splitlines()
                if "forward_failed" in line and '"pacs"' in line
            ]
            assert failures, router.log()
            assert all("TLS handshake" in line for line in failures), failures
            assert "CERTIFICATE_VERIFY_FAILED" in failures[0]
            assert router.metric("dicom_router_destination_up", destination="pacs") == 0
            # the operator fixes the CA; the watcher reloads; everything is delivered
            cfg = yaml.safe_load(router.config_path.read_text())
            cfg["destinations"]["pacs"]["tls"]["ca"] = str(pki.ca)
            tmp = router.config_path.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
            os.replace(tmp, router.config_path)
            assert router.proc is not None
            router.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: delivered(router, "pacs") == len(src), 60, "delivery after the fix")
        assert sorted(uids(pacs.files())) == sorted(uids(src))
    finally:
        pacs.stop()


def test_silent_tls_clients_do_not_delay_a_real_sender(pki: Pki, tmp_path: Path) -> None:
    """Connections that never send a ClientHello (or stop half way through one) sit in
    their own handshakes, bounded by tls_handshake_timeout (30 s here): a real storescu
    over TLS is served meanwhile, while they are all still connected."""
    src = write_many(tmp_path / "src", 3, size=10_000)
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    silent: list[socket.socket] = []
    try:
        dest = {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}}
        router = write_config(tmp_path, dest, listen=listen_tls(pki))
        with running(router):
            for i in range(6):
                s = socket.create_connection(("127.0.0.1", router.port), timeout=10)
                if i % 2:  # the first bytes of a TLS record, then nothing
                    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                silent.append(s)
            res = storescu(router.port, src, extra=tls_client_args(pki, pki.client))
            assert res.returncode == 0, res.stderr
            wait_for(lambda: delivered(router, "pacs") == len(src), 30, "deliveries")
            # the silent ones were not closed: the server never waited on them in turn
            for s in silent:
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(1)
    finally:
        for s in silent:
            s.close()
        pacs.stop()


def test_openssl_cli_agrees_on_the_profile(pki: Pki, tmp_path: Path) -> None:
    """An independent client (openssl s_client) negotiates TLS 1.3 with the listener
    and is refused when it insists on TLS 1.1."""
    router = write_config(tmp_path, {}, rules=[], listen=listen_tls(pki))
    with running(router):

        def s_client(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{router.port}",
                 "-CAfile", str(pki.ca), "-verify_return_error", *args],
                input="", capture_output=True, text=True, timeout=30,
            )  # fmt: skip

        ok = s_client()
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "TLSv1.3" in ok.stdout
        old = s_client("-tls1_1", "-cipher", "ALL:@SECLEVEL=0")
        assert old.returncode != 0

"""What tests/ports.py relies on, on this kernel: a reserved port refuses connections,
cannot be bound by a socket without SO_REUSEADDR, and is bound and served by the
servers the tests start on it (anyio's listeners, pynetdicom, DCMTK's storescp)."""

from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

import anyio
import pytest
from pynetdicom import AE

from tests.async_peers import storescp
from tests.ports import PortInUse, bound_port, release_reserved_ports, reserve_port, retry_in_use


def _connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_reserved_port_is_down_and_taken() -> None:
    port = reserve_port()
    assert not _connects(port)  # refused: a destination that is down
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    release_reserved_ports()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # released at the end of the test


@pytest.mark.asyncio
async def test_anyio_listener_serves_on_a_reserved_port() -> None:
    port = reserve_port()
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port):
        assert _connects(port)


def test_pynetdicom_on_a_reserved_port_and_on_port_0() -> None:
    ae = AE()
    ae.add_supported_context("1.2.840.10008.1.1")
    port = reserve_port()
    for address in (("127.0.0.1", port), ("127.0.0.1", 0)):
        server = ae.start_server(address, block=False)
        try:
            assert bound_port(server) == (address[1] or bound_port(server)) > 0
            assert _connects(bound_port(server))
        finally:
            server.shutdown()


@pytest.mark.asyncio
async def test_storescp_on_a_reserved_port(dcmtk: Path, tmp_path: Path) -> None:
    port = reserve_port()
    async with storescp(port, tmp_path / "out"):
        assert _connects(port)


def test_storescp_refuses_port_0(dcmtk: Path, tmp_path: Path) -> None:
    """Why storescp gets a reserved port rather than port 0."""
    r = subprocess.run(
        ["storescp", "-od", str(tmp_path), "0"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0 and "Invalid parameter value 0" in r.stderr + r.stdout


def test_retry_in_use_takes_a_fresh_port() -> None:
    tried: list[int] = []

    def start(port: int) -> int:
        tried.append(port)
        if len(tried) < 3:
            raise PortInUse(f"port {port}")
        return port

    assert retry_in_use(start) == tried[-1]
    assert len(set(tried)) == 3

    def never(port: int) -> int:
        raise PortInUse(f"port {port}")

    with pytest.raises(PortInUse):
        retry_in_use(never, attempts=2)

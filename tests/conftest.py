"""Fixtures shared by every test package: ports, DCMTK, sample data."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

DCMTK_TOOLS = ("storescu", "storescp", "echoscu")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def dcmtk() -> Path:
    """Directory of the DCMTK binaries; the suite fails (not skips) without them,
    because `make test` installs them."""
    found = [shutil.which(t) for t in DCMTK_TOOLS]
    if not all(found):
        pytest.fail("DCMTK is not installed: run `make test` (it installs Debian's dcmtk)")
    return Path(found[0]).parent  # type: ignore[arg-type]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "storage"
    d.mkdir()
    yield d

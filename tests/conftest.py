"""Fixtures shared by every test package: ports, DCMTK, sample data."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import release_reserved_ports

DCMTK_TOOLS = ("storescu", "storescp", "echoscu")


@pytest.fixture(autouse=True)
def _reserved_ports() -> Iterator[None]:
    """Ports reserved by a test (tests/ports.py) are held until it ends."""
    yield
    release_reserved_ports()


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

"""Router nodes of one cluster as real processes: one database, one shared storage
directory, each node with its own config, DICOM and HTTP port."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
from pydicom import dcmread

from tests.integration.peers import NODELAY_ENV, RouterProcess, write_config


def node(
    root: Path,
    name: str,
    dsn: str,
    destinations: dict[str, dict[str, Any]],
    *,
    lease: str = "3s",
    **overrides: Any,
) -> RouterProcess:
    """A node named ``name`` under ``root/name`` whose storage is ``root/shared``."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    storage = overrides.pop("storage", {})
    return write_config(
        d,
        destinations,
        node_id=name,
        queue={"backend": "postgresql", "dsn": dsn, "lease": lease},
        storage={"path": str(root / "shared"), "min_free_bytes": 0, **storage},
        **overrides,
    )


def send(port: int, files: list[Path], timeout: float = 120) -> subprocess.Popen[str]:
    """storescu -v in the background (``acknowledged`` reads its output)."""
    return subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            "CT_1",
            "-aec",
            "ROUTER",
            "--no-halt",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=NODELAY_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def acknowledged(output: str) -> list[str]:
    """The files storescu got Success for, from its -v output (a file's response
    follows its "Sending file" line)."""
    acked: list[str] = []
    current: str | None = None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def uid(path: Path | str) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def rows(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql.encode(), args).fetchall()

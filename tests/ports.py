"""Ports for the servers the tests start, without the bind-release-reuse race of a
"free port" (another process may take the port between the check and the bind).

- Our router in-process (Acceptor.serve, HttpServer.serve) and pynetdicom's AE bind
  port 0 and report the bound port: ``task_status.started(port)`` / ``server.port``,
  and `bound_port` of ``AE.start_server(("127.0.0.1", 0), block=False)``.
- A port that must be known before its server runs (DCMTK's storescp: it refuses port
  0, "Invalid parameter value 0 (underflow)"; a destination configured before it is
  up; the router as a process, whose config file the CLI reads to reach its HTTP API
  and which keeps its ports across a kill -9 and restart) is a `reserve_port`: held by
  a socket bound with SO_REUSEADDR that never listens, until the test ends. Nobody
  else can bind it meanwhile; connections to it are refused (a destination that is
  down); and a server that sets SO_REUSEADDR, as storescp, pynetdicom and anyio's
  listeners do, binds and listens on it while it is held (Linux lets sockets that all
  set SO_REUSEADDR share a port as long as only one listens). `retry_in_use` retries
  a start that still lost its port (EADDRINUSE) on a fresh one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_held: list[socket.socket] = []


def reserve_port(host: str = "127.0.0.1") -> int:
    """A TCP port held for the rest of the current test (see the module docstring)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    _held.append(s)
    return int(s.getsockname()[1])


def release_reserved_ports() -> None:
    """Called after each test by tests/conftest.py."""
    while _held:
        _held.pop().close()


def unreserved_port(host: str = "127.0.0.1") -> int:
    """A port free right now, NOT held: only for a server that can neither bind port 0
    and report it nor share a reserved port (Orthanc: started once per session, so a
    per-test reservation would not outlive it). Use it inside a retry on bind failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_port(server: Any) -> int:
    """The port a pynetdicom AssociationServer bound (started on port 0)."""
    return int(server.server_address[1])


class PortInUse(Exception):
    """A server could not bind its port (EADDRINUSE)."""


def retry_in_use(start: Callable[[int], T], attempts: int = 5) -> T:
    """``start(reserve_port())``, again on a fresh port while it raises PortInUse."""
    for _ in range(attempts - 1):
        try:
            return start(reserve_port())
        except PortInUse:
            continue
    return start(reserve_port())

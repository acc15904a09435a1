"""Helpers for router.dicom tests (a top-level module): recording handler, peers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import pytest

from router.dicom import (
    Acceptor,
    AcceptorConfig,
    AssociationInfo,
    FileSink,
    Rejection,
    Sink,
    StoreHandler,
    StoreRequest,
    associate,
)
from tests.async_peers import dcmtk_env, until

VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Stored:
    req: StoreRequest
    path: Path
    calling_ae: str


@dataclass
class RecordingHandler(StoreHandler):
    """Writes each data set to a FileSink in ``directory``; records every hook."""

    directory: Path
    stored: list[Stored] = field(default_factory=list)
    opened: list[AssociationInfo] = field(default_factory=list)
    closed: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sinks: list[FileSink] = field(default_factory=list)
    status: int = 0

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> Sink:
        sink = FileSink(self.directory)
        self.sinks.append(sink)
        return sink

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> int:
        assert isinstance(sink, FileSink)
        sink.close()
        self.stored.append(Stored(req, sink.path, info.calling_ae))
        return self.status

    def association_opened(self, info: AssociationInfo) -> None:
        self.opened.append(info)

    def association_closed(self, info: AssociationInfo, how: str) -> None:
        self.closed.append((info.id, how))

    def association_rejected(self, reason: Rejection) -> None:
        self.rejected.append(reason)

    def protocol_error(self, kind: str) -> None:
        self.errors.append(kind)


def config(port: int = 0, **kw: object) -> AcceptorConfig:
    base: dict[str, object] = dict(
        ae_title="ROUTER",
        host="127.0.0.1",
        port=port,
        max_associations=8,
        acse_timeout=10,
        network_timeout=10,
        dimse_timeout=10,
    )
    base.update(kw)
    return AcceptorConfig(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def running(acceptor: Acceptor) -> AsyncIterator[int]:
    """Run ``acceptor.serve`` in a task group; yield the bound port."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(acceptor.serve)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def echo(port: int, called_ae: str = "ROUTER", calling_ae: str = "ECHO") -> int:
    async with associate(
        "127.0.0.1",
        port,
        calling_ae=calling_ae,
        called_ae=called_ae,
        contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])],
        acse_timeout=10,
        dimse_timeout=10,
    ) as assoc:
        return await assoc.c_echo()


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until true, with a deadline."""
    await until(predicate, timeout)


async def run_tool(
    args: Sequence[str], timeout: float = 60, *, nodelay: bool = True
) -> tuple[int, str]:
    """Run a DCMTK tool with TCP_NODELAY=1 (or, ``nodelay=False``, with DCMTK's own
    default: Nagle on); return (exit code, stdout+stderr)."""
    with anyio.fail_after(timeout):
        r = await anyio.run_process(list(args), check=False, env=dcmtk_env(nodelay))
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def delayed_acks() -> int:
    """Linux's count of delayed ACKs sent (TcpExt DelayedACKs, per network namespace;
    the suite runs serially). A Nagle-on peer waits for each of them (~40 ms)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["DelayedACKs"])
    raise AssertionError("no TcpExt in /proc/net/netstat")


needs_tcp_counters = pytest.mark.skipif(
    not Path("/proc/net/netstat").exists(), reason="Linux's TCP counters are needed"
)


async def raw_connect(port: int) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp("127.0.0.1", port)


async def recv_until_closed(stream: anyio.abc.SocketStream, timeout: float = 10) -> bytes:
    """Read until the peer closes; fail if it does not within ``timeout``."""
    out = b""
    with anyio.fail_after(timeout):
        while True:
            try:
                out += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return out

"""In-process forwarding tests' peer: the router's own Acceptor with a StoreHandler
that answers chosen statuses, refuses associations or stalls; a real Queue on a temp
directory; and a Forwarder started in the test's task group."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from pydicom.uid import ExplicitVRLittleEndian

from router.config import Config
from router.dicom import (
    Acceptor,
    AcceptorConfig,
    AssociationInfo,
    Rejection,
    Sink,
    StoreHandler,
    StoreRequest,
)
from router.forward.worker import Forwarder
from router.metrics import Metrics
from router.samples import make_dataset
from router.store.queue import InstanceRecord, Lease, Queue

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = str(ExplicitVRLittleEndian)
IMPLICIT = "1.2.840.10008.1.2"


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    def abort(self) -> None:
        self.data.clear()


@dataclass
class Received:
    sop_instance_uid: str
    transfer_syntax: str
    data: bytes
    association: str


Answer = Callable[[StoreRequest], int]


@dataclass
class ScriptedHandler(StoreHandler):
    """Answers each C-STORE with ``answer(req)`` (default success); ``refuse`` rejects
    associations; ``stall`` set makes every C-STORE wait for ``release_stall``."""

    answer: Answer = lambda req: 0x0000
    refuse: Rejection | None = None
    stall: bool = False
    received: list[Received] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # SOP instance UIDs, every attempt
    release_stall: anyio.Event = field(default_factory=anyio.Event)

    def check_association(self, info: AssociationInfo) -> Rejection | None:
        return self.refuse

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> Sink:
        return MemorySink()

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> int:
        self.calls.append(req.sop_instance_uid)
        if self.stall:
            await self.release_stall.wait()
        status = self.answer(req)
        if status in (0x0000,) or 0xB000 <= status <= 0xBFFF:
            assert isinstance(sink, MemorySink)
            self.received.append(
                Received(req.sop_instance_uid, req.transfer_syntax, bytes(sink.data), info.id)
            )
        return status

    def association_opened(self, info: AssociationInfo) -> None:
        self.opened.append(info.id)

    def association_closed(self, info: AssociationInfo, how: str) -> None:
        self.closed.append(how)


@asynccontextmanager
async def acceptor(handler: ScriptedHandler, **settings: Any) -> AsyncIterator[int]:
    """The router's Acceptor as the destination (AE title PACS); yields its port."""
    acc = Acceptor(AcceptorConfig(ae_title="PACS", host="127.0.0.1", port=0, **settings), handler)
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(acc.serve)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


def config(tmp_path: Path, destinations: dict[str, dict[str, Any]]) -> Config:
    return Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path / "storage")},
            "destinations": {
                name: {"ae_title": "PACS", "host": "127.0.0.1", **d}
                for name, d in destinations.items()
            },
        }
    )


class Clock:
    """An injected wall clock: the queue's due times and the breaker read it."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def encoded(ds_ts: str = EXPLICIT, sop_class: str = CT, size: int = 2_000) -> tuple[str, bytes]:
    """(SOP instance UID, data set bytes in ``ds_ts`` without the Part-10 header)."""
    ds = make_dataset(size, sop_class_uid=sop_class, transfer_syntax=ds_ts)
    buf = io.BytesIO()
    implicit = ds_ts == IMPLICIT
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    raw = buf.getvalue()
    meta_len = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL after preamble
    return str(ds.SOPInstanceUID), raw[144 + meta_len :]


async def commit(
    q: Queue, dests: list[str], *, ts: str = EXPLICIT, sop_class: str = CT
) -> tuple[str, bytes]:
    uid, data = encoded(ts, sop_class)
    req = StoreRequest(1, sop_class, uid, ts)
    sink = q.new_sink(req)
    sink.write(data)
    await q.commit_instance(
        InstanceRecord(sop_class, uid, ts, "1.2.9", "MOD", "ROUTER"), sink, dests
    )
    return uid, data


@dataclass
class Rig:
    queue: Queue
    forwarder: Forwarder
    metrics: Metrics
    clock: Clock
    leased: list[int]


@asynccontextmanager
async def rig(
    tmp_path: Path,
    cfg: Config,
    *,
    clock: Clock | None = None,
    rand: float = 0.5,
    linger: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncIterator[Rig]:
    """A running Queue on ``tmp_path`` and a Forwarder for ``cfg``; stopped at the end.
    ``rig.leased`` records the size of every batch the forwarder leased."""
    clock = clock or Clock()
    queue = Queue(
        tmp_path / "storage",
        inline_max=cfg.storage.inline_max_bytes,
        max_queue_instances=cfg.storage.max_queue_instances,
        clock=clock,
    )
    leased: list[int] = []
    lease = queue.lease

    async def recording_lease(
        destination: str,
        limit: int,
        lease_seconds: float,
        delivered: Sequence[tuple[int, int]] = (),
    ) -> list[Lease]:
        got = await lease(destination, limit, lease_seconds, delivered)
        if got:
            leased.append(len(got))
        return got

    queue.lease = recording_lease  # type: ignore[method-assign]  # the real queue, observed
    metrics = Metrics(version="test")
    fwd = Forwarder(cfg, queue, metrics, rand=lambda: rand, clock=clock, linger=linger)
    async with anyio.create_task_group() as tg:
        await tg.start(queue.run)
        await tg.start(fwd.run)
        try:
            yield Rig(queue, fwd, metrics, clock, leased)
        finally:
            fwd.stop()
            with anyio.fail_after(10):
                await fwd.done.wait()
            tg.cancel_scope.cancel()

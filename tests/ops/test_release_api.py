"""``POST /api/queue/release`` and held deliveries in ``GET /api/queue/deliveries``, on a
real queue behind the router's HTTP server over loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from router.api import OperatorApi
from router.config import Config
from router.holds import Hold, HoldUntil
from router.http import HttpServer
from router.metrics import Metrics
from router.store.records import InstanceRecord
from router.store.sqlite import SqliteQueue
from tests.store.helpers import CT, EXPLICIT, Req, payload

pytestmark = pytest.mark.asyncio


async def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(head.encode() + b"\r\n" + data)
            out = bytearray()
            try:
                while True:
                    out += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    status = int(out.split(b" ", 2)[1])
    return status, json.loads(out.split(b"\r\n\r\n", 1)[1])


async def test_release_route_and_held_deliveries(storage: Path) -> None:
    hold = Hold(HoldUntil.SERIES, quiet=3600.0, max_wait=7200.0)
    q = SqliteQueue(storage, inline_max=4096, max_queue_instances=100, holds={"ai": hold})
    server = HttpServer("127.0.0.1", 0, Metrics(process_metrics=False), list)

    def no_config() -> Config:
        raise AssertionError("these routes do not read the config")

    OperatorApi(q, no_config, storage, storage / "router.yaml").install(server)
    async with anyio.create_task_group() as tg:
        await tg.start(q.run)
        port = await tg.start(server.serve)
        for n, series in enumerate(["1.8.1", "1.8.1", "1.8.2"]):
            sink = q.new_sink(Req(sop_instance_uid=f"1.2.3.{n}"))
            sink.write(payload(100, n))
            rec = InstanceRecord(CT, f"1.2.3.{n}", EXPLICIT, "1.9", series_instance_uid=series)
            await q.commit_instance(rec, sink, ["ai"])

        status, answer = await call(port, "GET", "/api/queue/deliveries?state=held&series=1.8.1")
        assert status == 200
        rows = answer["deliveries"]
        assert [r["state"] for r in rows] == ["held", "held"]
        assert {r["series_uid"] for r in rows} == {"1.8.1"}
        assert all(r["release_at"] is not None and r["release_reason"] == "quiet" for r in rows)

        for bad in ({"state": "pending"}, {"limit": 1}, {"serie": "1.8.1"}):
            status, answer = await call(port, "POST", "/api/queue/release", bad)
            assert status == 400, answer
            assert "error" in answer
        assert q.stats().counts == {("ai", "held"): 3}

        status, answer = await call(port, "POST", "/api/queue/release", {"series": "1.8.1"})
        assert (status, answer) == (200, {"released": 2})
        assert q.stats().counts == {("ai", "held"): 1, ("ai", "pending"): 2}
        status, answer = await call(port, "POST", "/api/queue/release", {})
        assert (status, answer) == (200, {"released": 1})
        tg.cancel_scope.cancel()

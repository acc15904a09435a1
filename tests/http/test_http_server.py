"""router.http over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.http import BadRequest, HttpServer, Request, Response, parse_head
from router.metrics import Metrics, QueueSnapshot
from tests.design_contract import DESIGN_METRICS


@asynccontextmanager
async def running(
    readiness: Callable[[], list[str]] = list,
    metrics: Metrics | None = None,
    **kwargs: Any,
) -> AsyncIterator[HttpServer]:
    """Serve on a port of the kernel's choosing (port 0); yield the server (its
    ``port`` is the bound one)."""
    server = HttpServer("127.0.0.1", 0, metrics or Metrics(), readiness, **kwargs)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        assert bound == server.port > 0
        yield server
        tg.cancel_scope.cancel()


async def raw(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data``, read the whole answer (the server closes after one response)."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            if data:
                await s.send(data)
            if half_close:
                await s.send_eof()
            out = bytearray()
            try:
                while True:
                    out += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            return bytes(out)


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    resp = await raw(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.asyncio
async def test_metrics_expose_every_design_metric() -> None:
    m = Metrics()
    m.set_destinations(["pacs"])
    m.set_snapshot_source(lambda: QueueSnapshot(storage_free_bytes=123))
    m.delivered("pacs", 0.5)
    async with running(metrics=m) as server:
        port = server.port
        status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert int(headers["content-length"]) == len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in DESIGN_METRICS:
        full = "dicom_router_" + name
        fam = families.get(full) or families.get(full.removesuffix("_total"))
        assert fam is not None, f"{full} missing from /metrics"
        if name.endswith("_total"):
            assert fam.type == "counter", full
    assert families["dicom_router_storage_free_bytes"].samples[0].value == 123
    assert families["dicom_router_delivery_latency_seconds"].type == "histogram"


@pytest.mark.asyncio
async def test_healthz() -> None:
    async with running(readiness=lambda: ["storage not writable"]) as server:
        port = server.port
        status, headers, body = await get(port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["connection"] == "close"


@pytest.mark.asyncio
async def test_readyz_ready_and_not_ready() -> None:
    problems: list[str] = []
    async with running(readiness=lambda: list(problems)) as server:
        port = server.port
        status, _, body = await get(port, "/readyz")
        assert status == 200
        problems += ["not listening on 11112", "queue not open"]
        status, _, body = await get(port, "/readyz")
        assert status == 503
        assert body == b"not listening on 11112\nqueue not open\n"


@pytest.mark.asyncio
async def test_readyz_with_a_failing_check_is_503() -> None:
    def broken() -> list[str]:
        raise OSError("disk gone")

    async with running(readiness=broken) as server:
        port = server.port
        status, _, body = await get(port, "/readyz")
    assert status == 503
    assert b"OSError" in body


@pytest.mark.asyncio
async def test_404_405_and_head() -> None:
    async with running() as server:
        port = server.port
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/metrics/extra"))[0] == 404
        status, headers, _ = await get(port, "/metrics", method="POST")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert (await get(port, "/healthz", method="DELETE"))[0] == 405
        status, headers, body = await get(port, "/healthz", method="HEAD")
        assert (status, headers["content-length"], body) == (200, "3", b"")
        # a query string does not change the route
        assert (await get(port, "/healthz?x=1"))[0] == 200


@pytest.mark.asyncio
async def test_post_with_a_body_gets_its_answer() -> None:
    async with running() as server:
        port = server.port
        resp = await raw(
            port,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000,
        )
    assert resp.startswith(b"HTTP/1.1 405 ")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\xff" * 100 + b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"GET /met rics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"G\xc3\xa9T /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n",  # incomplete, then EOF
        b"",  # connect and close
    ],
)
async def test_garbage_does_not_kill_the_server(garbage: bytes) -> None:
    async with running() as server:
        port = server.port
        resp = await raw(port, garbage)
        assert resp == b"" or resp.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 505 "))
        assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.asyncio
async def test_oversized_head_is_431() -> None:
    async with running(max_head_bytes=1024) as server:
        port = server.port
        resp = await raw(port, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 431 ")
        assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.asyncio
async def test_slow_client_times_out_with_408() -> None:
    async with running(read_timeout=0.2) as server:
        port = server.port
        resp = await raw(port, b"GET /healthz HTTP/1.1\r\n", half_close=False)
        assert resp.startswith(b"HTTP/1.1 408 ")
        assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.asyncio
async def test_client_that_vanishes_mid_request() -> None:
    async with running() as server:
        port = server.port
        for _ in range(20):
            s = await anyio.connect_tcp("127.0.0.1", port)
            await s.send(b"GET /metr")
            await s.aclose()
        assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.asyncio
async def test_extra_route_and_failing_handler() -> None:
    async def queue(request: Request) -> Response:
        return Response.json({"pending": 3, "query": request.query})

    async def boom(request: Request) -> Response:
        raise RuntimeError("bug")

    async with running() as server:
        port = server.port
        server.add_route("/api/queue", queue)
        server.add_route("/api/boom", boom)
        status, headers, body = await get(port, "/api/queue?destination=pacs")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert b'"pending": 3' in body and b"destination=pacs" in body
        assert (await get(port, "/api/boom"))[0] == 500
        assert (await get(port, "/healthz"))[0] == 200


@pytest.mark.asyncio
async def test_many_concurrent_clients() -> None:
    results: list[int] = []

    async def one(port: int) -> None:
        results.append((await get(port, "/metrics"))[0])

    async with running(max_connections=8) as server, anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(one, server.port)
    # over the connection bound a client gets a quick 503, never a hang or a crash
    assert len(results) == 50
    assert set(results) <= {200, 503}
    assert 200 in results


@pytest.mark.asyncio
async def test_port_zero_reports_the_bound_port() -> None:
    server = HttpServer("127.0.0.1", 0, Metrics(), list)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        assert bound > 0 and server.port == bound
        assert (await get(bound, "/healthz"))[0] == 200
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1", None),
        (b"HEAD /x?y=z HTTP/1.0\r\nHost: a\r\nAccept: */*", None),
        (b"GET / HTTP/3", 505),
        (b"GET / FTP/1.1", 400),
        (b"GET  / HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\n: empty-name", 400),
        (b"GET / HTTP/1.1\r\n" + b"\r\n".join(b"X%d: y" % i for i in range(200)), 431),
    ],
)
def test_parse_head(head: bytes, status: int | None) -> None:
    if status is None:
        req = parse_head(head)
        assert req.path.startswith("/")
    else:
        with pytest.raises(BadRequest) as e:
            parse_head(head)
        assert e.value.status == status


def test_parse_head_fields() -> None:
    req = parse_head(b"GET /api/queue?destination=pacs HTTP/1.1\r\nHost: router\r\nX-A:  b ")
    assert (req.method, req.path, req.query) == ("GET", "/api/queue", "destination=pacs")
    assert req.headers == {"host": "router", "x-a": "b"}

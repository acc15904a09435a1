"""POST routes of router.http over real loopback sockets: bodies are bounded, need a
Content-Length, and arrive whole at the handler."""

from __future__ import annotations

import anyio
import pytest

from router.http import HttpServer, Request, Response
from router.metrics import Metrics

pytestmark = pytest.mark.asyncio


async def exchange(port: int, data: bytes, *, eof: bool = True) -> bytes:
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(data)
            if eof:
                await s.send_eof()
            out = bytearray()
            try:
                while True:
                    out += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            return bytes(out)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def test_post_routes() -> None:
    seen: list[Request] = []

    async def echo(request: Request) -> Response:
        seen.append(request)
        return Response.json({"got": len(request.body)})

    server = HttpServer(
        "127.0.0.1",
        0,
        Metrics(process_metrics=False),
        list,
        max_body_bytes=1000,
        read_timeout=0.5,
    )
    server.add_route("/api/echo", echo, methods=("POST",))
    server.add_route("/api/both", echo, methods=("GET", "POST"))
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        resp = await exchange(port, post("/api/echo", b'{"a": 1}'))
        assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b'"got": 8\n}\n')
        assert seen[-1].body == b'{"a": 1}' and seen[-1].method == "POST"
        # a body split over several segments, sent slowly
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            data = post("/api/echo", b"x" * 600)
            await s.send(data[:50])
            await s.send(data[50:400])
            await s.send(data[400:])
            assert (await s.receive()).startswith(b"HTTP/1.1 200 ")
        assert seen[-1].body == b"x" * 600
        # the methods of each route; GET implies HEAD
        resp = await exchange(port, b"GET /api/echo HTTP/1.1\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 405 ") and b"Allow: POST\r\n" in resp
        resp = await exchange(port, b"HEAD /api/both HTTP/1.1\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200 ")
        resp = await exchange(port, b"DELETE /api/both HTTP/1.1\r\n\r\n")
        assert b"Allow: GET, HEAD, POST\r\n" in resp
        # an unknown path is 404 whatever the method
        assert (await exchange(port, post("/api/nope", b"{}"))).startswith(b"HTTP/1.1 404 ")
        # bounds: too large (refused before reading it), chunked, missing length, truncated
        resp = await exchange(port, post("/api/echo", b"y" * 1001))
        assert resp.startswith(b"HTTP/1.1 413 ")
        chunked = (
            b"POST /api/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        assert (await exchange(port, chunked)).startswith(b"HTTP/1.1 411 ")
        no_length = b"POST /api/echo HTTP/1.1\r\n\r\n{}"
        assert (await exchange(port, no_length)).startswith(b"HTTP/1.1 411 ")
        bad_length = b"POST /api/echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n"
        assert (await exchange(port, bad_length)).startswith(b"HTTP/1.1 400 ")
        truncated = post("/api/echo", b"z" * 100)[:-40]
        assert (await exchange(port, truncated)).startswith(b"HTTP/1.1 400 ")
        # a client that stops sending its body: 408 after read_timeout
        resp = await exchange(port, post("/api/echo", b"z" * 100)[:-40], eof=False)
        assert resp.startswith(b"HTTP/1.1 408 ")
        # an empty POST body is fine
        resp = await exchange(port, post("/api/echo", b""))
        assert resp.startswith(b"HTTP/1.1 200 ") and seen[-1].body == b""
        # GET routes still answer
        assert (await exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"ok\n")
        tg.cancel_scope.cancel()

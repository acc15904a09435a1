"""A small HTTP/1.1 server on anyio: GET /metrics, /healthz, /readyz (README, "Metrics").

No framework: the request line and headers are read with a size bound and a timeout,
one request per connection (``Connection: close``). A route table
(:meth:`HttpServer.add_route`) serves GET (and HEAD) by default; a route may also take
POST, whose body must come with a ``Content-Length`` of at most ``max_body_bytes``
(the operator API of :mod:`router.api` uses this).

Whatever a client sends, the server answers or closes the connection, logs, and goes
on serving: a handler that raises gets a 500, a slow client a 408, an oversized head a
431, garbage a 400.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import anyio
import anyio.abc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import logs
from router.metrics import Metrics

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

REASONS: Mapping[int, str] = MappingProxyType(
    {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        405: "Method Not Allowed",
        408: "Request Timeout",
        409: "Conflict",
        411: "Length Required",
        413: "Content Too Large",
        415: "Unsupported Media Type",
        431: "Request Header Fields Too Large",
        500: "Internal Server Error",
        503: "Service Unavailable",
        505: "HTTP Version Not Supported",
    }
)
ALLOWED_METHODS = ("GET", "HEAD")  # the default methods of a route
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: what a vanished client raises
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode("utf-8"), TEXT)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        body = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        return cls(status, body.encode("utf-8"), JSON)


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_head(head: bytes, *, max_headers: int = 100) -> Request:
    """Parse a request head (request line and headers, without the final blank line).

    Raises :class:`BadRequest` on anything that is not a well-formed HTTP/1.x head.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method_b, target_b, version_b = parts
    if not method_b or not set(method_b) <= _TOKEN_CHARS:
        raise BadRequest(400, "malformed method")
    if not version_b.startswith(b"HTTP/"):
        raise BadRequest(400, "malformed HTTP version")
    if version_b not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not target_b.startswith(b"/") or any(c <= 0x20 or c >= 0x7F for c in target_b):
        raise BadRequest(400, "malformed request target")
    target = target_b.decode("ascii")
    path, _, query = target.partition("?")
    if len(lines) - 1 > max_headers:
        raise BadRequest(431, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            raise BadRequest(400, "malformed header field")
        headers[name.decode("ascii").lower()] = value.strip(b" \t").decode("latin-1")
    return Request(method_b.decode("ascii"), path, query, MappingProxyType(headers))


class HttpServer:
    """``/metrics``, ``/healthz``, ``/readyz`` and any routes added with :meth:`add_route`.

    ``readiness()`` returns the list of problems (empty: ready); it runs on the event
    loop at each ``/readyz`` and must be cheap.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Callable[[], list[str]],
        *,
        read_timeout: float = 10.0,
        write_timeout: float = 10.0,
        max_head_bytes: int = 8192,
        max_body_bytes: int = 64 * 1024,
        max_connections: int = 64,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.readiness = readiness
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self._limiter = anyio.CapacityLimiter(max_connections)
        self.routes: dict[str, Handler] = {}
        self.methods: dict[str, tuple[str, ...]] = {}
        self.add_route("/metrics", self._metrics)
        self.add_route("/healthz", self._healthz)
        self.add_route("/readyz", self._readyz)

    def add_route(self, path: str, handler: Handler, methods: Sequence[str] = ("GET",)) -> None:
        """Serve ``handler`` for ``methods`` of exactly ``path`` (GET implies HEAD).

        Other methods get 405 with an ``Allow`` header. A POST's body is read before
        the handler runs (``Request.body``), bounded by ``max_body_bytes``."""
        allowed = [m.upper() for m in methods]
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.insert(allowed.index("GET") + 1, "HEAD")
        self.routes[path] = handler
        self.methods[path] = tuple(allowed)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report the bound port with ``task_status.started(port)``, serve until
        cancelled."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener:
            bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            self.port = bound
            logs.event(log, logging.INFO, "http_listening", host=self.host, port=bound)
            task_status.started(bound)
            await listener.serve(self._connection)

    # ---- connection handling
    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                self._limiter.acquire_nowait()
            except anyio.WouldBlock:
                await self._send(stream, "GET", Response.text(503, "too many connections\n"))
                await self._linger(stream)
                return
            try:
                await self._handle(stream)
            except Exception:
                # Never let one connection take the server down.
                log.exception("http_connection_failed")
            finally:
                self._limiter.release()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        method = "GET"
        try:
            got = await self._read_head(stream)
            if got is None:
                return  # the peer closed before sending a request
            head, rest = got
            request = parse_head(head)
            method = request.method
            response = await self._dispatch(request, stream, rest)
        except BadRequest as e:
            response = Response.text(e.status, e.message + "\n")
        await self._send(stream, method, response)
        await self._linger(stream)

    async def _read_head(self, stream: anyio.abc.SocketStream) -> tuple[bytes, bytes] | None:
        """(the head without its final blank line, the bytes received after it)."""
        buf = bytearray()
        with anyio.move_on_after(self.read_timeout):
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    return bytes(buf[:end]), bytes(buf[end + 4 :])
                if len(buf) >= self.max_head_bytes:
                    raise BadRequest(431, "request head too large")
                try:
                    chunk = await stream.receive(self.max_head_bytes + 4 - len(buf))
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    if not buf:
                        return None
                    raise BadRequest(400, "incomplete request") from None
                buf += chunk
        raise BadRequest(408, "request not received in time")

    async def _read_body(
        self, stream: anyio.abc.SocketStream, request: Request, rest: bytes
    ) -> bytes:
        if "transfer-encoding" in request.headers:
            raise BadRequest(411, "send the body with a Content-Length, not chunked")
        length_text = request.headers.get("content-length")
        if length_text is None:
            if rest:
                raise BadRequest(411, "a request body needs a Content-Length")
            return b""
        if not length_text.isdigit() or len(length_text) > 12:
            raise BadRequest(400, "malformed Content-Length")
        length = int(length_text)
        if length > self.max_body_bytes:
            raise BadRequest(413, f"request body larger than {self.max_body_bytes} bytes")
        buf = bytearray(rest[:length])
        with anyio.move_on_after(self.read_timeout):
            while len(buf) < length:
                try:
                    buf += await stream.receive(length - len(buf))
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    raise BadRequest(400, "incomplete request body") from None
            return bytes(buf)
        raise BadRequest(408, "request body not received in time")

    async def _dispatch(
        self, request: Request, stream: anyio.abc.SocketStream | None = None, rest: bytes = b""
    ) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return Response.text(404, "not found\n")
        allowed = self.methods.get(request.path, ALLOWED_METHODS)
        if request.method not in allowed:
            return Response(
                405,
                b"method not allowed\n",
                TEXT,
                MappingProxyType({"Allow": ", ".join(allowed)}),
            )
        if request.method in _BODY_METHODS and stream is not None:
            body = await self._read_body(stream, request, rest)
            request = Request(request.method, request.path, request.query, request.headers, body)
        try:
            return await handler(request)
        except Exception:
            log.exception("http_handler_failed", extra={"path": request.path})
            return Response.text(500, "internal error\n")

    async def _send(self, stream: anyio.abc.SocketStream, method: str, resp: Response) -> None:
        reason = REASONS.get(resp.status, "Unknown")
        lines = [
            f"HTTP/1.1 {resp.status} {reason}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += resp.body
        with anyio.move_on_after(self.write_timeout):
            with contextlib.suppress(*_GONE):
                await stream.send(data)

    async def _linger(self, stream: anyio.abc.SocketStream) -> None:
        """Half-close, then discard what the client still sends for a moment, so that a
        close with unread data does not reset the connection before it read the answer."""
        with anyio.move_on_after(1.0), contextlib.suppress(*_GONE, anyio.EndOfStream):
            await stream.send_eof()
            drained = 0
            while drained < 65536:
                drained += len(await stream.receive())

    # ---- built-in routes
    async def _metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    async def _healthz(self, request: Request) -> Response:
        return Response.text(200, "ok\n")

    async def _readyz(self, request: Request) -> Response:
        try:
            problems = list(self.readiness())
        except Exception as e:
            log.exception("readiness_check_failed")
            problems = [f"readiness check failed: {type(e).__name__}"]
        if problems:
            return Response.text(503, "".join(f"{p}\n" for p in problems))
        return Response.text(200, "ready\n")

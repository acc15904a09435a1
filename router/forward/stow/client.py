"""The STOW-RS client of a DICOMweb destination: ``POST {url}/studies`` with one
multipart/related request per batch, and ``echo`` (``GET {url}/studies?limit=1``).

httpx's AsyncClient does the HTTP: it runs on anyio, streams a request body from an
async iterator over HTTP/1.1, takes an ``ssl.SSLContext`` (the destination's, from
:func:`router.tls.client_context`) and per-operation timeouts. Credentials are read
from their files when the file changes (checked per request), so a token rotated by an
external agent is used without a reload.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from router.config import ClientTLS
from router.forward.outcome import Outcome, TransportFailure
from router.forward.stow.multipart import MultipartBody, Part, SourceError
from router.forward.stow.outcome import (
    InstanceResult,
    StowOutcome,
    classify_response,
    failed_request,
    response_text,
)
from router.tls import client_context

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "EchoResult",
    "StowClient",
    "StowConfig",
    "StowConfigError",
]

RESPONSE_LIMIT = 1024 * 1024  # bytes of a response body read; a STOW answer is far smaller
ACCEPT = "application/dicom+json"


class StowConfigError(Exception):
    """A DICOMweb destination's settings cannot be used (a secret file unreadable)."""


@dataclass(frozen=True, slots=True)
class BearerAuth:
    """``Authorization: Bearer <first line of token_file>``."""

    token_file: Path


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic authentication; the password is the first line of ``password_file``."""

    username: str
    password_file: Path


@dataclass(frozen=True, slots=True)
class StowConfig:
    """A DICOMweb destination: ``url`` is the DICOMweb root (``{url}/studies``),
    ``timeout`` seconds per connect, write, read and pool wait, ``max_connections``
    requests in parallel. ``max_instances_per_request`` is for the caller's batching
    (:func:`router.forward.stow.multipart.group_by_study`); the client sends what it gets."""

    url: str
    auth: BearerAuth | BasicAuth | None = None
    tls: ClientTLS | None = None
    timeout: float = 120.0
    max_instances_per_request: int = 16
    max_connections: int = 2

    @property
    def studies_url(self) -> str:
        return self.url.rstrip("/") + "/studies"


@dataclass(frozen=True, slots=True)
class EchoResult:
    ok: bool
    reason: str  # "HTTP 200", or why not
    http_status: int | None = None  # None: no response came back


def _read_secret(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StowConfigError(f"{path}: cannot read the secret ({e})") from e
    lines = text.splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise StowConfigError(f"{path}: the file is empty; put the secret on its first line")
    return secret


@dataclass
class _FileAuth(httpx.Auth):
    """An Authorization header made from a secret file, re-read when the file changes."""

    auth: BearerAuth | BasicAuth
    _stamp: tuple[int, int] | None = field(default=None, init=False)
    _header: str = field(default="", init=False)

    @property
    def path(self) -> Path:
        return (
            self.auth.token_file if isinstance(self.auth, BearerAuth) else self.auth.password_file
        )

    def header(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise StowConfigError(f"{self.path}: cannot read the secret ({e.strerror})") from e
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            secret = _read_secret(self.path)
            if isinstance(self.auth, BearerAuth):
                self._header = f"Bearer {secret}"
            else:
                pair = f"{self.auth.username}:{secret}".encode()
                self._header = "Basic " + base64.b64encode(pair).decode("ascii")
            self._stamp = stamp
        return self._header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.header()
        yield request


def _unreadable(uid: str, e: SourceError) -> InstanceResult:
    outcome = Outcome.PERMANENT if e.permanent else Outcome.TRANSIENT
    return InstanceResult(uid, outcome, f"stored copy unreadable: {e}")


def _transport_failure(exc: Exception) -> TransportFailure:
    if isinstance(exc, httpx.TimeoutException):
        return TransportFailure.TIMEOUT
    if isinstance(exc, httpx.ConnectError | ssl.SSLError):
        return TransportFailure.CONNECT_REFUSED
    return TransportFailure.ABORTED


def _transport_reason(exc: Exception) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout: {detail}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {detail}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {detail}"
    return f"connection failed: {detail}"


async def _read_bounded(response: httpx.Response, limit: int = RESPONSE_LIMIT) -> bytes:
    out = bytearray()
    async for chunk in response.aiter_bytes():
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)


class StowClient:
    """One destination's HTTP client (a connection pool of ``max_connections``). Use
    as an async context manager, or call :meth:`aclose`."""

    def __init__(self, config: StowConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: the one to use (built once by the caller), else one is built
        from ``config.tls``."""
        self.config = config
        self._auth = _FileAuth(config.auth) if config.auth is not None else None
        if self._auth is not None:
            self._auth.header()  # a missing or empty secret file is a config error now
        verify: ssl.SSLContext | bool = True
        if ssl_context is not None:
            verify = ssl_context
        elif config.tls is not None:
            verify = client_context(config.tls)
        elif config.url.startswith("https:"):
            verify = client_context(ClientTLS())
        transport = httpx.AsyncHTTPTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def __aenter__(self) -> StowClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def store(self, parts: Sequence[Part]) -> StowOutcome:
        """Sends ``parts`` (instances of one study) in one request; one result per part,
        in order. Never raises for the destination's or the network's failures."""
        if not parts:
            return StowOutcome((), None, False, "nothing to send")
        uids = [p.sop_instance_uid for p in parts]
        readable: list[Part] = []
        unreadable: dict[int, InstanceResult] = {}
        for i, part in enumerate(parts):
            try:
                part.size()
            except SourceError as e:
                unreadable[i] = _unreadable(part.sop_instance_uid, e)
            else:
                readable.append(part)
        if not readable:
            results = tuple(unreadable[i] for i in range(len(parts)))
            return StowOutcome(results, None, False, "no readable instance to send")
        outcome = await self._send(readable)
        if not unreadable:
            return outcome
        sent = iter(outcome.results)
        merged = tuple(unreadable[i] if i in unreadable else next(sent) for i in range(len(uids)))
        return StowOutcome(
            merged, outcome.http_status, outcome.destination_down, outcome.reason, outcome.failure
        )

    async def _send(self, parts: Sequence[Part]) -> StowOutcome:
        uids = [p.sop_instance_uid for p in parts]
        try:
            body = MultipartBody(parts)
        except SourceError as e:  # a file vanished between the check and now
            results = tuple(_unreadable(uid, e) for uid in uids)
            return StowOutcome(results, None, False, f"stored copy unreadable: {e}")
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(body.content_length),
            "Accept": ACCEPT,
        }
        try:
            request = self._client.build_request(
                "POST", self.config.studies_url, content=_stream(body), headers=headers
            )
            response = await self._client.send(
                request, auth=self._auth or httpx.USE_CLIENT_DEFAULT, stream=True
            )
            try:
                data = await _read_bounded(response)
            finally:
                await response.aclose()
        except StowConfigError as e:
            return failed_request(uids, str(e), failure=TransportFailure.REJECTED_PERMANENT)
        except SourceError as e:  # the request was cut: nothing is known to be stored
            reason = f"stored copy unreadable while sending: {e}"
            results = tuple(InstanceResult(uid, Outcome.TRANSIENT, reason) for uid in uids)
            return StowOutcome(results, None, False, reason)
        except (httpx.HTTPError, OSError) as e:  # OSError: a TLS alert after the handshake
            return failed_request(uids, _transport_reason(e), failure=_transport_failure(e))
        return classify_response(response.status_code, data, uids)

    async def echo(self) -> EchoResult:
        """``GET {url}/studies?limit=1``: whether the destination answers us with 2xx."""
        try:
            response = await self._client.get(
                self.config.studies_url,
                params={"limit": "1"},
                headers={"Accept": ACCEPT},
                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
            )
        except StowConfigError as e:
            return EchoResult(False, str(e))
        except (httpx.HTTPError, OSError) as e:
            return EchoResult(False, _transport_reason(e))
        status = response.status_code
        if 200 <= status < 300:
            return EchoResult(True, f"HTTP {status}", status)
        text = response_text(response.content)
        reason = f"HTTP {status}" + (f": {text}" if text else "")
        return EchoResult(False, reason, status)


async def _stream(body: MultipartBody) -> AsyncIterator[bytes]:
    async for chunk in body:
        yield chunk

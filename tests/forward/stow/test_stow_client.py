"""The client's HTTP behaviour that Orthanc cannot show: bearer tokens, the request's
headers as a server receives them, answers Orthanc never gives (503, 413, 415), and
timeouts. The server is the standard library's HTTP server on a real socket, answering
what each test sets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from router.forward.outcome import Outcome
from router.forward.stow import (
    BearerAuth,
    Part,
    StowClient,
    StowConfig,
    StowConfigError,
)
from tests.forward.stow.bodies import dicom_json, split_parts


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    status: int = 200
    answer: bytes = b""
    hold: threading.Event | None = None  # set: answer; unset: keep the client waiting
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            state.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            if state.hold is not None:
                state.hold.wait(30)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(state.answer)))
            self.end_headers()
            self.wfile.write(state.answer)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    if state.hold is not None:
        state.hold.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.asyncio
async def test_request_as_the_server_sees_it(server: Server, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    f = tmp_path / "b.dcm"
    f.write_bytes(b"B" * 3_000_000)
    server.answer = dicom_json([("1.1", None), ("1.2", None)])
    async with StowClient(StowConfig(server.url, auth=BearerAuth(token))) as c:
        out = await c.store([Part("1.1", b"A" * 1000), Part("1.2", f)])
        token.write_text("tok-2-rotated\n")
        echo = await c.echo()
    assert [r.outcome for r in out.results] == [Outcome.DELIVERED] * 2
    assert echo.ok
    post, get = server.seen
    assert (post.method, post.path) == ("POST", "/dicom-web/studies")
    assert post.headers["Authorization"] == "Bearer tok-1"
    assert post.headers["Accept"] == "application/dicom+json"
    assert "Transfer-Encoding" not in post.headers
    assert int(post.headers["Content-Length"]) == len(post.body)
    assert split_parts(post.headers["Content-Type"], post.body) == [
        ("application/dicom", b"A" * 1000),
        ("application/dicom", b"B" * 3_000_000),
    ]
    assert (get.method, get.path) == ("GET", "/dicom-web/studies?limit=1")
    assert get.headers["Authorization"] == "Bearer tok-2-rotated"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "outcome", "down", "refused"),
    [
        (503, Outcome.TRANSIENT, True, False),
        (429, Outcome.TRANSIENT, True, False),
        (403, Outcome.TRANSIENT, True, False),
        (413, Outcome.PERMANENT, False, False),
        (404, Outcome.PERMANENT, False, False),
        (415, Outcome.PERMANENT, False, True),
    ],
)
async def test_whole_request_statuses(
    server: Server, status: int, outcome: Outcome, down: bool, refused: bool
) -> None:
    server.status, server.answer = status, b"the server's words"
    async with StowClient(StowConfig(server.url)) as c:
        out = await c.store([Part("1.1", b"x"), Part("1.2", b"y")])
        echo = await c.echo()
    assert out.http_status == status
    assert [r.outcome for r in out.results] == [outcome] * 2
    assert out.destination_down is down
    assert [r.syntax_refused for r in out.results] == [refused] * 2
    assert all(r.reason.startswith(f"HTTP {status}: the server's words") for r in out.results)
    assert not echo.ok and echo.reason == f"HTTP {status}: the server's words"


@pytest.mark.asyncio
async def test_timeout_is_retried(server: Server) -> None:
    server.hold = threading.Event()
    async with StowClient(StowConfig(server.url, timeout=0.5)) as c:
        out = await c.store([Part("1.1", b"x")])
    assert out.http_status is None and out.destination_down
    assert [r.outcome for r in out.results] == [Outcome.TRANSIENT]
    assert out.results[0].reason.startswith("timeout")


def test_unusable_secret_files_are_config_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(StowConfigError, match="empty"):
        StowClient(StowConfig("http://127.0.0.1:1/", auth=BearerAuth(empty)))
    with pytest.raises(StowConfigError, match="cannot read"):
        StowClient(StowConfig("http://127.0.0.1:1/", auth=BearerAuth(tmp_path / "missing")))


@pytest.mark.asyncio
async def test_secret_file_removed_later_fails_the_request_not_the_caller(
    server: Server, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok\n")
    async with StowClient(StowConfig(server.url, auth=BearerAuth(token))) as c:
        token.unlink()
        out = await c.store([Part("1.1", b"x")])
        echo = await c.echo()
    assert [r.outcome for r in out.results] == [Outcome.TRANSIENT]
    assert "cannot read the secret" in out.results[0].reason
    assert not echo.ok and "cannot read the secret" in echo.reason
    assert server.seen == []

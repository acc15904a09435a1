"""The operator JSON API on the router's HTTP server: the queue while the router runs.

=====================================  ===================================================
``GET  /api/info``                     version, AE title, storage path, config file,
                                       destinations, rule count (the CLI checks that it
                                       talks to the router of its own storage)
``GET  /api/queue/status``             deliveries per destination and state with the age
                                       of the oldest, unrouted instances
``GET  /api/queue/deliveries``         deliveries; query ``destination``, ``state``,
                                       ``older_than`` (``90s``, ``2h``), ``study`` (Study
                                       Instance UID), ``series`` (Series Instance UID),
                                       ``limit`` (default 1000); a held one has
                                       ``release_at`` and ``release_reason``
``POST /api/queue/retry``              JSON body: the same filters; dead letters (state
                                       ``failed``) back to pending -> ``{"retried": n}``
``POST /api/queue/purge``              JSON body: the same filters and ``"confirm":
                                       true``; deletes -> ``{"purged": n}``
``POST /api/queue/release``            JSON body: ``destination``, ``study``, ``series``
                                       (no ``limit``); releases the held series or
                                       studies holding a match now, each whole ->
                                       ``{"released": n}``
``POST /api/reload``                   reload the config now (what SIGHUP does) ->
                                       ``{"ok": bool, "problems": [...]}``
=====================================  ===================================================

There is no authentication: the HTTP server listens on ``http.host``, 127.0.0.1 by
default; keep it on loopback or behind a proxy that authenticates. POSTs must carry
``Content-Type: application/json`` (a web page cannot send that cross-origin without a
preflight the server never grants). Errors are ``{"error": message}`` with 400 (bad
filter), 415 (content type), 409 (purge without confirm) or 503 (queue not open).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from router import __version__, logs, ops
from router.config import Config
from router.http import HttpServer, Request, Response
from router.store.backend import QueueBackend
from router.store.records import QueueClosed, State

log = logging.getLogger("router.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _query(request: Request) -> dict[str, str]:
    try:
        pairs = parse_qsl(request.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as e:
        raise ApiError(400, f"malformed query string: {e}") from None
    return dict(pairs)


def _json_body(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send the body as Content-Type: application/json")
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object of filters")
    return body


class OperatorApi:
    """Routes of the operator API, backed by the running router's queue."""

    def __init__(
        self,
        queue: QueueBackend,
        config: Callable[[], Config],
        storage_dir: Path,
        config_path: Path,
        reload: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.queue = queue
        self.config = config
        self.storage_dir = storage_dir
        self.config_path = config_path
        self.reload = reload

    def install(self, http: HttpServer) -> None:
        http.add_route("/api/info", self._wrap(self.info))
        http.add_route("/api/queue/status", self._wrap(self.status))
        http.add_route("/api/queue/deliveries", self._wrap(self.deliveries))
        http.add_route("/api/queue/retry", self._wrap(self.retry), methods=("POST",))
        http.add_route("/api/queue/purge", self._wrap(self.purge), methods=("POST",))
        http.add_route("/api/queue/release", self._wrap(self.release), methods=("POST",))
        if self.reload is not None:
            http.add_route("/api/reload", self._wrap(self.reload_now), methods=("POST",))

    def _wrap(
        self, fn: Callable[[Request], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            try:
                return Response.json(await fn(request))
            except ApiError as e:
                return Response.json({"error": str(e)}, e.status)
            except ValueError as e:
                return Response.json({"error": str(e)}, 400)
            except QueueClosed as e:
                return Response.json({"error": f"the queue is not open: {e}"}, 503)

        return handler

    # -- routes

    async def info(self, request: Request) -> dict[str, Any]:
        cfg = self.config()
        return {
            "version": __version__,
            "ae_title": cfg.ae_title,
            "storage": str(self.storage_dir.resolve()),
            "config": str(self.config_path),
            "destinations": list(cfg.destinations),
            "rules": len(cfg.rules),
        }

    async def status(self, request: Request) -> dict[str, Any]:
        configured = list(self.config().destinations)
        report = ops.status_report(await self.queue.counts(), configured)
        return {"source": "router", **report}

    async def deliveries(self, request: Request) -> dict[str, Any]:
        params = _query(request)
        params.setdefault("limit", str(ops.DEFAULT_LIST_LIMIT))
        f = ops.make_filter(params)
        if f.limit is not None and f.limit > ops.MAX_LIST_LIMIT:
            raise ApiError(400, f"limit: at most {ops.MAX_LIST_LIMIT} per request")
        entries = await self.queue.list_deliveries(f)
        return {
            "deliveries": [ops.entry_json(e) for e in entries],
            "limit": f.limit,
            "truncated": f.limit is not None and len(entries) >= f.limit,
        }

    async def retry(self, request: Request) -> dict[str, Any]:
        f = ops.make_filter(_json_body(request))
        if f.state not in (None, State.FAILED):
            raise ApiError(400, "retry moves dead letters (state failed) back to pending")
        n = await self.queue.retry_failed(f)
        logs.event(log, logging.INFO, "queue_retry", deliveries=n, **ops.filter_params(f))
        return {"retried": n}

    async def purge(self, request: Request) -> dict[str, Any]:
        body = _json_body(request)
        confirm = body.pop("confirm", False)
        f = ops.make_filter(body)
        if confirm is not True:
            raise ApiError(409, 'purge deletes data: add "confirm": true to the body')
        n = await self.queue.purge(f)
        logs.event(log, logging.WARNING, "queue_purge", deleted=n, **ops.filter_params(f))
        return {"purged": n}

    async def release(self, request: Request) -> dict[str, Any]:
        f = ops.make_filter(_json_body(request))
        if f.state not in (None, State.HELD):
            raise ApiError(400, "release applies to held deliveries (state held) only")
        if f.limit is not None:
            raise ApiError(400, "release takes whole series or studies: no limit")
        n = await self.queue.release_holds(f)
        logs.event(log, logging.INFO, "queue_release", deliveries=n, **ops.filter_params(f))
        return {"released": n}

    async def reload_now(self, request: Request) -> dict[str, Any]:
        assert self.reload is not None
        problems = await self.reload()
        return {"ok": not problems, "problems": problems}

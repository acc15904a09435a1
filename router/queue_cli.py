"""`dicom-router queue status|list|retry|purge|release`: the operator's view of the queue.

While the router runs, the commands go through its operator API (:mod:`router.api`)
on ``http.host:http.port``, so changes are made by the router's own queue. When no
router answers there, the queue's standalone administration (:mod:`router.store.admin`)
serves them: ``status`` and ``list`` read (safe next to a router writing), ``retry``,
``purge`` and ``release`` take the storage lock and change it directly; a router that
runs without its HTTP server keeps that lock, and then they refuse with a message saying
so. On a cluster (``queue.backend: postgresql``) the administration acts on the whole
cluster's database, next to the nodes that run.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from router import ops
from router.config import Config
from router.store.admin import (
    conninfo_of,
    has_queue,
    open_admin_for,
    read_counts,
    read_deliveries,
)
from router.store.backend import AdminBackend
from router.store.records import Filter, RouterRunning, State, StoreError


class CommandError(Exception):
    """A problem to print as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- API client


class RouterApi:
    """The operator API of a running router."""

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        self.base = base
        self.timeout = timeout

    @classmethod
    def for_config(cls, cfg: Config) -> RouterApi | None:
        if not cfg.http.enabled or cfg.http.port == 0:
            return None
        host = cfg.http.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return cls(f"http://{host}:{cfg.http.port}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip() or e.reason
            raise CommandError(f"the router at {self.base} answered {e.code}: {message}") from None

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        query = f"?{urlencode(params)}" if params else ""
        return self._call("GET", path + query)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("POST", path, body)

    def serves(self, storage: Path) -> bool:
        """True when a router answers here and its storage is ``storage``."""
        try:
            with urllib.request.urlopen(self.base + "/api/info", timeout=5) as r:
                info = json.loads(r.read())
        except (OSError, ValueError):
            return False  # nobody listens, or not our API
        return isinstance(info, dict) and info.get("storage") == str(storage.resolve())


# ----------------------------------------------------------------------------- actions


def _filter(args: argparse.Namespace, *, default_limit: int | None = None) -> Filter:
    return ops.make_filter(
        {
            "destination": args.destination,
            "state": args.state,
            "older_than": args.older_than,
            "study": args.study_uid,
            "series": args.series_uid,
            "limit": args.limit if args.limit is not None else default_limit,
        }
    )


def status(cfg: Config, args: argparse.Namespace, api: RouterApi | None) -> int:
    if api is not None:
        report = api.get("/api/queue/status")
        source = f"the running router ({api.base})"
    else:
        conninfo = conninfo_of(cfg)
        counts = read_counts(Path(cfg.storage.path), conninfo=conninfo)
        report = {"source": "database", **ops.status_report(counts, cfg.destinations)}
        if conninfo is None:
            source = f"the database in {cfg.storage.path} (no router answers on its HTTP port)"
        else:
            source = "the cluster's database (no router answers on this node's HTTP port)"
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(ops.status_table(report))
    print(f"from {source}")
    return 0


def list_(cfg: Config, args: argparse.Namespace, api: RouterApi | None) -> int:
    f = _filter(args, default_limit=ops.DEFAULT_LIST_LIMIT)
    if api is not None:
        answer = api.get("/api/queue/deliveries", ops.filter_params(f))
        entries = [ops.entry_from_json(d) for d in answer["deliveries"]]
    else:
        entries = read_deliveries(Path(cfg.storage.path), f, conninfo=conninfo_of(cfg))
    if args.json:
        print(json.dumps([ops.entry_json(e) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no deliveries match {ops.describe_filter(f)}")
        return 0
    print(ops.entries_table(entries))
    if f.limit is not None and len(entries) >= f.limit:
        print(f"(the first {f.limit}; more with --limit N)")
    return 0


def _admin(cfg: Config) -> AdminBackend:
    return open_admin_for(cfg, write=True)


def _running_without_api(cfg: Config) -> CommandError:
    where = f"{cfg.http.host}:{cfg.http.port}" if cfg.http.enabled else "nowhere (http is off)"
    return CommandError(
        f"a router is running on {cfg.storage.path} but its operator API does not answer "
        f"at {where}: enable http in its config (and restart it), or stop it first"
    )


def retry(cfg: Config, args: argparse.Namespace, api: RouterApi | None) -> int:
    f = _filter(args)
    if f.state not in (None, State.FAILED):
        raise CommandError("retry moves dead letters (state failed) back to pending", 2)
    if api is not None:
        n = api.post("/api/queue/retry", ops.filter_params(f))["retried"]
    else:
        try:
            with _admin(cfg) as q:
                n = q.retry_failed(f)
        except RouterRunning:
            raise _running_without_api(cfg) from None
    print(f"{n} dead letter(s) back to pending")
    return 0


def purge(cfg: Config, args: argparse.Namespace, api: RouterApi | None) -> int:
    f = _filter(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("purge deletes data: confirm with --yes", 2)
        answer = input(
            f"Delete the deliveries matching {ops.describe_filter(f)}, and the data of "
            "instances left without any, for good? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    if api is not None:
        n = api.post("/api/queue/purge", {**ops.filter_params(f), "confirm": True})["purged"]
    else:
        try:
            with _admin(cfg) as q:
                n = q.purge(f)
        except RouterRunning:
            raise _running_without_api(cfg) from None
    print(f"{n} deleted")
    return 0


def release(cfg: Config, args: argparse.Namespace, api: RouterApi | None) -> int:
    f = ops.make_filter(
        {"destination": args.destination, "study": args.study_uid, "series": args.series_uid}
    )
    if api is not None:
        n = api.post("/api/queue/release", ops.filter_params(f))["released"]
    else:
        try:
            with _admin(cfg) as q:
                n = q.release_holds(f)
        except RouterRunning:
            raise _running_without_api(cfg) from None
    if args.json:
        print(json.dumps({"released": n}))
        return 0
    where = "" if f == Filter() else f" matching {ops.describe_filter(f)}"
    print(f"{n} held deliveries released{where} (each series or study whole)")
    return 0


ACTIONS = {"status": status, "list": list_, "retry": retry, "purge": purge, "release": release}


def run(cfg: Config, args: argparse.Namespace) -> int:
    storage = Path(cfg.storage.path)
    if cfg.queue.backend == "sqlite" and not has_queue(storage):
        print(
            f"dicom-router: no queue in {storage} yet (the router has not run there)",
            file=sys.stderr,
        )
        return 1
    try:
        api = RouterApi.for_config(cfg)
        if api is not None and not api.serves(storage):
            api = None
        return ACTIONS[args.queue_command](cfg, args, api)
    except CommandError as e:
        print(f"dicom-router: {e}", file=sys.stderr)
        return e.code
    except (ValueError, StoreError, OSError) as e:
        print(f"dicom-router: {e}", file=sys.stderr)
        return 1

"""`queue status` and /api/queue/status come from the store's admin side: the running
queue's fresh count, or the standalone administration; nothing outside router/store
talks SQL."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import router
from router import ops
from router.api import OperatorApi
from router.config import load_config
from router.http import HttpServer
from router.metrics import Metrics
from router.store.admin import read_counts
from router.store.records import QueueCounts, State, StateCount
from tests.ops.helpers import api, cli
from tests.store.helpers import backend_named, commit

CONFIG = """\
ae_title: ROUTER
storage: {path: ./storage, min_free_bytes: 0}
listen: {host: 127.0.0.1, port: 0}
http: {enabled: false}
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}
  ai: {ae_title: AI, host: 127.0.0.1, port: 104}
rules:
  - {name: all, forward: [pacs, ai]}
"""


def test_status_report_from_counts() -> None:
    counts = QueueCounts(
        deliveries={
            ("pacs", State.FAILED): StateCount(2, 940.0),
            ("gone", State.PENDING): StateCount(1, 999.5),
        },
        unrouted=StateCount(3, 400.0),
        instances=5,
    )
    report = ops.status_report(counts, ["pacs", "ai"], now=1000.0)
    assert list(report["destinations"]) == ["ai", "gone", "pacs"]
    for name, d in report["destinations"].items():
        assert d["configured"] == (name != "gone")
        assert list(d["states"]) == ["pending", "leased", "delivered", "failed", "held"]
    assert report["destinations"]["pacs"]["states"]["failed"] == {
        "count": 2,
        "oldest_age_seconds": 60.0,
    }
    assert report["destinations"]["ai"]["states"]["pending"] == {
        "count": 0,
        "oldest_age_seconds": None,
    }
    assert report["destinations"]["gone"]["states"]["pending"]["oldest_age_seconds"] == 0.5
    assert report["unrouted"] == {"count": 3, "oldest_age_seconds": 600.0}
    assert report["instances"] == 5
    json.dumps(report)  # plain JSON: states are their text


@pytest.mark.asyncio
async def test_api_status_goes_through_the_running_queue(tmp_path: Path) -> None:
    config_path = tmp_path / "router.yaml"
    config_path.write_text(CONFIG)
    cfg = load_config(config_path)
    storage = tmp_path / "storage"
    storage.mkdir()
    backend = backend_named("sqlite")
    async with backend.running(storage) as q:
        await commit(q, 10, ["pacs", "ai"], seed=1)
        await commit(q, 9000, ["pacs"], seed=2)
        await commit(q, 10, [], seed=3)
        (le,) = await q.lease("ai", 1, 30)
        await q.failed(le.delivery_id, 0xC000, "bad")
        # The API is given a storage directory with no database in it: the status can
        # only come from the queue it serves, not from a side door to the file.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        http = HttpServer("127.0.0.1", 0, Metrics(process_metrics=False), list)
        OperatorApi(q, lambda: cfg, elsewhere, config_path).install(http)
        async with anyio.create_task_group() as tg:
            port = await tg.start(http.serve)
            status, report = await anyio.to_thread.run_sync(api, port, "/api/queue/status")
            tg.cancel_scope.cancel()
        assert status == 200
        assert report["source"] == "router"
        states = {n: d["states"] for n, d in report["destinations"].items()}
        assert states["pacs"]["pending"]["count"] == 2
        assert states["ai"]["failed"]["count"] == 1
        assert states["ai"]["pending"]["count"] == 0
        assert report["unrouted"]["count"] == 1 and report["instances"] == 3
        expected = ops.status_report(await q.counts(), cfg.destinations)

        def counts(r: dict[str, Any]) -> dict[tuple[str, str], int]:
            return {
                (n, s): v["count"]
                for n, d in r["destinations"].items()
                for s, v in d["states"].items()
            }

        assert counts(report) == counts(expected)
    assert not (elsewhere / "queue.db").exists()


@pytest.mark.asyncio
async def test_cli_status_without_a_router_reads_the_admin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = tmp_path / "router.yaml"
    config_path.write_text(CONFIG)
    storage = tmp_path / "storage"
    storage.mkdir()
    async with backend_named("sqlite").running(storage) as q:
        await commit(q, 10, ["pacs"], seed=1)
        await commit(q, 10, [], seed=2)
    rc, out, err = await anyio.to_thread.run_sync(
        lambda: cli(capsys, "queue", "status", "--config", str(config_path), "--json")
    )
    assert rc == 0, err
    report = json.loads(out)
    assert report["source"] == "database"
    counts = read_counts(storage)
    assert report["destinations"]["pacs"]["states"]["pending"]["count"] == 1
    assert report["unrouted"]["count"] == counts.unrouted.count == 1
    assert report["instances"] == counts.instances == 2


def _sql_outside_the_store() -> list[str]:
    root = Path(router.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "store") in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        # docstrings are prose ("may update ... what it sets"), not statements sent anywhere
        prose = {
            id(n.value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if id(node) in prose:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("sqlite3", "psycopg", "psycopg2") for n in names):
                found.append(f"{path.relative_to(root)}:{node.lineno} imports {names}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words = set(node.value.upper().split())
                if {"SELECT", "FROM"} <= words or {"UPDATE", "SET"} <= words:
                    found.append(f"{path.relative_to(root)}:{node.lineno} SQL {node.value!r}")
    return found


def test_no_sql_outside_the_store() -> None:
    assert _sql_outside_the_store() == []

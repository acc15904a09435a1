"""Helpers for the operator tests: the CLI in-process, the operator API, JSON logs."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from router.cli import main

#: loggers whose event may still be a sentence (its values inside the text): only
#: required to be JSON. router.store.queue's start-up recovery logs printf-style lines.
UNSTRUCTURED = ("router.store",)
_EVENT = re.compile(r"^[a-z][a-z0-9_]*$")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``dicom-router ARGS`` in this process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def api(
    port: int,
    path: str,
    body: Any = None,
    *,
    method: str | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """Call the operator API; (status, decoded JSON or text)."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def json_log(path: Path) -> list[dict[str, Any]]:
    """Every line of a router's log, each required to be one JSON object with the
    common keys; events are plain names (the data is in the fields) except those of
    :data:`UNSTRUCTURED` loggers."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path}:{n}: not JSON: {line!r}") from None
        assert isinstance(rec, dict), line
        assert {"ts", "level", "logger", "event"} <= rec.keys(), line
        if not rec["logger"].startswith(UNSTRUCTURED):
            assert _EVENT.match(rec["event"]), f"{path}:{n}: unstructured event: {line}"
        records.append(rec)
    assert records, f"{path} is empty"
    return records


def status_json(capsys: pytest.CaptureFixture[str], config: Path) -> dict[str, Any]:
    rc, out, err = cli(capsys, "queue", "status", "--config", str(config), "--json")
    assert rc == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def count(report: dict[str, Any], destination: str, state: str) -> int:
    return int(report["destinations"][destination]["states"][state]["count"])

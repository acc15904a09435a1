"""`dicom-router queue status|list|retry|purge`: the operator's view of the queue.

``status`` and ``list`` read the database directly (SQLite WAL lets them read while the
router writes). ``retry`` and ``purge`` change it: they need the router stopped, since
the router holds the storage lock while it runs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from dataclasses import asdict
from pathlib import Path

from router.config import Config, parse_duration
from router.store.queue import (
    DB_NAME,
    STATES,
    Filter,
    QueueAdmin,
    RouterRunning,
    count_by_sql,
    read_deliveries,
)


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(
        destination=args.destination,
        state=args.state,
        min_age=parse_duration(args.older_than) if args.older_than else None,
        study_uid=args.study_uid,
        limit=args.limit,
    )


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def status(cfg: Config, args: argparse.Namespace) -> int:
    storage = Path(cfg.storage.path)
    counts, unrouted, active = count_by_sql(storage)
    dests = sorted({d for d, _ in counts} | set(cfg.destinations))
    if args.json:
        print(
            json.dumps(
                {
                    "destinations": {d: {s: counts.get((d, s), 0) for s in STATES} for d in dests},
                    "unrouted": unrouted,
                    "instances": active,
                },
                indent=2,
            )
        )
        return 0
    rows = [["destination", *STATES]]
    for d in dests:
        name = d if d in cfg.destinations else f"{d} (not in config)"
        rows.append([name, *(str(counts.get((d, s), 0)) for s in STATES)])
    print(_table(rows))
    print(f"\nunrouted instances: {unrouted}   instances not yet delivered everywhere: {active}")
    return 0


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def list_(cfg: Config, args: argparse.Namespace) -> int:
    entries = read_deliveries(Path(cfg.storage.path), _filter(args))
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    rows = [["instance", "destination", "state", "attempts", "received", "due", "last"]]
    for e in entries:
        last = "-"
        if e.last_status is not None:
            last = f"{e.last_status:04x}"
        if e.last_error:
            last = f"{last} {e.last_error}" if last != "-" else e.last_error
        rows.append(
            [
                e.instance_id,
                e.destination or "-",
                e.state,
                str(e.attempts),
                _fmt_time(e.received_at),
                _fmt_time(e.due_at),
                last,
            ]
        )
    print(_table(rows))
    return 0


def _admin(cfg: Config) -> QueueAdmin:
    return QueueAdmin(Path(cfg.storage.path), retention=cfg.storage.retention)


def retry(cfg: Config, args: argparse.Namespace) -> int:
    f = _filter(args)
    if f.state not in (None, "failed"):
        print(
            "dicom-router: retry moves dead letters (state failed) back to pending", file=sys.stderr
        )
        return 2
    with _admin(cfg) as q:
        n = q.retry_failed(f)
    print(f"{n} dead letter(s) back to pending")
    return 0


def purge(cfg: Config, args: argparse.Namespace) -> int:
    f = _filter(args)
    if not args.yes:
        if not sys.stdin.isatty():
            print("dicom-router: purge deletes data: confirm with --yes", file=sys.stderr)
            return 2
        answer = input("Delete the matching deliveries and their data for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    with _admin(cfg) as q:
        n = q.purge(f)
    print(f"{n} deleted")
    return 0


def run(cfg: Config, args: argparse.Namespace) -> int:
    storage = Path(cfg.storage.path)
    if not (storage / DB_NAME).exists():
        print(
            f"dicom-router: no queue in {storage} yet (the router has not run there)",
            file=sys.stderr,
        )
        return 1
    action = {"status": status, "list": list_, "retry": retry, "purge": purge}
    try:
        return action[args.queue_command](cfg, args)
    except RouterRunning:
        print(
            f"dicom-router: the router is running on {storage}: stop it to {args.queue_command}",
            file=sys.stderr,
        )
        return 1
    except (ValueError, sqlite3.Error) as e:
        print(f"dicom-router: {e}", file=sys.stderr)
        return 1

"""Command line: run, check, explain, queue, echo.

Every command takes ``--config FILE`` (default ``$DICOM_ROUTER_CONFIG``, else
``./router.yaml``). Errors are one readable line each, never a traceback: exit 1 for a
problem the user can fix (bad config, unreachable peer), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router import __version__
from router.config import Config, check, default_config_path, load_config
from router.problems import ConfigError
from router.rules.explain import explain_file
from router.store.records import State


def _load(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from router import logs
    from router.app import Router
    from router.store.records import RouterRunning

    cfg = _load(args.config)
    if cfg is None:
        return 1
    logs.setup(cfg.logging.format, cfg.logging.level, cfg.node_id)
    try:
        router = Router(args.config, cfg)
        anyio.run(router.run)
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # start-up failures come wrapped in task-group groups
        cause = _startup_failure(e)
        if cause is None:
            raise
        if isinstance(cause, RouterRunning):
            print(
                f"dicom-router: {cause}: stop it first, or give this one another storage.path",
                file=sys.stderr,
            )
        else:
            print(f"dicom-router: cannot start: {cause}", file=sys.stderr)
        return 1
    return 0


def _startup_failure(exc: BaseException) -> BaseException | None:
    """The operator-fixable error (port in use, storage not writable, another router
    on the storage, a queue database it cannot open) inside ``exc``, or None for
    anything else (a bug: traceback)."""
    from router.store.records import RouterRunning, StoreError

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, RouterRunning | StoreError | OSError) else None


def cmd_check(args: argparse.Namespace) -> int:
    problems = check(args.config)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg.rules)} rules, {len(cfg.destinations)} destinations)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    results = [
        _with_rules_not_matched(
            cfg, explain_file(cfg, f, calling_ae=args.calling_ae, called_ae=args.called_ae)
        )
        for f in args.files
    ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            _print_explanation(cfg, r)
    return 1 if any(r["error"] for r in results) else 0


def _with_rules_not_matched(cfg: Config, r: dict[str, Any]) -> dict[str, Any]:
    """Add ``not_matched`` (rules evaluated that did not match) and ``not_evaluated``
    (rules after a matching ``stop: true``)."""
    names = list(cfg.rules.names)
    matched = [m["rule"] for m in r["matched"]]
    end = len(names)
    if r["matched"] and r["matched"][-1]["stop"] and matched[-1] in names:
        end = names.index(matched[-1]) + 1
    if r["error"]:
        r["not_matched"], r["not_evaluated"] = [], names
    else:
        r["not_matched"] = [n for n in names[:end] if n not in matched]
        r["not_evaluated"] = names[end:]
    return r


def _print_explanation(cfg: Config, r: dict[str, Any]) -> None:
    print(f"{r['file']}:")
    if r["error"]:
        print(f"  error: {r['error']}")
        return
    print(f"  SOP class: {r['sop_class_uid'] or '-'}")
    print(f"  SOP instance: {r['sop_instance_uid'] or '-'}")
    print(f"  calling AE: {r['calling_ae'] or '-'}  called AE: {r['called_ae']}")
    if not r["matched"]:
        print("  no rule matched")
    for m in r["matched"]:
        where = f" ({m['file']}:{m['line']})" if m.get("file") else ""
        print(f"  rule {m['rule']}{where} matched -> {', '.join(m['forward']) or '(none)'}")
        for reason in m["reasons"]:
            print(f"    because {reason}")
    if r["not_matched"]:
        print(f"  rules not matched: {', '.join(r['not_matched'])}")
    if r["not_evaluated"]:
        print(f"  rules not evaluated (after stop): {', '.join(r['not_evaluated'])}")
    if r["unrouted"]:
        print("  destinations: none (it would be kept as unrouted)")
        return
    dests = []
    for name in r["destinations"]:
        d = cfg.destinations.get(name)
        dests.append(f"{name} ({d.address})" if d else name)
    print(f"  destinations: {', '.join(dests)}")
    for p in r.get("profiles", []):
        changes = p["changes"]
        n = len(changes)
        print(f"  profile {p['profile']} for {p['destination']}: {n} change{'s' * (n != 1)}")
        for c in changes:
            print(f"    {c['attribute']}: {c['action']}")


def cmd_echo(args: argparse.Namespace) -> int:
    import anyio

    from router.forward.destination import echo
    from router.forward.kind import TransportError

    cfg = _load(args.config)
    if cfg is None:
        return 1
    if args.destination not in cfg.destinations:
        known = ", ".join(cfg.destinations) or "none configured"
        print(
            f"dicom-router: no destination {args.destination!r} (known: {known})", file=sys.stderr
        )
        return 1
    dest = cfg.destinations[args.destination]

    async def round_trip() -> tuple[str, bool, float]:
        t0 = time.perf_counter()
        result = await echo(cfg, args.destination)
        return result.detail, result.ok, time.perf_counter() - t0

    try:
        detail, ok, rtt = anyio.run(round_trip)
    except (TransportError, OSError) as e:
        print(
            f"{args.destination} ({dest.address}): failed: {e}",
            file=sys.stderr,
        )
        return 1
    print(f"{args.destination} ({dest.address}): {detail}, round trip {rtt * 1000:.1f} ms")
    return 0 if ok else 1


def cmd_queue(args: argparse.Namespace) -> int:
    from router import queue_cli

    cfg = _load(args.config)
    if cfg is None:
        return 1
    return queue_cli.run(cfg, args)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=default_config_path(),
        metavar="FILE",
        help="config file (default: $DICOM_ROUTER_CONFIG, else ./router.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="dicom-router", description="Durable DICOM store-and-forward router."
    )
    parser.add_argument("--version", action="version", version=f"dicom-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the router in the foreground")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", parents=[common], help="validate the config and its rules")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser(
        "explain",
        parents=[common],
        help="show which rules match DICOM files and where they would go",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="DICOM_FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--calling-ae", default=None, help="calling AE title to assume")
    p.add_argument("--called-ae", default=None, help="called AE title to assume")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("echo", parents=[common], help="C-ECHO a configured destination")
    p.add_argument("destination")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser(
        "queue",
        help="inspect and repair the queue (through the running router, else on the database)",
    )
    qsub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    for name, text in (
        ("status", "deliveries per destination and state, with the oldest age"),
        ("list", "list deliveries (the first 1000 unless --limit)"),
        ("retry", "move dead letters (state failed) back to pending"),
        ("purge", "delete deliveries and their data (asks unless --yes)"),
        ("release", "send held series or studies now instead of waiting for their hold"),
    ):
        q = qsub.add_parser(name, parents=[common], help=text, description=text)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "status":
            continue
        q.add_argument(
            "--destination",
            help="only this destination's holds" if name == "release" else "only this destination",
        )
        if name != "release":
            q.add_argument(
                "--state",
                choices=[s.value for s in State],
                help="only deliveries in this state (unrouted: instances no rule matched)",
            )
            q.add_argument(
                "--older-than",
                dest="older_than",
                default=None,
                metavar="AGE",
                help="only instances received at least this long ago (e.g. 90s, 2h, 3d)",
            )
        q.add_argument(
            "--study", dest="study_uid", default=None, metavar="UID", help="Study Instance UID"
        )
        q.add_argument(
            "--series", dest="series_uid", default=None, metavar="UID", help="Series Instance UID"
        )
        if name != "release":
            q.add_argument("--limit", type=int, default=None, metavar="N", help="at most N")
        if name == "purge":
            q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_queue)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:  # `dicom-router queue list | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rc

"""What the operator commands and the operator HTTP API share: filters, the queue
status report, and plain-text tables.

Nothing here reads or changes the queue: the counts and entries come from
:mod:`router.store.admin`'s side of the queue (the running router's queue, or the
standalone administration when no router serves the API).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

from router.config import parse_duration
from router.store.records import Entry, Filter, QueueCounts, State

#: The filter keys of the API's query strings and JSON bodies (and of the CLI options).
FILTER_KEYS = ("destination", "state", "older_than", "study", "series", "limit")
#: ``queue list`` shows at most this many deliveries unless told otherwise.
DEFAULT_LIST_LIMIT = 1000
#: and never more than this many through the HTTP API in one answer
MAX_LIST_LIMIT = 100_000


def make_filter(params: Mapping[str, Any], *, extra: Collection[str] = ()) -> Filter:
    """A queue Filter from API parameters (query string or JSON body).

    Unknown keys are refused: a typo in a purge filter must not widen it to everything.
    Raises ValueError with a message for the operator.
    """
    unknown = sorted(set(params) - set(FILTER_KEYS) - set(extra))
    if unknown:
        raise ValueError(
            f"unknown filter {', '.join(unknown)}; valid filters: {', '.join(FILTER_KEYS)}"
        )

    def text(key: str) -> str | None:
        value = params.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected text, got {value!r}")
        return value

    older = params.get("older_than")
    min_age = None
    if older is not None and older != "":
        min_age = parse_duration(older)
    limit = params.get("limit")
    if isinstance(limit, str) and limit != "":
        if not limit.isdigit():
            raise ValueError(f"limit: expected a whole number, got {limit!r}")
        limit = int(limit)
    elif limit == "":
        limit = None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ValueError(f"limit: expected a whole number, got {limit!r}")
    state = text("state")
    return Filter(
        destination=text("destination"),
        state=None if state is None else State.parse(state),
        min_age=min_age,
        study_uid=text("study"),
        series_uid=text("series"),
        limit=limit,
    )


def filter_params(f: Filter) -> dict[str, Any]:
    """The inverse of :func:`make_filter` (None values left out), for API requests."""
    out: dict[str, Any] = {
        "destination": f.destination,
        "state": None if f.state is None else f.state.value,
        "older_than": None if f.min_age is None else f"{f.min_age:g}s",
        "study": f.study_uid,
        "series": f.series_uid,
        "limit": f.limit,
    }
    return {k: v for k, v in out.items() if v is not None}


def describe_filter(f: Filter) -> str:
    parts = [f"{k}={v}" for k, v in filter_params(f).items()]
    return " ".join(parts) if parts else "(no filter: everything)"


def entry_json(e: Entry) -> dict[str, Any]:
    return {**asdict(e), "state": e.state.value}


def entry_from_json(d: Mapping[str, Any]) -> Entry:
    fields: dict[str, Any] = {k: d.get(k) for k in Entry.__dataclass_fields__}
    fields["state"] = State.parse(fields["state"])
    return Entry(**fields)


def status_report(
    counts: QueueCounts,
    configured: Collection[str],
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Deliveries per destination and state with the age of the oldest (since receipt),
    unrouted instances, and instances not yet done, from a fresh count of the queue.

    ``{"destinations": {name: {"configured": bool, "states": {state: {"count": n,
    "oldest_age_seconds": s | None}}}}, "unrouted": {"count", "oldest_age_seconds"},
    "instances": n}``. Every configured destination and every state appears (count 0).
    """
    now = time.time() if now is None else now

    def age(t: float | None) -> float | None:
        return None if t is None else round(max(0.0, now - t), 3)

    names = sorted({d for d, _ in counts.deliveries} | set(configured))
    dests: dict[str, Any] = {
        n: {
            "configured": n in configured,
            "states": {
                s.value: {"count": 0, "oldest_age_seconds": None} for s in State.delivery_states()
            },
        }
        for n in names
    }
    for (dest, state), c in counts.deliveries.items():
        dests[dest]["states"][state.value] = {
            "count": c.count,
            "oldest_age_seconds": age(c.oldest),
        }
    return {
        "destinations": dests,
        "unrouted": {
            "count": counts.unrouted.count,
            "oldest_age_seconds": age(counts.unrouted.oldest),
        },
        "instances": counts.instances,
    }


# ----------------------------------------------------------------------------- text


def format_age(seconds: float | None) -> str:
    """``-``, ``45s``, ``5m03s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(rows: list[list[str]], *, right: Collection[int] = ()) -> str:
    """Columns padded to their widest cell; ``right``: indexes of right-aligned columns.
    Trailing spaces are stripped."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def status_table(report: Mapping[str, Any]) -> str:
    rows = [["DESTINATION", "STATE", "COUNT", "OLDEST"]]
    for name, d in report["destinations"].items():
        label = name if d["configured"] else f"{name} (not in config)"
        for state in State.delivery_states():
            st = d["states"][state.value]
            rows.append(
                [label, state.value, str(st["count"]), format_age(st["oldest_age_seconds"])]
            )
    u = report["unrouted"]
    rows.append(
        [
            "(no rule matched)",
            State.UNROUTED.value,
            str(u["count"]),
            format_age(u["oldest_age_seconds"]),
        ]
    )
    text = table(rows, right={2, 3})
    return text + f"\n\ninstances not yet delivered everywhere: {report['instances']}"


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _due(e: Entry) -> str:
    """When it goes out: a pending delivery's due time; a held one's release time and
    the limit that sets it (quiet: unless another instance of its group arrives first)."""
    if e.state is State.PENDING:
        return _fmt_time(e.due_at)
    if e.state is State.HELD and e.release_at is not None:
        return f"{_fmt_time(e.release_at)} ({e.release_reason or '?'})"
    return "-"


def entries_table(entries: list[Entry]) -> str:
    rows = [["INSTANCE", "DESTINATION", "STATE", "ATTEMPTS", "RECEIVED", "DUE", "LAST"]]
    for e in entries:
        last = "-" if e.last_status is None else f"{e.last_status:04x}"
        if e.last_error:
            last = e.last_error if last == "-" else f"{last} {e.last_error}"
        due = _due(e)
        rows.append(
            [
                e.instance_id,
                e.destination or "-",
                e.state.value,
                str(e.attempts),
                _fmt_time(e.received_at),
                due,
                last,
            ]
        )
    return table(rows, right={3})

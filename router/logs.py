"""Structured logging: one event a line, as JSON, logfmt or a human-readable form.

Callers log an event name plus key=value fields (``log.info("stored", extra=fields(...))``
or the ``event`` helper). Fields are whatever the caller passes, so the rule that no
patient name or ID is ever logged is kept at the call sites: they pass UIDs, AE titles,
router ids, sizes and statuses, never data set values.

``node``: the node's id (``node_id``). In the JSON and logfmt formats, the ones collected
from every node of a cluster into one place, each line carries it (right after
``logger``); the human format, read on one node's terminal, shows it on the ``started``
line only, which passes it as a field.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

LogFormat = Literal["json", "logfmt", "human"]

# Where ``event`` leaves the fields it passed, so formatters need not scan the record's
# attributes for them (the scan was a measurable part of the per-instance cost).
_FIELDS_ATTR = "_router_fields"

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    _FIELDS_ATTR,
}


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    known = record.__dict__.get(_FIELDS_ATTR)
    if known is not None:
        return known  # type: ignore[no-any-return]
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


_second: list[Any] = [None, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS." prefix]


def _timestamp(record: logging.LogRecord) -> str:
    """UTC with milliseconds; the text of the second is formatted once per second."""
    sec = int(record.created)
    cached = _second
    if cached[0] != sec:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        cached[0] = sec
    return f"{cached[1]}{int(record.msecs):03d}Z"


_LEVELS: dict[str, str] = {}


def _level(record: logging.LogRecord) -> str:
    name = record.levelname
    low = _LEVELS.get(name)
    if low is None:
        low = _LEVELS[name] = name.lower()
    return low


class _NodeFormatter(logging.Formatter):
    """A formatter that knows the node's id (None: not named)."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node


class JsonFormatter(_NodeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": _level(record),
            "logger": record.name,
        }
        if self.node is not None:
            out["node"] = self.node
        out["event"] = record.getMessage()
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


_NEEDS_QUOTES = re.compile(r'[ ="\\\n]')


def _logfmt_value(value: Any) -> str:
    if type(value) is int:  # the common case: ids and sizes
        return str(value)
    s = str(value)
    if s == "" or _NEEDS_QUOTES.search(s) is not None:
        return json.dumps(s)
    return s


class LogfmtFormatter(_NodeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={_level(record)}",
            f"logger={record.name}",
        ]
        fields = _fields(record)
        if self.node is not None:
            parts.append(f"node={_logfmt_value(self.node)}")
            if "node" in fields:  # the node's own id already leads the line
                fields = {k: v for k, v in fields.items() if k != "node"}
        parts.append(f"event={_logfmt_value(record.getMessage())}")
        parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class HumanFormatter(_NodeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())
        line = f"{clock} {record.levelname:<7} {record.getMessage()}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


FORMATTERS: dict[str, type[_NodeFormatter]] = {
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
    "human": HumanFormatter,
}


def setup(fmt: str = "human", level: str = "INFO", node: str | None = None) -> None:
    """Route every ``router.*`` logger to stderr in the chosen format; ``node``: the
    node's id, on every line of the machine formats."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS.get(fmt, HumanFormatter)(node))
    root = logging.getLogger("router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event with its fields; the cheap path when the level is disabled.

    The record is the one ``logger.log(level, name, extra=fields)`` would make (fields
    as attributes, so handlers and caplog see them), with the caller taken from one
    frame up instead of a walk of the stack, and the fields remembered for the
    formatters."""
    if logger.isEnabledFor(level):
        caller = sys._getframe(1)
        code = caller.f_code
        record = logger.makeRecord(
            logger.name,
            level,
            code.co_filename,
            caller.f_lineno,
            name,
            (),
            None,
            code.co_name,
            fields,
        )
        record.__dict__[_FIELDS_ATTR] = fields
        logger.handle(record)

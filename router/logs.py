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
import sys
import time
from typing import Any, Literal

LogFormat = Literal["json", "logfmt", "human"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class _NodeFormatter(logging.Formatter):
    """A formatter that knows the node's id (None: not named)."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node


class JsonFormatter(_NodeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.node is not None:
            out["node"] = self.node
        out["event"] = record.getMessage()
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def _logfmt_value(value: Any) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' ="\\\n'):
        return json.dumps(s)
    return s


class LogfmtFormatter(_NodeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
        ]
        fields = _fields(record)
        if self.node is not None:
            parts.append(f"node={_logfmt_value(self.node)}")
            fields.pop("node", None)
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
    """Log one event with its fields; the cheap path when the level is disabled."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra=fields)

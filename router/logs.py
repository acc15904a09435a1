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

import contextlib
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


def _stamp(created: float, msecs: int) -> str:
    """UTC with milliseconds; the text of the second is formatted once per second."""
    sec = int(created)
    cached = _second
    if cached[0] != sec:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        cached[0] = sec
    return f"{cached[1]}{msecs:03d}Z"


_LEVELS: dict[str, str] = {}


def _low(name: str) -> str:
    low = _LEVELS.get(name)
    if low is None:
        low = _LEVELS[name] = name.lower()
    return low


class _NodeFormatter(logging.Formatter):
    """A formatter that knows the node's id (None: not named). :meth:`line` makes the
    text of one event from its parts, so :func:`event` can write a line without a
    LogRecord; :meth:`format` makes the same text from a record."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def line(
        self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]
    ) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(
            record.created, record.levelname, record.name, record.getMessage(), _fields(record)
        )
        if record.exc_info:
            text = self.with_exception(text, self.formatException(record.exc_info))
        return text

    def with_exception(self, text: str, exc: str) -> str:
        return f"{text} exc={_logfmt_value(exc)}"


class JsonFormatter(_NodeFormatter):
    def line(
        self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]
    ) -> str:
        return json.dumps(self._obj(created, level, logger, event, fields), **_JSON)

    def _obj(
        self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": _stamp(created, int((created - int(created)) * 1000)),
            "level": _low(level),
            "logger": logger,
        }
        if self.node is not None:
            out["node"] = self.node
        out["event"] = event
        out.update(fields)
        return out

    def format(self, record: logging.LogRecord) -> str:
        out = self._obj(
            record.created, record.levelname, record.name, record.getMessage(), _fields(record)
        )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, **_JSON)


_JSON: dict[str, Any] = {"default": str, "separators": (",", ":")}
_NEEDS_QUOTES = re.compile(r'[ ="\\\n]')


def _logfmt_value(value: Any) -> str:
    if type(value) is int:  # the common case: ids and sizes
        return str(value)
    s = str(value)
    if s == "" or _NEEDS_QUOTES.search(s) is not None:
        return json.dumps(s)
    return s


class LogfmtFormatter(_NodeFormatter):
    def line(
        self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]
    ) -> str:
        parts = [
            f"ts={_stamp(created, int((created - int(created)) * 1000))}",
            f"level={_low(level)}",
            f"logger={logger}",
        ]
        if self.node is not None:
            parts.append(f"node={_logfmt_value(self.node)}")
            if "node" in fields:  # the node's own id already leads the line
                fields = {k: v for k, v in fields.items() if k != "node"}
        parts.append(f"event={_logfmt_value(event)}")
        parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items()]
        return " ".join(parts)


class HumanFormatter(_NodeFormatter):
    def line(
        self, created: float, level: str, logger: str, event: str, fields: Mapping[str, Any]
    ) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(created))
        extra = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        text = f"{clock} {level:<7} {event}"
        if extra:
            text += f"  {extra}"
        return text

    def with_exception(self, text: str, exc: str) -> str:
        return f"{text}\n{exc}"


FORMATTERS: dict[str, type[_NodeFormatter]] = {
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
    "human": HumanFormatter,
}


#: The handler :func:`setup` installed: :func:`event` writes to it directly while it is
#: the only place a router record would go.
_installed: logging.StreamHandler[Any] | None = None


def setup(fmt: str = "human", level: str = "INFO", node: str | None = None) -> None:
    """Route every ``router.*`` logger to stderr in the chosen format; ``node``: the
    node's id, on every line of the machine formats."""
    global _installed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS.get(fmt, HumanFormatter)(node))
    root = logging.getLogger("router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    _installed = handler


def _direct(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The installed handler when a record from ``logger`` would reach it and nothing
    else: no filter on the way, no other handler (a test's capture, say). Then the
    line can be written without the LogRecord the logging module would make for it."""
    handler = _installed
    if handler is None or handler.filters or level < handler.level:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            if node.handlers != [handler] or node.propagate:
                return None
            return handler
        if not node.propagate:
            return None
        node = node.parent
    return None


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event with its fields; the cheap path when the level is disabled.

    When only :func:`setup`'s handler would see it, the line is formatted and written
    straight to it: the same text as through the logging module, at about a third of
    the cost (making the LogRecord alone cost as much as formatting the line, and
    every instance logs a line). Otherwise the record is the one
    ``logger.log(level, name, extra=fields)`` would make (fields as attributes, so
    handlers and caplog see them), with the caller taken from one frame up instead of
    a walk of the stack, and the fields remembered for the formatters."""
    if logger.disabled or not logger.isEnabledFor(level):
        return
    handler = _direct(logger, level)
    if handler is not None:
        fmt = handler.formatter
        if isinstance(fmt, _NodeFormatter):
            text = fmt.line(time.time(), logging.getLevelName(level), logger.name, name, fields)
            with handler.lock or contextlib.nullcontext():
                try:
                    handler.stream.write(text + handler.terminator)
                    handler.flush()
                except Exception:  # as StreamHandler.emit: a broken stream is not ours
                    handler.handleError(_record(logger, level, name, fields))
            return
    logger.handle(_record(logger, level, name, fields))


def _record(
    logger: logging.Logger, level: int, name: str, fields: dict[str, Any]
) -> logging.LogRecord:
    caller = sys._getframe(2)
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
    return record

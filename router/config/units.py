"""Durations and byte sizes as operators write them (``250ms``, ``5m``, ``1h30m``,
``512KiB``, ``1GB``), parsed to seconds and bytes with messages saying how to write them."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["GiB", "KiB", "MiB", "parse_duration", "parse_size"]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?$", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}
_DURATION_HINT: Final = "write seconds (30) or e.g. 250ms, 2s, 5m, 1h, 1h30m"
_SIZE_HINT: Final = "write bytes (1048576) or e.g. 512KiB, 1MiB, 1GiB, 1GB"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``250ms``, ``2s``, ``5m``, ``1h30m``, ``1d``.

    Raises ValueError with a message for people.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos and text[pos : m.start()].strip():
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
                pos = m.end()
            if pos == 0 or text[pos:].strip():
                raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}") from None
    else:
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration (must be 0 or more): {_DURATION_HINT}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a string like ``512KiB``, ``1GiB``, ``1GB`` (KB = 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
    if isinstance(value, int):
        n = float(value)
    elif isinstance(value, float):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value.strip())
        if not m:
            raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
        n = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
    if n < 0 or n != n or n == float("inf"):
        raise ValueError(f"{value!r} is not a size (must be 0 or more): {_SIZE_HINT}")
    return int(n)

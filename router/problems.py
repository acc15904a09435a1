"""What is wrong with a config or rule file, said so an operator can fix it.

A :class:`Problem` is one readable line (``router.yaml:14: destinations.pacs.port: 70000
is not a port (1-65535)``); a :class:`ConfigError` carries every problem found in one
load, so ``dicom-router check`` can list them all at once instead of making the operator
fix them one by one. Config loading and rule parsing both report through these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a config or rule file: where it is, and how to fix it."""

    file: str
    line: int | None  # 1-based; None when no single line is to blame
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The config or its rules are invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

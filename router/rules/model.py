"""Data model shared by config loading and rules: problems, rules, route results.

Everything here is immutable. A :class:`Problem` is one readable line for an operator
(``router.yaml:14: destinations.pacs.port: 70000 is not a port (1-65535)``); a
:class:`ConfigError` carries every problem found in one load, so ``check`` can list them
all at once instead of making the operator fix them one by one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


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


class Condition(Protocol):
    """A compiled ``match``: a pure predicate over (header, calling AE, called AE)."""

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool: ...

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        """Like ``__call__``; when true, appends to ``out`` why it held."""
        ...

    def describe(self) -> str:
        """The condition as text, e.g. ``BodyPartExamined regex '(?i)chest'``."""
        ...


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A rule that matched an instance; ``reasons`` are filled only by ``explain``."""

    name: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteResult:
    """Where an instance goes. Empty ``destinations``: unrouted (kept and counted)."""

    destinations: tuple[str, ...]
    matches: tuple[RuleMatch, ...]

    @property
    def unrouted(self) -> bool:
        return not self.destinations


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule, with the place it was written for messages and ``explain``."""

    name: str
    condition: Condition
    forward: tuple[str, ...]
    stop: bool = False
    description: str = ""
    file: str = "<inline>"
    line: int | None = None
    tags: frozenset[int] = field(default=frozenset())  # DICOM tags the condition reads
    # Prebuilt result record so that routing allocates nothing per matched rule.
    record: RuleMatch = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "record", RuleMatch(self.name))

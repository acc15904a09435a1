"""Data model of compiled rules: conditions, rules, route results.

Everything here is immutable, so a compiled rule set can be shared by every association
and swapped whole on reload. Problems found while parsing are
:class:`router.problems.Problem`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


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

"""What rule parsing needs to know, and where it reports problems."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from router.problems import Problem
from router.yamlsrc import line_of

__all__ = ["RuleContext"]


@dataclass
class RuleContext:
    """Parsing state shared by every rule of one load: problems go here, not up the stack,
    so one ``check`` lists every problem of every rule file."""

    base_dir: Path  # relative rule paths/globs start here (the config file's directory)
    display_dir: str  # how base_dir is written in messages ('' = as the user wrote it)
    destinations: Collection[str] | None = None  # None: do not check forward targets
    problems: list[Problem] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # rule name -> "file:line"

    def problem(self, file: str, node: yaml.Node | None, message: str) -> None:
        self.problems.append(Problem(file, line_of(node) if node is not None else None, message))

"""YAML source with a file and line for every value, shared by config loading and rules.

Config and rule files are read as YAML *nodes* (``yaml.compose``), not as constructed
Python values, for two reasons: every node knows its line, so every problem can name
``file:line``; and a plain scalar keeps its text exactly as written. YAML 1.1 would
otherwise turn ``PatientID: 0012345`` into the octal number 5349, ``Modality: NO`` into
``False`` and the UID ``1.2`` into a float; rule values are compared with the text the
user wrote. Nothing here raises for bad input: problems are returned or appended to a
list, each one a :class:`~router.problems.Problem`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from router.problems import Problem

__all__ = [
    "NULL_TAG",
    "STR_TAG",
    "Located",
    "YPath",
    "compose_text",
    "is_null",
    "kind",
    "line_of",
    "load_yaml",
    "mapping_items",
    "scalar_value",
    "suggest",
]

NULL_TAG: Final = "tag:yaml.org,2002:null"
STR_TAG: Final = "tag:yaml.org,2002:str"

#: Where a value sits in a YAML tree: mapping keys and list indexes from the root.
YPath = tuple[str | int, ...]


def load_yaml(path: Path, display: str) -> tuple[yaml.Node | None, list[Problem]]:
    """Compose one YAML file into a node tree; (None, []) for an empty file.

    ``display`` is how the file is named in problems (as the user wrote it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(display, None, "file not found")]
    except IsADirectoryError:
        return None, [Problem(display, None, "is a directory, not a YAML file")]
    except UnicodeDecodeError as e:
        return None, [Problem(display, None, f"not UTF-8 text ({e.reason} at byte {e.start})")]
    except OSError as e:
        return None, [Problem(display, None, f"cannot read: {e.strerror or e}")]
    return compose_text(text, display)


def compose_text(text: str, display: str) -> tuple[yaml.Node | None, list[Problem]]:
    """Compose YAML text into a node tree, or one problem naming the line of the error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), []
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = e.problem or "invalid YAML"
        ctx = f" ({e.context})" if e.context else ""
        hint = ""
        if "mapping values are not allowed" in what:
            hint = ": check the indentation, and quote values that contain ': '"
        elif "found character '\\t'" in what:
            hint = ": indent with spaces, not tabs"
        return None, [Problem(display, line, f"YAML syntax error: {what}{ctx}{hint}")]
    except yaml.YAMLError as e:
        return None, [Problem(display, None, f"YAML error: {e}")]


def line_of(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return int(node.start_mark.line) + 1


def is_null(node: yaml.Node) -> bool:
    """An empty value (``key:`` with nothing, ``~`` or ``null``)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def scalar_value(node: yaml.ScalarNode) -> object:
    """The Python value YAML gives a scalar (int, float, bool, None, str, ...)."""
    ctor = yaml.constructor.SafeConstructor()
    return ctor.construct_object(node, deep=True)


def mapping_items(
    node: yaml.MappingNode, display: str, problems: list[Problem]
) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    """(key text, key node, value node) of a mapping; reports non-text and duplicate keys."""
    seen: dict[str, int] = {}
    for knode, vnode in node.value:
        if not isinstance(knode, yaml.ScalarNode):
            problems.append(Problem(display, line_of(knode), "a key must be plain text"))
            continue
        key = str(knode.value)
        if key in seen:
            problems.append(
                Problem(
                    display,
                    line_of(knode),
                    f"duplicate key '{key}' (first on line {seen[key]}): remove one",
                )
            )
            continue
        seen[key] = line_of(knode)
        yield key, knode, vnode


def suggest(word: str, choices: Iterable[str], *, n: int = 1) -> str:
    """`` (did you mean 'x'?)`` or ''; case-insensitive."""
    lowered: dict[str, str] = {}
    for c in choices:
        lowered.setdefault(c.lower(), c)
    close = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{lowered[c]}'" for c in close) + "?)"


def kind(node: yaml.Node) -> str:
    """What a node holds, for messages: ``a mapping``, ``a list``, ``nothing`` or its text."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == NULL_TAG:
        return "nothing"
    return repr(str(node.value))


class Located:
    """Plain Python values of a YAML tree plus the line of every value and key.

    For validating the tree with a schema (pydantic) and mapping each error's location
    back to the line it came from.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self.value_lines: dict[YPath, int] = {}
        self.key_lines: dict[YPath, int] = {}

    def convert(self, node: yaml.Node, path: YPath = ()) -> Any:
        """The node as dicts, lists and scalars; records lines on the way."""
        self.value_lines[path] = line_of(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key, knode, vnode in mapping_items(node, self.file, self.problems):
                self.key_lines[(*path, key)] = line_of(knode)
                out[key] = self.convert(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(n, (*path, i)) for i, n in enumerate(node.value)]
        try:
            return scalar_value(node)  # type: ignore[arg-type]
        except yaml.YAMLError as e:
            self.problems.append(Problem(self.file, line_of(node), f"{e}"))
            return None

    def line(self, path: YPath, *, key: bool = False) -> int | None:
        """The line of the value at ``path`` (of its key with ``key``), else of the
        nearest enclosing value; None when nothing on the path was seen."""
        p = path
        if key and p in self.key_lines:
            return self.key_lines[p]
        while p:
            if p in self.value_lines:
                return self.value_lines[p]
            p = p[:-1]
        return None

"""PS3.15 Table E.1-1 as data, and the one rule that turns a row and options into an action.

The table itself is ``table_e1_1.json`` beside this module (every row of the standard's
table, with its source edition and licence); nothing here picks a subset. What this module
adds is the resolution the standard leaves to the implementer:

- Compound basic actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) depend on the
  attribute's Type in the IOD, which the router does not track per SOP class. It takes the
  choice that keeps the instance valid without keeping anything identifying: ``Z`` for
  ``X/Z``, ``D`` for ``X/D``, ``Z/D`` and ``X/Z/D``, and ``U`` (the sequence is kept, the
  UIDs inside it replaced) for ``X/Z/U*``. For a sequence a dummy is not meaningful, so
  ``X/D`` removes it and ``Z/D`` / ``X/Z/D`` empty it.
- Options: a selected option whose column has an entry for the row overrides the basic
  action. When several selected options have entries, ``K`` (keep) wins over ``C`` (clean).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Final

#: the option names of the profile, in the column order of Table E.1-1
OPTIONS: Final[tuple[str, ...]] = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)


class Action(StrEnum):
    """The resolved action for one attribute (PS3.15 E.1.1 action codes)."""

    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of Table E.1-1."""

    tag: str  #: as printed in the standard: ``(0010,0010)``, ``(50XX,XXXX)``, ``(gggg,eeee)``
    name: str
    basic: str  #: the basic profile's action code, compound codes included
    options: Mapping[str, str]  #: option name -> ``K`` or ``C`` where the column has one

    @property
    def value(self) -> int | None:
        """The tag as an int; None for a masked row (``50XX``) or the private row."""
        m = _PLAIN.fullmatch(self.tag)
        return int(m[1] + m[2], 16) if m else None


_PLAIN: Final = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
_SEQUENCE_CHOICE: Final = {"X/D": "X", "Z/D": "Z", "X/Z/D": "Z", "X/Z": "Z", "X/Z/U*": "U"}
_OTHER_CHOICE: Final = {"X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z": "Z", "X/Z/U*": "U"}


def basic_action(code: str, *, sequence: bool) -> Action:
    """The single action this router takes for a (possibly compound) basic action code."""
    choice = (_SEQUENCE_CHOICE if sequence else _OTHER_CHOICE).get(code, code)
    return Action(choice)


def effective_action(row: Row, options: frozenset[str], *, sequence: bool) -> Action:
    """The action for ``row`` under the selected ``options`` (see the module docstring)."""
    entries = {row.options[o] for o in options if o in row.options}
    if "K" in entries:
        return Action.KEEP
    if "C" in entries:
        return Action.CLEAN
    return basic_action(row.basic, sequence=sequence)


@dataclass(frozen=True, slots=True)
class Table:
    """Table E.1-1, indexed for lookups by tag."""

    edition: str
    rows: tuple[Row, ...]
    by_tag: Mapping[int, Row]
    private: Row  #: the row for private attributes
    curve: Row  #: (50xx,xxxx) Curve Data
    overlay: Mapping[int, Row]  #: element of (60xx,eeee) -> row

    def row_for(self, tag: int) -> Row | None:
        """The row governing ``tag`` (a public or repeating-group tag); None when the
        table does not list it (the basic profile then keeps it)."""
        row = self.by_tag.get(tag)
        if row is not None:
            return row
        group, element = tag >> 16, tag & 0xFFFF
        if group & 0xFF01 == 0x5000:
            return self.curve
        if group & 0xFF01 == 0x6000:
            return self.overlay.get(element)
        return None


@cache
def table() -> Table:
    """The packaged Table E.1-1."""
    text = resources.files(__package__).joinpath("table_e1_1.json").read_text("utf-8")
    data = json.loads(text)
    rows = tuple(
        Row(r["tag"], r["name"], r["basic"], dict(r["options"])) for r in data["attributes"]
    )
    by_tag = {v: r for r in rows if (v := r.value) is not None}
    private = next(r for r in rows if r.tag == "(gggg,eeee)")
    curve = next(r for r in rows if r.tag == "(50XX,XXXX)")
    overlay = {int(r.tag[6:10], 16): r for r in rows if r.tag.startswith("(60XX,")}
    return Table(data["edition"], rows, by_tag, private, curve, overlay)

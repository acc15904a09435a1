"""Compiled rule matchers and the routing engine: pure, no I/O, called for every instance.

Matching works on the *components* of an element: its values with padding removed
(spaces, and the NUL that pads UIDs), empty values dropped. Multi-valued elements have
several components; an absent or empty element has none. Every value test holds when
*any* component satisfies it, except ``present`` (which looks at whether there is one)
and ``not`` (which negates the test it wraps). Numbers stay numbers: pydicom decodes
IS, DS, US, SS, UL, SL, FL, FD, ... to int/float, and those compare numerically with
``=``, ``gt``, ``ge``, ``lt``, ``le``; every other element compares as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from pydicom.dataset import Dataset
from pydicom.multival import ConstrainedList

from router.dicom import uids
from router.rules.model import Condition, RouteResult, Rule, RuleMatch

if TYPE_CHECKING:
    Component = str | int | float | Dataset

__all__ = [
    "AllMatch",
    "AllOf",
    "Always",
    "AnyMatch",
    "AnyOf",
    "Compare",
    "Equals",
    "Glob",
    "KeyCondition",
    "NotMatch",
    "NotValue",
    "Present",
    "Regex",
    "RuleEngine",
    "ValueTest",
    "components",
]

_EMPTY: Final[tuple[()]] = ()
_PAD: Final = " \x00"


def _norm(v: object) -> Any:
    """One component: str (padding stripped), int/float, or a sequence item; None if empty."""
    if isinstance(v, str):
        return v.strip(_PAD) or None
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("latin-1").strip(_PAD) or None
    if isinstance(v, Dataset):
        return v
    return str(v).strip(_PAD) or None  # PersonName, and anything else pydicom hands us


def components(ds: Dataset, tag: int) -> tuple[Any, ...]:
    """The non-empty values of element ``tag`` in ``ds`` (file meta for group 0002).

    Never raises: an element pydicom cannot decode counts as absent, so a sender's bad
    bytes cannot break routing.
    """
    try:
        if tag >> 16 == 0x0002:
            meta = getattr(ds, "file_meta", None)
            elem = meta.get(tag) if meta is not None else None
        else:
            elem = ds.get(tag)
        if elem is None:
            return _EMPTY
        value = elem.value
        if value is None:
            return _EMPTY
        if isinstance(value, str | bytes | int | float):
            one = _norm(value)
            return _EMPTY if one is None else (one,)
        if isinstance(value, list | tuple | ConstrainedList):
            out = [c for c in (_norm(v) for v in value) if c is not None]
            return tuple(out)
        one = _norm(value)
        return _EMPTY if one is None else (one,)
    except Exception:
        return _EMPTY


def _text(c: Any) -> str:
    return c if isinstance(c, str) else str(c)


def _number(c: Any) -> float | None:
    if isinstance(c, int | float):
        return float(c)
    if isinstance(c, str):
        try:
            return float(c)
        except ValueError:
            return None
    return None


def uid_label(uid: str) -> str:
    """``1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)``, or the UID alone."""
    return uids.label(uid)


def _show(comps: tuple[Any, ...], uid: bool) -> str:
    if not comps:
        return "absent or empty"
    shown = [uid_label(c) if uid and isinstance(c, str) else _text(c) for c in comps]
    if len(shown) == 1:
        return repr(shown[0]) if not uid else shown[0]
    return "[" + ", ".join(shown if uid else [repr(s) for s in shown]) + "]"


# ---------------------------------------------------------------- value tests


class ValueTest:
    """A test over an element's components."""

    __slots__ = ()

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Equals(ValueTest):
    """Scalar or list of scalars: any component equals any expected value."""

    __slots__ = ("_shown", "numbers", "strings")

    def __init__(self, strings: Iterable[str], numbers: Iterable[float], shown: str) -> None:
        self.strings = frozenset(strings)
        self.numbers = frozenset(numbers)
        self._shown = shown

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        strings, numbers = self.strings, self.numbers
        for c in comps:
            if isinstance(c, str):
                if c in strings:
                    return True
            elif isinstance(c, int | float) and numbers and float(c) in numbers:
                return True
        return False

    def describe(self) -> str:
        return self._shown


class Regex(ValueTest):
    """``regex``: re.search (anywhere in the value; anchor with ^...$ for a whole match)."""

    __slots__ = ("pattern",)

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        search = self.pattern.search
        return any(search(_text(c)) is not None for c in comps if not isinstance(c, Dataset))

    def describe(self) -> str:
        return f"regex {self.pattern.pattern!r}"


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """``*`` any run of characters, ``?`` one character, everything else literal."""
    parts = ("." if ch == "?" else ".*" if ch == "*" else re.escape(ch) for ch in glob)
    return re.compile("".join(parts), re.DOTALL)


class Glob(ValueTest):
    """``glob``: the whole value matches; ``*`` and ``?`` are the only wildcards."""

    __slots__ = ("glob", "pattern")

    def __init__(self, glob: str) -> None:
        self.glob = glob
        self.pattern = glob_to_regex(glob)

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        fullmatch = self.pattern.fullmatch
        return any(fullmatch(_text(c)) is not None for c in comps if not isinstance(c, Dataset))

    def describe(self) -> str:
        return f"glob {self.glob!r}"


class Present(ValueTest):
    """``present: true``: the element exists with a non-empty value; ``false``: it does not."""

    __slots__ = ("want",)

    def __init__(self, want: bool) -> None:
        self.want = want

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        return bool(comps) is self.want

    def describe(self) -> str:
        return "present" if self.want else "absent or empty"


_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "gt": float.__gt__,
    "ge": float.__ge__,
    "lt": float.__lt__,
    "le": float.__le__,
}
_OP_TEXT: Final = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class Compare(ValueTest):
    """``gt``/``ge``/``lt``/``le``: a numeric component (or text that reads as a number,
    so DA dates and TM times compare too) satisfies the comparison."""

    __slots__ = ("_fn", "bound", "op")

    def __init__(self, op: str, bound: float) -> None:
        self.op = op
        self.bound = float(bound)
        self._fn = _OPS[op]

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        fn, bound = self._fn, self.bound
        for c in comps:
            x = _number(c)
            if x is not None and fn(x, bound):
                return True
        return False

    def describe(self) -> str:
        b = self.bound
        shown = str(int(b)) if b.is_integer() and abs(b) < 1e16 else repr(b)
        return f"{_OP_TEXT[self.op]} {shown}"


class NotValue(ValueTest):
    """``not: <value>``: the wrapped value test does not hold (true when absent)."""

    __slots__ = ("inner",)

    def __init__(self, inner: ValueTest) -> None:
        self.inner = inner

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        return not self.inner(comps)

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"


class AllOf(ValueTest):
    """A mapping with several operators: every one holds."""

    __slots__ = ("tests",)

    def __init__(self, tests: Sequence[ValueTest]) -> None:
        self.tests = tuple(tests)

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        return all(t(comps) for t in self.tests)

    def describe(self) -> str:
        return " and ".join(t.describe() for t in self.tests)


class AnyOf(ValueTest):
    """A list mixing scalars and operators: any one holds."""

    __slots__ = ("tests",)

    def __init__(self, tests: Sequence[ValueTest]) -> None:
        self.tests = tuple(tests)

    def __call__(self, comps: tuple[Any, ...]) -> bool:
        return any(t(comps) for t in self.tests)

    def describe(self) -> str:
        return "any of (" + "; ".join(t.describe() for t in self.tests) + ")"


# ---------------------------------------------------------------- conditions

CALLING_AE: Final = "calling_ae"
CALLED_AE: Final = "called_ae"


class KeyCondition:
    """One ``match`` entry: an element (or calling_ae/called_ae) and its value test."""

    __slots__ = ("key", "tag", "test", "uid", "which")

    def __init__(self, key: str, tag: int | None, test: ValueTest, *, uid: bool = False) -> None:
        self.key = key  # as shown to people: keyword, tag text, calling_ae or called_ae
        self.tag = tag  # None for calling_ae / called_ae
        self.which = 1 if key == CALLING_AE and tag is None else 2 if tag is None else 0
        self.test = test
        self.uid = uid

    def _comps(self, ds: Dataset, calling_ae: str, called_ae: str) -> tuple[Any, ...]:
        if self.which == 0:
            return components(ds, self.tag)  # type: ignore[arg-type]
        ae = (calling_ae if self.which == 1 else called_ae).strip(_PAD)
        return (ae,) if ae else _EMPTY

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        return self.test(self._comps(ds, calling_ae, called_ae))

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        comps = self._comps(ds, calling_ae, called_ae)
        ok = self.test(comps)
        if ok:
            out.append(f"{self.key} {_show(comps, self.uid)} matched {self.test.describe()}")
        return ok

    def describe(self) -> str:
        return f"{self.key} {self.test.describe()}"


class Always:
    """A rule without ``match``: every instance."""

    __slots__ = ()

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        return True

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        out.append("no match: the rule applies to every instance")
        return True

    def describe(self) -> str:
        return "every instance"


class AllMatch:
    """``all: [...]`` and the entries of one ``match`` mapping: every one holds."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        for c in self.children:  # noqa: SIM110 (a plain loop: no generator per call)
            if not c(ds, calling_ae, called_ae):
                return False
        return True

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        mark = len(out)
        for c in self.children:
            if not c.explain(ds, calling_ae, called_ae, out):
                del out[mark:]
                return False
        return True

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.children) + ")"


class AnyMatch:
    """``any: [...]``: at least one holds (the explanation names the first that did)."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        for c in self.children:  # noqa: SIM110 (a plain loop: no generator per call)
            if c(ds, calling_ae, called_ae):
                return True
        return False

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        return any(c.explain(ds, calling_ae, called_ae, out) for c in self.children)

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.children) + ")"


class NotMatch:
    """``not: {match}``: the wrapped match does not hold."""

    __slots__ = ("inner",)

    def __init__(self, inner: Condition) -> None:
        self.inner = inner

    def __call__(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        return not self.inner(ds, calling_ae, called_ae)

    def explain(self, ds: Dataset, calling_ae: str, called_ae: str, out: list[str]) -> bool:
        ok = not self.inner(ds, calling_ae, called_ae)
        if ok:
            out.append(f"not ({self.inner.describe()}): it does not hold")
        return ok

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"


# ---------------------------------------------------------------- engine


class RuleEngine:
    """The compiled rule set. Immutable; build a new one to change rules (hot reload).

    ``route`` is the hot path: every matching rule adds its destinations (each once, in
    file order); a matching rule with ``stop: true`` ends evaluation; no match leaves the
    instance unrouted (empty ``destinations``).
    """

    __slots__ = ("_rules", "tags")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: tuple[Rule, ...] = tuple(rules)
        tags: set[int] = set()
        for r in self._rules:
            tags |= r.tags
        #: Every DICOM tag the rules read (for dcmread(specific_tags=...) at ingest).
        self.tags: frozenset[int] = frozenset(tags)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleEngine({len(self._rules)} rules)"

    def route(self, ds: Dataset, calling_ae: str = "", called_ae: str = "") -> RouteResult:
        """Destinations for one instance; ``matches`` name the rules without reasons."""
        dests: list[str] = []
        matches: list[RuleMatch] = []
        for rule in self._rules:
            if rule.condition(ds, calling_ae, called_ae):
                matches.append(rule.record)
                for d in rule.forward:
                    if d not in dests:
                        dests.append(d)
                if rule.stop:
                    break
        return RouteResult(tuple(dests), tuple(matches))

    def explain(self, ds: Dataset, calling_ae: str = "", called_ae: str = "") -> RouteResult:
        """Like ``route``, with the reasons each rule matched (slower; for people)."""
        dests: list[str] = []
        matches: list[RuleMatch] = []
        for rule in self._rules:
            reasons: list[str] = []
            if rule.condition.explain(ds, calling_ae, called_ae, reasons):
                if rule.stop:
                    reasons.append("stop: true ends evaluation")
                matches.append(RuleMatch(rule.name, tuple(reasons)))
                for d in rule.forward:
                    if d not in dests:
                        dests.append(d)
                if rule.stop:
                    break
        return RouteResult(tuple(dests), tuple(matches))

    def rule(self, name: str) -> Rule | None:
        for r in self._rules:
            if r.name == name:
                return r
        return None

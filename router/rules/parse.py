"""YAML -> compiled rules, with a file:line :class:`Problem` for everything wrong.

Rules are read from YAML *nodes* (``yaml.compose``), not from constructed Python
values, for two reasons: every node knows its line, and a plain scalar keeps its text
exactly as written. YAML 1.1 would otherwise turn ``PatientID: 0012345`` into the octal
number 5349, ``Modality: NO`` into ``False`` and the UID ``1.2`` into a float; rule
values are compared with the text the user wrote.

A rules source is either a list written inline under ``rules:`` in the config, or a
path/glob (relative to the config file's directory) of YAML files, each holding a list
of rules (or a mapping with one key ``rules:`` holding that list). Inside an inline
list, an item that is a string is such a path/glob too. Files matched by a glob are
read in sorted order; rules keep their order within each file.
"""

from __future__ import annotations

import difflib
import glob as globmod
import os
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag

from router.rules.engine import (
    CALLED_AE,
    CALLING_AE,
    AllMatch,
    AllOf,
    Always,
    AnyMatch,
    AnyOf,
    Compare,
    Equals,
    Glob,
    KeyCondition,
    NotMatch,
    NotValue,
    Present,
    Regex,
    RuleEngine,
    ValueTest,
    uid_label,
)
from router.rules.model import Condition, ConfigError, Problem, Rule

__all__ = [
    "RuleContext",
    "compile_rules",
    "load_rules_file",
    "load_yaml",
    "mapping_items",
    "parse_rules_node",
    "scalar_value",
    "suggest",
]

RULE_KEYS: Final = ("name", "description", "match", "forward", "stop")
COMBINATORS: Final = ("any", "all", "not")
OPERATORS: Final = ("regex", "glob", "present", "gt", "ge", "lt", "le", "not")
_RULE_KEY_HINTS: Final = {
    "destinations": "forward",
    "destination": "forward",
    "to": "forward",
    "send_to": "forward",
    "when": "match",
    "if": "match",
    "where": "match",
    "filter": "match",
}
_TAG_PAREN = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$")
_TAG_COMMA = re.compile(r"^([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})$")
_TAG_HEX = re.compile(r"^(?:0[xX])?([0-9A-Fa-f]{8})$")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

_UID_BY_KEYWORD: Final = {v[4]: k for k, v in UID_dictionary.items() if v[4]}
_UID_BY_NAME: Final = {v[0].lower(): k for k, v in UID_dictionary.items()}
_KEYWORD_BY_LOWER: Final = {k.lower(): k for k in keyword_dict}
_NULL_TAG: Final = "tag:yaml.org,2002:null"
_STR_TAG: Final = "tag:yaml.org,2002:str"


# ---------------------------------------------------------------- YAML helpers


def load_yaml(path: Path, display: str) -> tuple[yaml.Node | None, list[Problem]]:
    """Compose one YAML file into a node tree; (None, []) for an empty file."""
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
    return int(node.start_mark.line) + 1


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
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    return repr(str(node.value))


# ---------------------------------------------------------------- context


@dataclass
class RuleContext:
    """What parsing needs to know and where it reports problems."""

    base_dir: Path  # relative rule paths/globs start here (the config file's directory)
    display_dir: str  # how base_dir is written in messages ('' = as the user wrote it)
    destinations: Collection[str] | None = None  # None: do not check forward targets
    problems: list[Problem] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # rule name -> "file:line"

    def problem(self, file: str, node: yaml.Node | None, message: str) -> None:
        self.problems.append(Problem(file, line_of(node) if node is not None else None, message))


# ---------------------------------------------------------------- rule sources


def parse_rules_node(node: yaml.Node | None, file: str, ctx: RuleContext) -> list[Rule]:
    """The value of ``rules:`` in the config: an inline list, or a path/glob."""
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG):
        return []
    if isinstance(node, yaml.ScalarNode):
        return _include(str(node.value), node, file, ctx)
    if isinstance(node, yaml.SequenceNode):
        rules: list[Rule] = []
        for i, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR_TAG:
                rules.extend(_include(str(item.value), item, file, ctx))
            else:
                rule = _parse_rule(item, f"rules[{i}]", file, ctx)
                if rule is not None:
                    rules.append(rule)
        return rules
    ctx.problem(
        file,
        node,
        "rules: expected a list of rules or a path/glob of rule files (e.g. rules/*.yaml), "
        "got a mapping",
    )
    return []


def _include(pattern: str, node: yaml.Node, file: str, ctx: RuleContext) -> list[Rule]:
    pattern = pattern.strip()
    if not pattern:
        ctx.problem(file, node, "rules: empty path: write a file or glob such as rules/*.yaml")
        return []
    absolute = os.path.isabs(pattern)
    found: list[str]
    if globmod.has_magic(pattern):
        if absolute:
            found = globmod.glob(pattern, recursive=True)
        else:
            found = globmod.glob(pattern, root_dir=ctx.base_dir, recursive=True)
        found = sorted(f for f in found if not (ctx.base_dir / f).is_dir())
        if not found:
            ctx.problem(
                file,
                node,
                f"rules: '{pattern}' matches no file in {ctx.base_dir} "
                "(paths are relative to the config file's directory)",
            )
            return []
    else:
        if not (ctx.base_dir / pattern).is_file():
            ctx.problem(
                file,
                node,
                f"rules: file '{pattern}' not found (looked for {ctx.base_dir / pattern}; "
                "paths are relative to the config file's directory)",
            )
            return []
        found = [pattern]
    rules: list[Rule] = []
    for f in found:
        display = f if absolute else os.path.join(ctx.display_dir, f)
        rules.extend(load_rules_file(ctx.base_dir / f, display, ctx))
    return rules


def load_rules_file(path: Path, display: str, ctx: RuleContext) -> list[Rule]:
    """One rules file: a list of rules, or a mapping ``rules: [...]``."""
    root, problems = load_yaml(path, display)
    ctx.problems.extend(problems)
    if root is None:
        return []
    items: yaml.Node = root
    if isinstance(root, yaml.MappingNode):
        entries = list(mapping_items(root, display, ctx.problems))
        keys = [k for k, _, _ in entries]
        if keys == ["rules"]:
            items = entries[0][2]
        else:
            ctx.problem(
                display,
                root,
                "a rules file holds a list of rules (each item starting with '- name: ...'), "
                "or a mapping with the single key 'rules'",
            )
            return []
    if isinstance(items, yaml.ScalarNode) and items.tag == _NULL_TAG:
        return []
    if not isinstance(items, yaml.SequenceNode):
        ctx.problem(display, items, f"expected a list of rules, got {kind(items)}")
        return []
    rules: list[Rule] = []
    for i, item in enumerate(items.value):
        rule = _parse_rule(item, f"rules[{i}]", display, ctx)
        if rule is not None:
            rules.append(rule)
    return rules


# ---------------------------------------------------------------- one rule


def _parse_rule(node: yaml.Node, where: str, file: str, ctx: RuleContext) -> Rule | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.problem(
            file, node, f"{where}: expected a rule (name, match, forward), got {kind(node)}"
        )
        return None
    before = len(ctx.problems)
    entries = {k: (kn, vn) for k, kn, vn in mapping_items(node, file, ctx.problems)}

    name: str | None = None
    if "name" in entries:
        vn = entries["name"][1]
        if isinstance(vn, yaml.ScalarNode) and vn.tag != _NULL_TAG and str(vn.value).strip():
            name = str(vn.value).strip()
            where = f"rules.{name}"
            if name in ctx.names:
                ctx.problem(
                    file,
                    vn,
                    f"{where}: duplicate rule name (also at {ctx.names[name]}): "
                    "names must be unique, they label the rule_matches_total metric",
                )
            else:
                ctx.names[name] = f"{file}:{line_of(vn)}"
        else:
            ctx.problem(file, vn, f"{where}.name: expected a non-empty name, got {kind(vn)}")
    else:
        ctx.problem(file, node, f"{where}: missing 'name' (add e.g. 'name: ct-to-pacs')")

    meant: set[str] = set()  # rule keys an unknown key probably stood for
    for key, (kn, _) in entries.items():
        if key not in RULE_KEYS:
            if key in _RULE_KEY_HINTS:
                meant.add(_RULE_KEY_HINTS[key])
                hint = f" (did you mean '{_RULE_KEY_HINTS[key]}'?)"
            else:
                hint = suggest(key, RULE_KEYS)
                meant.update(difflib.get_close_matches(key.lower(), RULE_KEYS, n=1))
            ctx.problem(
                file,
                kn,
                f"{where}: unknown key '{key}'{hint}; a rule has: {', '.join(RULE_KEYS)}",
            )

    description = ""
    if "description" in entries:
        vn = entries["description"][1]
        if isinstance(vn, yaml.ScalarNode):
            description = "" if vn.tag == _NULL_TAG else str(vn.value)
        else:
            ctx.problem(file, vn, f"{where}.description: expected text, got {kind(vn)}")

    stop = False
    if "stop" in entries:
        vn = entries["stop"][1]
        value = scalar_value(vn) if isinstance(vn, yaml.ScalarNode) else None
        if isinstance(value, bool):
            stop = value
        else:
            ctx.problem(file, vn, f"{where}.stop: expected true or false, got {kind(vn)}")

    forward = _parse_forward(
        entries.get("forward"), node, where, file, ctx, stop or "forward" in meant
    )

    condition: Condition = Always()
    tags: set[int] = set()
    if "match" in entries:
        vn = entries["match"][1]
        if isinstance(vn, yaml.ScalarNode) and vn.tag == _NULL_TAG:
            pass  # `match:` with nothing: every instance, like no match at all
        else:
            parsed = _parse_match(vn, f"{where}.match", file, ctx, tags)
            if parsed is not None:
                condition = parsed

    if len(ctx.problems) > before or name is None:
        return None
    return Rule(
        name=name,
        condition=condition,
        forward=forward,
        stop=stop,
        description=description,
        file=file,
        line=line_of(node),
        tags=frozenset(tags),
    )


def _parse_forward(
    entry: tuple[yaml.Node, yaml.Node] | None,
    rule_node: yaml.Node,
    where: str,
    file: str,
    ctx: RuleContext,
    stop: bool,
) -> tuple[str, ...]:
    if entry is None:
        if not stop:
            ctx.problem(
                file,
                rule_node,
                f"{where}: missing 'forward' (add e.g. 'forward: [pacs]'; a rule that only "
                "ends evaluation says 'stop: true')",
            )
        return ()
    vn = entry[1]
    items: list[yaml.Node]
    if isinstance(vn, yaml.ScalarNode) and vn.tag == _NULL_TAG:
        items = []
    elif isinstance(vn, yaml.ScalarNode):
        items = [vn]
    elif isinstance(vn, yaml.SequenceNode):
        items = list(vn.value)
    else:
        ctx.problem(file, vn, f"{where}.forward: expected a list of destination names")
        return ()
    if not items and not stop:
        ctx.problem(
            file,
            vn,
            f"{where}.forward: empty: name at least one destination "
            "(or add 'stop: true' for a rule that only ends evaluation)",
        )
    out: list[str] = []
    for item in items:
        if not isinstance(item, yaml.ScalarNode) or item.tag == _NULL_TAG:
            ctx.problem(
                file, item, f"{where}.forward: expected a destination name, got {kind(item)}"
            )
            continue
        dest = str(item.value)
        if ctx.destinations is not None and dest not in ctx.destinations:
            known = ", ".join(sorted(ctx.destinations)) or "none are defined"
            ctx.problem(
                file,
                item,
                f"{where}.forward: unknown destination '{dest}'"
                f"{suggest(dest, ctx.destinations)}; destinations: {known}",
            )
            continue
        if dest not in out:
            out.append(dest)
    return tuple(out)


# ---------------------------------------------------------------- match


def _parse_match(
    node: yaml.Node, where: str, file: str, ctx: RuleContext, tags: set[int]
) -> Condition | None:
    if not isinstance(node, yaml.MappingNode):
        ctx.problem(
            file,
            node,
            f"{where}: expected a mapping of keys to values "
            f"(e.g. 'Modality: CT'), got {kind(node)}",
        )
        return None
    parts: list[Condition] = []
    ok = True
    for key, knode, vnode in mapping_items(node, file, ctx.problems):
        here = f"{where}.{key}"
        part: Condition | None
        if key in ("any", "all"):
            part = _parse_combinator(key, vnode, here, file, ctx, tags)
        elif key == "not":
            inner = _parse_match(vnode, here, file, ctx, tags)
            part = NotMatch(inner) if inner is not None else None
        else:
            part = _parse_key_entry(key, knode, vnode, here, file, ctx, tags)
        if part is None:
            ok = False
        else:
            parts.append(part)
    if not ok:
        return None
    if not parts:
        return Always()
    return parts[0] if len(parts) == 1 else AllMatch(parts)


def _parse_combinator(
    key: str, node: yaml.Node, where: str, file: str, ctx: RuleContext, tags: set[int]
) -> Condition | None:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        ctx.problem(
            file,
            node,
            f"{where}: expected a non-empty list of matches "
            f"(e.g. '{key}: [{{Modality: CT}}, {{Modality: MR}}]'), got {kind(node)}",
        )
        return None
    children: list[Condition] = []
    ok = True
    for i, item in enumerate(node.value):
        child = _parse_match(item, f"{where}[{i}]", file, ctx, tags)
        if child is None:
            ok = False
        else:
            children.append(child)
    if not ok:
        return None
    return AnyMatch(children) if key == "any" else AllMatch(children)


@dataclass(frozen=True)
class _Key:
    display: str
    tag: int | None
    vr: str | None

    @property
    def is_uid(self) -> bool:
        return self.vr == "UI"


def parse_key(text: str) -> _Key | str:
    """A match key -> element description, or an error message."""
    if text in (CALLING_AE, CALLED_AE):
        return _Key(text, None, "AE")
    m = _TAG_PAREN.match(text) or _TAG_COMMA.match(text)
    tag: int | None = None
    if m:
        tag = int(m.group(1) + m.group(2), 16)
    else:
        m = _TAG_HEX.match(text)
        if m:
            tag = int(m.group(1), 16)
    if tag is not None:
        try:
            vr: str | None = dictionary_VR(tag)
        except KeyError:
            vr = None
        keyword = keyword_for_tag(tag) if vr is not None else ""
        display = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        return _Key(f"{keyword} {display}" if keyword else display, tag, vr)
    tag = keyword_dict.get(text)
    if tag is not None:
        return _Key(text, tag, dictionary_VR(tag))
    if text in OPERATORS:
        return (
            f"'{text}' is an operator: put it under a key, e.g. 'BodyPartExamined: {{{text}: ...}}'"
        )
    if text.lower() in _KEYWORD_BY_LOWER:
        hint = f" (did you mean '{_KEYWORD_BY_LOWER[text.lower()]}'? keywords are case-sensitive)"
    else:
        hint = suggest(text, keyword_dict)
    if text[:1].isdigit() or text.startswith("(") or text.lower().startswith("0x"):
        return (
            f"'{text}' is not a tag: write (gggg,eeee) or ggggeeee in hexadecimal, "
            "e.g. (0010,0020) or 00100020 (inside {...} quote it: '(0010,0020)')"
        )
    return (
        f"unknown DICOM keyword '{text}'{hint}; a key is a DICOM keyword, a tag like "
        "(0010,0020), calling_ae, called_ae, or one of any/all/not"
    )


def _parse_key_entry(
    key: str,
    knode: yaml.Node,
    vnode: yaml.Node,
    where: str,
    file: str,
    ctx: RuleContext,
    tags: set[int],
) -> Condition | None:
    parsed = parse_key(key)
    if isinstance(parsed, str):
        ctx.problem(file, knode, f"{where}: {parsed}")
        return None
    test = _parse_value(vnode, parsed, where, file, ctx)
    if test is None:
        return None
    if parsed.tag is not None:
        tags.add(parsed.tag)
    return KeyCondition(parsed.display, parsed.tag, test, uid=parsed.is_uid)


def normalize_uid(text: str) -> tuple[str, str | None]:
    """(dotted UID, None) or (text, error message). Accepts dotted UIDs, UID keywords
    (CTImageStorage) and UID names (CT Image Storage)."""
    t = text.strip()
    if t and (t[0].isdigit()):
        if _UID_RE.match(t) and len(t) <= 64:
            return t, None
        return t, (
            f"'{t}' is not a valid UID (dot-separated numbers without leading zeros, "
            "at most 64 characters)"
        )
    if t in _UID_BY_KEYWORD:
        return _UID_BY_KEYWORD[t], None
    if t.lower() in _UID_BY_NAME:
        return _UID_BY_NAME[t.lower()], None
    hint = suggest(t, _UID_BY_KEYWORD) if " " not in t else ""
    return t, (
        f"unknown UID keyword or name '{t}'{hint}: write a dotted UID, "
        "a keyword like CTImageStorage or a name like 'CT Image Storage'"
    )


def _scalar_text(node: yaml.ScalarNode) -> str:
    return str(node.value).strip()


def _equals(
    nodes: list[yaml.ScalarNode], key: _Key, where: str, file: str, ctx: RuleContext
) -> ValueTest | None:
    strings: list[str] = []
    numbers: list[float] = []
    shown: list[str] = []
    ok = True
    for n in nodes:
        if n.tag == _NULL_TAG:
            ctx.problem(
                file, n, f"{where}: no value: write a value, a list, or '{{present: false}}'"
            )
            ok = False
            continue
        text = _scalar_text(n)
        if key.is_uid:
            uid, err = normalize_uid(text)
            if err:
                ctx.problem(file, n, f"{where}: {err}")
                ok = False
                continue
            strings.append(uid)
            shown.append(uid_label(uid))
            continue
        strings.append(text)
        shown.append(repr(text))
        try:
            number = float(text)
        except ValueError:
            continue
        if number == number:  # not NaN
            numbers.append(number)
    if not ok:
        return None
    desc = f"= {shown[0]}" if len(shown) == 1 else "in [" + ", ".join(shown) + "]"
    return Equals(strings, numbers, desc)


def _parse_value(
    node: yaml.Node, key: _Key, where: str, file: str, ctx: RuleContext
) -> ValueTest | None:
    if isinstance(node, yaml.ScalarNode):
        if node.tag != _NULL_TAG and _scalar_text(node) == "":
            return Present(False)  # "" : the element is absent or empty
        return _equals([node], key, where, file, ctx)
    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            ctx.problem(file, node, f"{where}: an empty list matches nothing: list values")
            return None
        scalars = [n for n in node.value if isinstance(n, yaml.ScalarNode)]
        tests: list[ValueTest] = []
        ok = True
        if scalars:
            eq = _equals(scalars, key, where, file, ctx)
            if eq is None:
                ok = False
            else:
                tests.append(eq)
        for n in node.value:
            if isinstance(n, yaml.MappingNode):
                t = _parse_operators(n, key, where, file, ctx)
                if t is None:
                    ok = False
                else:
                    tests.append(t)
            elif isinstance(n, yaml.SequenceNode):
                ctx.problem(file, n, f"{where}: a list inside a list: flatten it")
                ok = False
        if not ok:
            return None
        return tests[0] if len(tests) == 1 else AnyOf(tests)
    if isinstance(node, yaml.MappingNode):
        return _parse_operators(node, key, where, file, ctx)
    ctx.problem(file, node, f"{where}: unsupported value")
    return None


def _number_operand(node: yaml.Node) -> float | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL_TAG:
        return None
    value = scalar_value(node)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _parse_operators(
    node: yaml.MappingNode, key: _Key, where: str, file: str, ctx: RuleContext
) -> ValueTest | None:
    tests: list[ValueTest] = []
    ok = True
    entries = list(mapping_items(node, file, ctx.problems))
    if not entries:
        ctx.problem(file, node, f"{where}: empty mapping: use an operator ({', '.join(OPERATORS)})")
        return None
    for op, knode, vnode in entries:
        here = f"{where}.{op}"
        test: ValueTest | None = None
        if op in ("regex", "glob"):
            if not isinstance(vnode, yaml.ScalarNode) or vnode.tag == _NULL_TAG:
                ctx.problem(file, vnode, f"{here}: expected a pattern, got {kind(vnode)}")
            elif op == "glob":
                test = Glob(str(vnode.value))
            else:
                try:
                    test = Regex(re.compile(str(vnode.value)))
                except re.error as e:
                    pos = f" at position {e.pos}" if e.pos is not None else ""
                    ctx.problem(
                        file,
                        vnode,
                        f"{here}: bad regular expression {str(vnode.value)!r}: {e.msg}{pos} "
                        "(Python re syntax; quote the pattern in YAML)",
                    )
        elif op == "present":
            value = scalar_value(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if isinstance(value, bool):
                test = Present(value)
            else:
                ctx.problem(file, vnode, f"{here}: expected true or false, got {kind(vnode)}")
        elif op in ("gt", "ge", "lt", "le"):
            number = _number_operand(vnode)
            if number is None:
                ctx.problem(file, vnode, f"{here}: expected a number, got {kind(vnode)}")
            else:
                test = Compare(op, number)
        elif op == "not":
            inner = _parse_value(vnode, key, here, file, ctx)
            test = NotValue(inner) if inner is not None else None
            if inner is None:
                ok = False
        else:
            hint = suggest(op, OPERATORS)
            extra = ""
            if not hint and isinstance(parse_key(op), _Key):
                extra = " (a nested match goes under any/all/not, not under a key)"
            ctx.problem(
                file,
                knode,
                f"{where}: unknown operator '{op}'{hint}{extra}; operators: {', '.join(OPERATORS)}",
            )
        if test is None:
            ok = False
        else:
            tests.append(test)
    if not ok:
        return None
    return tests[0] if len(tests) == 1 else AllOf(tests)


# ---------------------------------------------------------------- convenience


def compile_rules(
    text: str,
    *,
    destinations: Collection[str] | None = None,
    file: str = "<rules>",
    base_dir: Path | None = None,
) -> RuleEngine:
    """Compile rules from YAML text (a list of rules); raises ConfigError. For tests and
    tools; the router itself loads rules through ``router.config.load_config``."""
    root, problems = compose_text(text, file)
    if problems:
        raise ConfigError(problems)
    ctx = RuleContext(base_dir or Path.cwd(), "", destinations)
    if isinstance(root, yaml.MappingNode):
        items = {k: v for k, _, v in mapping_items(root, file, ctx.problems)}
        root = items.get("rules", root)
    rules = parse_rules_node(root, file, ctx)
    if ctx.problems:
        raise ConfigError(sorted(ctx.problems, key=lambda p: (p.file, p.line or 0)))
    return RuleEngine(rules)

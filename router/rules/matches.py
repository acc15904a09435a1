"""The ``match`` of a rule: combinators (any/all/not), keys and their values, operators.

Compiled bottom-up into the engine's conditions; every problem is reported to the
:class:`~router.rules.context.RuleContext` with its line, and a part with a problem
compiles to None so that the whole rule is dropped rather than half applied.
"""

from __future__ import annotations

import re

import yaml

from router.rules.context import RuleContext
from router.rules.engine import (
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
    ValueTest,
    uid_label,
)
from router.rules.keys import OPERATORS, MatchKey, normalize_uid, parse_key
from router.rules.model import Condition
from router.yamlsrc import NULL_TAG, kind, mapping_items, scalar_value, suggest

__all__ = ["parse_match"]


def parse_match(
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
            inner = parse_match(vnode, here, file, ctx, tags)
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
        child = parse_match(item, f"{where}[{i}]", file, ctx, tags)
        if child is None:
            ok = False
        else:
            children.append(child)
    if not ok:
        return None
    return AnyMatch(children) if key == "any" else AllMatch(children)


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


def _scalar_text(node: yaml.ScalarNode) -> str:
    return str(node.value).strip()


def _equals(
    nodes: list[yaml.ScalarNode], key: MatchKey, where: str, file: str, ctx: RuleContext
) -> ValueTest | None:
    strings: list[str] = []
    numbers: list[float] = []
    shown: list[str] = []
    ok = True
    for n in nodes:
        if n.tag == NULL_TAG:
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
    node: yaml.Node, key: MatchKey, where: str, file: str, ctx: RuleContext
) -> ValueTest | None:
    if isinstance(node, yaml.ScalarNode):
        if node.tag != NULL_TAG and _scalar_text(node) == "":
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
    if not isinstance(node, yaml.ScalarNode) or node.tag == NULL_TAG:
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
    node: yaml.MappingNode, key: MatchKey, where: str, file: str, ctx: RuleContext
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
            if not isinstance(vnode, yaml.ScalarNode) or vnode.tag == NULL_TAG:
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
            if not hint and isinstance(parse_key(op), MatchKey):
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

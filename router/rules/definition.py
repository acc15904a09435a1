"""One rule as written in YAML (name, description, match, forward, stop) -> a compiled
:class:`~router.rules.model.Rule`, or None with every problem reported."""

from __future__ import annotations

import difflib
from typing import Final

import yaml

from router.rules.context import RuleContext
from router.rules.engine import Always
from router.rules.matches import parse_match
from router.rules.model import Condition, Rule
from router.yamlsrc import NULL_TAG, is_null, kind, line_of, mapping_items, scalar_value, suggest

__all__ = ["RULE_KEYS", "parse_rule"]

RULE_KEYS: Final = ("name", "description", "match", "forward", "stop")
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


def parse_rule(node: yaml.Node, where: str, file: str, ctx: RuleContext) -> Rule | None:
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
        if isinstance(vn, yaml.ScalarNode) and vn.tag != NULL_TAG and str(vn.value).strip():
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
            description = "" if vn.tag == NULL_TAG else str(vn.value)
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
        if is_null(vn):
            pass  # `match:` with nothing: every instance, like no match at all
        else:
            parsed = parse_match(vn, f"{where}.match", file, ctx, tags)
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
    if is_null(vn):
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
        if not isinstance(item, yaml.ScalarNode) or item.tag == NULL_TAG:
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

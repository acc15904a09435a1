"""Where rules come from: inline under ``rules:`` in the config, or rule files.

A rules source is either a list written inline under ``rules:`` in the config, or a
path/glob (relative to the config file's directory) of YAML files, each holding a list
of rules (or a mapping with one key ``rules:`` holding that list). Inside an inline
list, an item that is a string is such a path/glob too. Files matched by a glob are
read in sorted order; rules keep their order within each file.
"""

from __future__ import annotations

import glob as globmod
import os
from collections.abc import Collection
from pathlib import Path

import yaml

from router.problems import ConfigError
from router.rules.context import RuleContext
from router.rules.definition import parse_rule
from router.rules.engine import RuleEngine
from router.rules.model import Rule
from router.yamlsrc import STR_TAG, compose_text, is_null, kind, load_yaml, mapping_items

__all__ = ["compile_rules", "load_rules_file", "parse_rules_node"]


def parse_rules_node(node: yaml.Node | None, file: str, ctx: RuleContext) -> list[Rule]:
    """The value of ``rules:`` in the config: an inline list, or a path/glob."""
    if node is None or is_null(node):
        return []
    if isinstance(node, yaml.ScalarNode):
        return _include(str(node.value), node, file, ctx)
    if isinstance(node, yaml.SequenceNode):
        rules: list[Rule] = []
        for i, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode) and item.tag == STR_TAG:
                rules.extend(_include(str(item.value), item, file, ctx))
            else:
                rule = parse_rule(item, f"rules[{i}]", file, ctx)
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
    if is_null(items):
        return []
    if not isinstance(items, yaml.SequenceNode):
        ctx.problem(display, items, f"expected a list of rules, got {kind(items)}")
        return []
    rules: list[Rule] = []
    for i, item in enumerate(items.value):
        rule = parse_rule(item, f"rules[{i}]", display, ctx)
        if rule is not None:
            rules.append(rule)
    return rules


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

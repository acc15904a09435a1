"""Routing rules: YAML -> compiled matchers -> destinations. Pure; no I/O on the hot path.

Semantics (design.md, "Rule semantics"): every entry of ``match`` must hold; every
matching rule adds its destinations once, in file order; ``stop: true`` ends evaluation;
no matching rule leaves the instance unrouted.

    engine = compile_rules("- {name: all, forward: [pacs]}")
    engine.route(header, "CT_1", "ROUTER").destinations
"""

from router.rules.engine import RuleEngine
from router.rules.model import ConfigError, Problem, RouteResult, Rule, RuleMatch
from router.rules.parse import compile_rules

__all__ = [
    "ConfigError",
    "Problem",
    "RouteResult",
    "Rule",
    "RuleEngine",
    "RuleMatch",
    "compile_rules",
]

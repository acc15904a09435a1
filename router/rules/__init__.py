"""Routing rules: YAML -> compiled matchers -> destinations. Pure; no I/O on the hot path.

Semantics (README, "Rules"): every entry of ``match`` must hold; every matching
rule adds its destinations once, in file order; ``stop: true`` ends evaluation; no
matching rule leaves the instance unrouted.

    engine = compile_rules("- {name: all, forward: [pacs]}")
    engine.route(header, "CT_1", "ROUTER").destinations

Modules: ``model`` (compiled rules, results), ``engine`` (matchers and routing),
``sources`` (inline lists, rule files, globs), ``definition`` (one rule), ``matches``
(``match`` blocks), ``keys`` (keys and UID values), ``explain`` (what the rules do with
a DICOM file, for ``dicom-router explain``).
"""

from router.problems import ConfigError, Problem
from router.rules.engine import RuleEngine
from router.rules.model import RouteResult, Rule, RuleMatch
from router.rules.sources import compile_rules

__all__ = [
    "ConfigError",
    "Problem",
    "RouteResult",
    "Rule",
    "RuleEngine",
    "RuleMatch",
    "compile_rules",
]

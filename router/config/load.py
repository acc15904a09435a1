"""Loading a config file: YAML with a file:line for every problem, validated by the models.

``load_config(path)`` is pure apart from reading the config file and its rule files (and
checking that TLS files it names exist): it returns a complete new immutable
:class:`~router.config.models.Config` or raises :class:`~router.problems.ConfigError`
listing *every* problem found, each one readable line such as::

    router.yaml:14: destinations.pacs.port: 70000 is not a port (1-65535)

so ``dicom-router check`` and hot reload (SIGHUP) share one code path: a reload that
fails keeps the running config. Relative paths (``storage.path``, TLS files, rule files)
are relative to the config file's directory, not to the working directory.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from router.config.models import Config
from router.problems import ConfigError, Problem
from router.rules.context import RuleContext
from router.rules.engine import RuleEngine
from router.rules.sources import parse_rules_node
from router.yamlsrc import Located, YPath, load_yaml, suggest

__all__ = ["DEFAULT_CONFIG_NAME", "ENV_CONFIG", "check", "default_config_path", "load_config"]

ENV_CONFIG: Final = "DICOM_ROUTER_CONFIG"
DEFAULT_CONFIG_NAME: Final = "router.yaml"


def default_config_path() -> Path:
    """``$DICOM_ROUTER_CONFIG`` if set and non-empty, else ``./router.yaml``."""
    return Path(os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_NAME)


_EXAMPLES: Final = {
    "ae_title": "ae_title: ROUTER",
    "storage": "storage: {path: /var/lib/dicom-router}",
    "path": "path: /var/lib/dicom-router",
    "host": "host: 10.1.2.3",
    "port": "port: 104",
    "url": "url: https://pacs.example/dicom-web",
    "cert": "cert: /etc/dicom-router/tls/router.crt",
    "key": "key: /etc/dicom-router/tls/router.key",
    "until": "until: series_complete",
}


def _unwrap(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else tp
    return tp


def _fields_at(path: YPath) -> list[str]:
    """Field names of the model at ``path`` (for "did you mean" on unknown keys)."""
    tp: Any = Config
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = _field(tp, str(part))
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (dict, Mapping):
            tp = get_args(tp)[1]
        elif get_origin(tp) in (tuple, list):
            tp = get_args(tp)[0]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _field(model: type[BaseModel], key: str) -> Any:
    """The field that ``key`` (as written in YAML: its alias, if it has one) names."""
    for name, f in model.model_fields.items():
        if (f.alias or name) == key:
            return f
    return None


def _dotted(path: YPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_from_error(err: Any, loc: Located) -> Problem:
    path: YPath = tuple(p for p in err["loc"] if p != "[key]")
    is_key = "[key]" in err["loc"]
    typ: str = err["type"]
    inp = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "missing_field":  # a model's own check that a field is required
        path, typ = (*path, str(ctx["field"])), "missing"
    where = _dotted(path)
    if typ == "extra_forbidden":
        key = str(path[-1])
        fields = [f for f in _fields_at(path[:-1]) if f != "rules" or path[:-1]]
        if not path[:-1]:
            fields.append("rules")
        hint = suggest(key, fields)
        message = f"unknown key{hint}; valid here: {', '.join(fields)}"
        return Problem(loc.file, loc.line(path, key=True), f"{where}: {message}")
    if typ == "missing":
        name = str(path[-1])
        example = _EXAMPLES.get(name, f"{name}: ...")
        parent = path[:-1]
        line = loc.line(parent, key=True) if parent else None
        return Problem(loc.file, line, f"{where}: missing (required; add e.g. '{example}')")
    if typ in ("string_type",):
        message = f"expected text, got {inp!r} (put it in quotes)"
    elif typ in ("int_type", "int_parsing", "int_from_float"):
        message = f"expected a whole number, got {inp!r}"
    elif typ in ("float_type", "float_parsing"):
        message = f"expected a number, got {inp!r}"
    elif typ in ("bool_type", "bool_parsing"):
        message = f"expected true or false, got {inp!r}"
    elif typ in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping (indented 'key: value' lines), got {inp!r}"
    elif typ in ("tuple_type", "list_type"):
        message = f"expected a list, got {inp!r}"
    elif typ == "literal_error":
        message = f"{inp!r} is not one of {ctx.get('expected')}"
    elif typ in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        message = (
            f"{inp!r} is too small (must be {'at least' if 'ge' in ctx else 'more than'} {bound})"
        )
    elif typ in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        message = (
            f"{inp!r} is too large (must be {'at most' if 'le' in ctx else 'less than'} {bound})"
        )
    elif typ == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    else:
        message = str(err["msg"])
    return Problem(
        loc.file, loc.line(path, key=is_key), f"{where}: {message}" if where else message
    )


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> Config:
    """Load and validate a config file and its rules; raise ConfigError with every problem.

    ``check_files``: also check that TLS files it names exist and read the profiles'
    secret files (which must exist and hold a long enough key).
    """
    display = os.fspath(path)
    file = Path(display)
    root, problems = load_yaml(file, display)
    if problems:
        raise ConfigError(problems)
    if root is None:
        raise ConfigError([Problem(display, None, "empty config: start from router.example.yaml")])
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            [
                Problem(
                    display, root.start_mark.line + 1, "expected a mapping of settings (key: value)"
                )
            ]
        )
    located = Located(display, problems)
    data = located.convert(root)
    rules_node = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "rules"), None
    )
    data.pop("rules", None)

    base_dir = file.absolute().parent
    raw_dests = data.get("destinations")
    dest_names = list(raw_dests) if isinstance(raw_dests, dict) else None
    if raw_dests is None:
        dest_names = []
    raw_profiles = data.get("profiles")
    profile_names = list(raw_profiles) if isinstance(raw_profiles, dict) else []
    ctx = RuleContext(base_dir, os.path.dirname(display), dest_names)
    rules = parse_rules_node(rules_node, display, ctx)

    config: Config | None = None
    try:
        config = Config.model_validate(
            {**data, "rules": RuleEngine(rules)},
            context={
                "base_dir": base_dir,
                "check_files": check_files,
                "profile_names": profile_names,
            },
        )
    except ValidationError as e:
        problems.extend(_problem_from_error(err, located) for err in e.errors(include_url=False))
    problems.extend(ctx.problems)
    if problems or config is None:
        order = {display: 0}
        problems.sort(key=lambda p: (order.get(p.file, 1), p.file, p.line or 0))
        raise ConfigError(_dedupe(problems))
    return config


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def check(path: str | os.PathLike[str]) -> list[Problem]:
    """Every problem in a config and its rules; empty when valid. Never raises."""
    try:
        load_config(path)
    except ConfigError as e:
        return list(e.problems)
    except Exception as e:  # a bug of ours must still come out as one line, not a traceback
        return [Problem(os.fspath(path), None, f"internal error while checking: {e!r}")]
    return []

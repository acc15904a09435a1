"""Typed, frozen configuration, loaded from YAML with a file:line for every problem.

``load_config(path)`` is pure apart from reading the config file and its rule files (and
checking that TLS files it names exist): it returns a complete new immutable
:class:`Config` or raises :class:`ConfigError` listing *every* problem found, each one
readable line such as::

    router.yaml:14: destinations.pacs.port: 70000 is not a port (1-65535)

so ``dicom-router check`` and hot reload (SIGHUP) share one code path: a reload that
fails keeps the running config.

Models are pydantic v2 (frozen, ``extra="forbid"``): declarative defaults and bounds in
one place, precise error locations (``loc``) that we map back to YAML line numbers, and
cheap immutability for hot reload. Durations are seconds as ``float``; sizes are bytes
as ``int``. Relative paths (``storage.path``, TLS files, rule files) are relative to the
config file's directory, not to the working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.rules.engine import RuleEngine, uid_label
from router.rules.model import ConfigError, Problem
from router.rules.parse import (
    RuleContext,
    load_yaml,
    mapping_items,
    parse_rules_node,
    scalar_value,
    suggest,
)

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ENV_CONFIG",
    "Accept",
    "CircuitBreaker",
    "ClientTLS",
    "Config",
    "ConfigError",
    "Destination",
    "Http",
    "Listen",
    "Logging",
    "Problem",
    "Retry",
    "ServerTLS",
    "Storage",
    "check",
    "default_config_path",
    "explain_file",
    "load_config",
    "parse_duration",
    "parse_size",
]

ENV_CONFIG: Final = "DICOM_ROUTER_CONFIG"
DEFAULT_CONFIG_NAME: Final = "router.yaml"

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB


def default_config_path() -> Path:
    """``$DICOM_ROUTER_CONFIG`` if set and non-empty, else ``./router.yaml``."""
    return Path(os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG_NAME)


# ---------------------------------------------------------------- scalar types

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?$", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}
_DURATION_HINT: Final = "write seconds (30) or e.g. 250ms, 2s, 5m, 1h, 1h30m"
_SIZE_HINT: Final = "write bytes (1048576) or e.g. 512KiB, 1MiB, 1GiB, 1GB"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``250ms``, ``2s``, ``5m``, ``1h30m``, ``1d``.

    Raises ValueError with a message for people.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos and text[pos : m.start()].strip():
                    break
                seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
                pos = m.end()
            if pos == 0 or text[pos:].strip():
                raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}") from None
    else:
        raise ValueError(f"{value!r} is not a duration: {_DURATION_HINT}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration (must be 0 or more): {_DURATION_HINT}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from a number or a string like ``512KiB``, ``1GiB``, ``1GB`` (KB = 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
    if isinstance(value, int):
        n = float(value)
    elif isinstance(value, float):
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value.strip())
        if not m:
            raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
        n = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"{value!r} is not a size: {_SIZE_HINT}")
    if n < 0 or n != n or n == float("inf"):
        raise ValueError(f"{value!r} is not a size (must be 0 or more): {_SIZE_HINT}")
    return int(n)


def _custom(kind: str, message: str) -> PydanticCustomError:
    # A template without braces, so the message comes out exactly as written.
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"))


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise _custom("duration", str(e)) from None


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise _custom("size", str(e)) from None


def _port_checker(low: int) -> Any:
    def check(value: object) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _custom("port", f"{value!r} is not a port number ({low}-65535)")
        if not low <= value <= 65535:
            raise _custom("port", f"{value} is not a port ({low}-65535)")
        return value

    return check


def _ae_title(value: object) -> str:
    if not isinstance(value, str):
        raise _custom("ae_title", f'{value!r} is not an AE title: quote it, e.g. "{value}"')
    text = value.strip()
    if not text:
        raise _custom("ae_title", "empty AE title: write 1 to 16 characters, e.g. ROUTER")
    if len(text) > 16:
        raise _custom("ae_title", f"AE title {text!r} is {len(text)} characters long (max 16)")
    if "\\" in text or any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
        raise _custom(
            "ae_title",
            f"AE title {text!r} has a character DICOM forbids (use A-Z, 0-9, space, _ - .)",
        )
    return text


def _host(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _custom("host", f"{value!r} is not a host: write a name or an IP address")
    return value.strip()


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _dest_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise _custom(
            "name",
            f"{value!r} is not a destination name: use letters, digits, _ . - "
            "(it is a metric label and a CLI argument)",
        )
    return value


def _rel_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    value = _rel_path(value, info)
    if (info.context or {}).get("check_files", False) and not value.is_file():
        raise _custom("file", f"file not found: {value}")
    return value


def _transfer_syntax(value: object) -> str:
    """A lossless target syntax by UID, keyword (ExplicitVRLittleEndian) or name."""
    from pydicom._uid_dict import UID_dictionary

    from router.syntaxes import TARGET_ORDER

    if not isinstance(value, str) or not value.strip():
        raise _custom("transfer_syntax", f"{value!r} is not a transfer syntax")
    text = value.strip()
    uid = text
    if text not in UID_dictionary:
        for key, entry in UID_dictionary.items():
            if text in (entry[4], entry[0]):
                uid = key
                break
    if uid not in TARGET_ORDER:
        choices = ", ".join(UID_dictionary[t][4] or t for t in TARGET_ORDER)
        raise _custom(
            "transfer_syntax",
            f"{text!r} is not a lossless transfer syntax the router can write: one of {choices}",
        )
    return uid


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Port = Annotated[int, BeforeValidator(_port_checker(1))]
ListenPort = Annotated[int, BeforeValidator(_port_checker(0))]  # 0: any free port (tests)
AETitle = Annotated[str, BeforeValidator(_ae_title)]
Host = Annotated[str, BeforeValidator(_host)]
DestinationName = Annotated[str, BeforeValidator(_dest_name)]
TransferSyntax = Annotated[str, BeforeValidator(_transfer_syntax)]
RelPath = Annotated[Path, AfterValidator(_rel_path)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


# ---------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerTLS(_Model):
    """TLS on the listening side (DICOM over TLS, e.g. port 2762)."""

    cert: ExistingFile
    key: ExistingFile
    ca: ExistingFile | None = None  # verifies client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ServerTLS:
        if self.require_client_cert and self.ca is None:
            raise _custom("tls", "require_client_cert: true needs 'ca' (the CA of client certs)")
        return self


class ClientTLS(_Model):
    """TLS towards a destination. No ``ca``: the system's trust store."""

    ca: ExistingFile | None = None
    cert: ExistingFile | None = None  # client certificate, if the peer asks for one
    key: ExistingFile | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.cert is None) != (self.key is None):
            raise _custom("tls", "'cert' and 'key' go together: give both or neither")
        return self


class Listen(_Model):
    """The C-STORE SCP: where senders connect."""

    host: Host = "0.0.0.0"
    port: ListenPort = 11112
    max_associations: int = Field(default=32, ge=1, le=10_000)
    # The largest P-DATA PDU we accept (we advertise it). Bounded: memory per association.
    max_pdu_length: Size = Field(default=1 * MiB, ge=4096, le=64 * MiB)
    acse_timeout: Duration = 30.0  # association negotiation
    network_timeout: Duration = 60.0  # idle association is closed after this
    dimse_timeout: Duration = 60.0  # waiting for the rest of a DIMSE message
    tls_handshake_timeout: Duration = 10.0
    tls: ServerTLS | None = None


class Storage(_Model):
    """Spool files and the queue database."""

    path: RelPath
    # Below this much free space, new instances are refused with A700 (out of resources).
    min_free_bytes: Size = 1 * GiB
    # Data sets up to this size are stored inside the queue database (one sync on ack).
    inline_max_bytes: Size = Field(default=256 * KiB, ge=0, le=64 * MiB)
    # How long spool files stay after every delivery ended; 0: removed at once.
    retention: Duration = 0.0
    # Queue bound: above this many instances, new C-STOREs are refused with A700.
    max_queue_instances: int = Field(default=1_000_000, ge=1)


class Http(_Model):
    """GET /metrics, /healthz, /readyz."""

    enabled: bool = True
    host: Host = "127.0.0.1"
    port: ListenPort = 9108


def _network(value: object) -> str:
    if not isinstance(value, str):
        raise _custom("network", f"{value!r} is not an address or network: e.g. 10.0.0.5/32")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise _custom(
            "network",
            f"{value!r} is not an IP address or network: write e.g. 10.0.0.5, 10.0.0.0/24 or"
            " fd00::/64",
        ) from None


Network = Annotated[str, BeforeValidator(_network)]


class Accept(_Model):
    """Who may send to us."""

    calling_ae_titles: tuple[AETitle, ...] = ()  # empty: any calling AE
    check_called_ae: bool = True  # the called AE must be our ae_title
    accept_unknown_sop_classes: bool = True  # store any storage SOP class offered
    # Per calling AE title, the networks it may connect from ("*": every AE title not
    # listed). A calling AE from elsewhere is rejected like an unknown one (1,1,3).
    hosts: dict[AETitle, tuple[Network, ...]] = Field(default_factory=dict)

    @property
    def calling_ae_set(self) -> frozenset[str] | None:
        """The allowed calling AE titles, or None for any (AcceptorConfig's form)."""
        return frozenset(self.calling_ae_titles) or None

    def host_allowed(self, calling_ae: str, host: str) -> bool:
        """Whether ``calling_ae`` may connect from ``host`` (an IP address)."""
        nets = self.hosts.get(calling_ae.strip())
        if nets is None:
            nets = self.hosts.get("*")
        if nets is None:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in ipaddress.ip_network(n) for n in nets)


class Retry(_Model):
    """Delivery retries: exponential backoff with jitter, then dead letter."""

    max_attempts: int = Field(default=20, ge=1)
    initial_backoff: Duration = 2.0
    max_backoff: Duration = 600.0
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)  # +/- this fraction of each delay

    @model_validator(mode="after")
    def _order(self) -> Retry:
        if self.max_backoff < self.initial_backoff:
            raise _custom(
                "retry",
                f"max_backoff ({self.max_backoff:g}s) is below initial_backoff "
                f"({self.initial_backoff:g}s): raise max_backoff",
            )
        return self


class CircuitBreaker(_Model):
    """After ``failures`` consecutive connection failures, stop trying except for one
    probe every ``probe_interval``."""

    failures: int = Field(default=5, ge=1)
    probe_interval: Duration = 30.0


class Destination(_Model):
    """A C-STORE SCP we forward to."""

    ae_title: AETitle
    host: Host
    port: Port
    max_associations: int = Field(default=1, ge=1, le=64)
    batch_size: int = Field(default=32, ge=1, le=10_000)  # instances leased per worker round
    calling_ae_title: AETitle | None = None  # None only before loading: then our ae_title
    max_pdu_length: Size = Field(default=1 * MiB, ge=4096, le=64 * MiB)  # the largest we receive
    connect_timeout: Duration = 10.0
    acse_timeout: Duration = 30.0
    dimse_timeout: Duration = 120.0  # a PACS may take long to commit a large instance
    network_timeout: Duration = 60.0
    retry: Retry = Retry()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    tls: ClientTLS | None = None
    # Convert to this lossless syntax whenever the destination accepts it (else the
    # original is sent when accepted, else the first lossless syntax it accepts).
    transcode_to: TransferSyntax | None = None
    # An association that has caught up stays open this long for the next instance
    # before it is released; keep it below the destination's own idle timeout.
    idle_release: Duration = 5.0

    @model_validator(mode="after")
    def _idle_below_network_timeout(self) -> Destination:
        if self.idle_release >= self.network_timeout:
            raise _custom(
                "idle_release",
                f"idle_release ({self.idle_release:g}s) is not below network_timeout "
                f"({self.network_timeout:g}s): an idle association would time out first; "
                "lower idle_release",
            )
        return self


class Transcode(_Model):
    """Converting instances for destinations that do not accept the received syntax."""

    # An instance whose decoded pixel data would exceed this is not converted (dead
    # letter with the reason): bounds the memory a conversion may take.
    max_decoded_bytes: Size = Field(default=512 * MiB, ge=1 * MiB)
    max_concurrent: int = Field(default=1, ge=1, le=16)  # conversions at once (CPU-heavy)


class Logging(_Model):
    format: Annotated[Literal["json", "logfmt", "human"], BeforeValidator(_lower)] = "logfmt"
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"


class Config(_Model):
    """The whole router configuration. Immutable; a reload builds a new one."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    ae_title: AETitle
    listen: Listen = Listen()
    storage: Storage
    http: Http = Http()
    accept: Accept = Accept()
    destinations: dict[DestinationName, Destination] = Field(default_factory=dict)
    rules: RuleEngine = Field(default_factory=RuleEngine, exclude=True)
    logging: Logging = Logging()
    transcode: Transcode = Transcode()
    # forward_each: every received instance is forwarded, even a repeat of one already
    # queued; drop_identical: a byte-identical repeat (same SOP Instance UID, same bytes)
    # still queued for a destination is acknowledged but not queued again.
    duplicates: Annotated[Literal["forward_each", "drop_identical"], BeforeValidator(_lower)] = (
        "forward_each"
    )
    # SIGTERM/SIGINT: how long in-flight associations may go on before they are aborted
    # (and workers may finish their current send); the process exits within about this.
    shutdown_grace: Duration = 30.0

    @model_validator(mode="after")
    def _defaults_and_cross_checks(self) -> Config:
        fixed = {
            name: d.model_copy(update={"calling_ae_title": self.ae_title})
            for name, d in self.destinations.items()
            if d.calling_ae_title is None
        }
        if fixed:
            object.__setattr__(self, "destinations", {**self.destinations, **fixed})
        if (
            self.http.enabled
            and self.http.port != 0
            and self.http.port == self.listen.port
            and (
                self.http.host == self.listen.host
                or "0.0.0.0" in (self.http.host, self.listen.host)
            )
        ):
            raise _custom("ports", "http.port is the same as listen.port: pick another port")
        return self

    def destination(self, name: str) -> Destination:
        return self.destinations[name]


# ---------------------------------------------------------------- loading

YPath = tuple[str | int, ...]


class _Located:
    """Plain Python values of a YAML tree plus the line of every value and key."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        self.value_lines: dict[YPath, int] = {}
        self.key_lines: dict[YPath, int] = {}

    def convert(self, node: yaml.Node, path: YPath) -> Any:
        self.value_lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key, knode, vnode in mapping_items(node, self.file, self.problems):
                self.key_lines[(*path, key)] = knode.start_mark.line + 1
                out[key] = self.convert(vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(n, (*path, i)) for i, n in enumerate(node.value)]
        try:
            return scalar_value(node)  # type: ignore[arg-type]
        except yaml.YAMLError as e:
            self.problems.append(Problem(self.file, node.start_mark.line + 1, f"{e}"))
            return None

    def line(self, path: YPath, *, key: bool = False) -> int | None:
        p = path
        if key and p in self.key_lines:
            return self.key_lines[p]
        while p:
            if p in self.value_lines:
                return self.value_lines[p]
            p = p[:-1]
        return None


_EXAMPLES: Final = {
    "ae_title": "ae_title: ROUTER",
    "storage": "storage: {path: /var/lib/dicom-router}",
    "path": "path: /var/lib/dicom-router",
    "host": "host: 10.1.2.3",
    "port": "port: 104",
    "cert": "cert: /etc/dicom-router/tls/router.crt",
    "key": "key: /etc/dicom-router/tls/router.key",
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
            field = tp.model_fields.get(str(part))
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
        return list(tp.model_fields)
    return []


def _dotted(path: YPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_from_error(err: Any, loc: _Located) -> Problem:
    path: YPath = tuple(p for p in err["loc"] if p != "[key]")
    is_key = "[key]" in err["loc"]
    typ: str = err["type"]
    inp = err.get("input")
    ctx = err.get("ctx") or {}
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

    ``check_files``: also check that TLS files it names exist.
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
    located = _Located(display, problems)
    data = located.convert(root, ())
    rules_node = next(
        (v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "rules"), None
    )
    data.pop("rules", None)

    base_dir = file.absolute().parent
    raw_dests = data.get("destinations")
    dest_names = list(raw_dests) if isinstance(raw_dests, dict) else None
    if raw_dests is None:
        dest_names = []
    ctx = RuleContext(base_dir, os.path.dirname(display), dest_names)
    rules = parse_rules_node(rules_node, display, ctx)

    config: Config | None = None
    try:
        config = Config.model_validate(
            {**data, "rules": RuleEngine(rules)},
            context={"base_dir": base_dir, "check_files": check_files},
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


def explain_file(
    config: Config,
    dicom_path: str | os.PathLike[str],
    calling_ae: str | None = None,
    called_ae: str | None = None,
) -> dict[str, Any]:
    """What the rules do with one DICOM file, for ``dicom-router explain``.

    Returns ``{"file", "sop_class_uid", "sop_instance_uid", "calling_ae", "called_ae",
    "matched": [{"rule", "file", "line", "reasons": [...], "forward": [...], "stop"}],
    "destinations": [...], "unrouted": bool, "error": str | None}``. calling_ae defaults
    to "" (rules on calling_ae then do not match); called_ae to our ae_title.
    """
    from pydicom import dcmread

    calling = calling_ae or ""
    called = config.ae_title if called_ae is None else called_ae
    out: dict[str, Any] = {
        "file": os.fspath(dicom_path),
        "sop_class_uid": None,
        "sop_instance_uid": None,
        "calling_ae": calling,
        "called_ae": called,
        "matched": [],
        "destinations": [],
        "unrouted": True,
        "error": None,
    }
    try:
        ds = dcmread(os.fspath(dicom_path), stop_before_pixels=True, force=True)
    except Exception as e:
        out["error"] = f"cannot read DICOM file: {e}"
        return out
    sop_class = str(ds.get("SOPClassUID", "") or "").strip("\x00 ") or None
    out["sop_class_uid"] = uid_label(sop_class) if sop_class else None
    out["sop_instance_uid"] = str(ds.get("SOPInstanceUID", "") or "").strip("\x00 ") or None
    result = config.rules.explain(ds, calling, called)
    for m in result.matches:
        rule = config.rules.rule(m.name)
        out["matched"].append(
            {
                "rule": m.name,
                "file": rule.file if rule else None,
                "line": rule.line if rule else None,
                "reasons": list(m.reasons),
                "forward": list(rule.forward) if rule else [],
                "stop": rule.stop if rule else False,
            }
        )
    out["destinations"] = list(result.destinations)
    out["unrouted"] = result.unrouted
    return out

"""Typed, frozen configuration, loaded from YAML with a file:line for every problem.

Modules: ``units`` (durations and byte sizes), ``fields`` (validated field types),
``models`` (the frozen pydantic models), ``load`` (YAML -> :class:`Config`, ``check``).
Pure apart from reading the config and rule files; docs/internal-apis.md describes it.
"""

from router.config.load import (
    DEFAULT_CONFIG_NAME,
    ENV_CONFIG,
    check,
    default_config_path,
    load_config,
)
from router.config.models import (
    Accept,
    CircuitBreaker,
    ClientTLS,
    Config,
    Destination,
    DicomWeb,
    DicomWebAuth,
    HoldConfig,
    Http,
    Listen,
    Logging,
    QueueSettings,
    Retry,
    ServerTLS,
    Storage,
    Transcode,
)
from router.config.units import parse_duration, parse_size
from router.problems import ConfigError, Problem

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ENV_CONFIG",
    "Accept",
    "CircuitBreaker",
    "ClientTLS",
    "Config",
    "ConfigError",
    "Destination",
    "DicomWeb",
    "DicomWebAuth",
    "HoldConfig",
    "Http",
    "Listen",
    "Logging",
    "Problem",
    "QueueSettings",
    "Retry",
    "ServerTLS",
    "Storage",
    "Transcode",
    "check",
    "default_config_path",
    "load_config",
    "parse_duration",
    "parse_size",
]

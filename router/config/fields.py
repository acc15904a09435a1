"""Field types of the config models: each validates one kind of value (durations, sizes,
ports, AE titles, hosts, networks, destination names, paths, secret files, URLs, transfer
syntaxes) and says
in its error how to write it, since that message is what ``dicom-router check`` prints.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from router.config.units import parse_duration, parse_size
from router.dicom import uids
from router.syntaxes import TARGET_ORDER

__all__ = [
    "AETitle",
    "DestinationName",
    "Duration",
    "ExistingFile",
    "Host",
    "ListenPort",
    "Network",
    "NodeId",
    "Port",
    "RelPath",
    "SecretFile",
    "Size",
    "TransferSyntax",
    "Url",
    "custom",
    "host_node_id",
    "lower",
]


def custom(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message reaches the operator exactly as written."""
    # A template without braces, so the message comes out exactly as written.
    return PydanticCustomError(kind, message.replace("{", "(").replace("}", ")"))


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise custom("duration", str(e)) from None


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise custom("size", str(e)) from None


def _port_checker(low: int) -> Any:
    def check(value: object) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise custom("port", f"{value!r} is not a port number ({low}-65535)")
        if not low <= value <= 65535:
            raise custom("port", f"{value} is not a port ({low}-65535)")
        return value

    return check


def _ae_title(value: object) -> str:
    if not isinstance(value, str):
        raise custom("ae_title", f'{value!r} is not an AE title: quote it, e.g. "{value}"')
    text = value.strip()
    if not text:
        raise custom("ae_title", "empty AE title: write 1 to 16 characters, e.g. ROUTER")
    if len(text) > 16:
        raise custom("ae_title", f"AE title {text!r} is {len(text)} characters long (max 16)")
    if "\\" in text or any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
        raise custom(
            "ae_title",
            f"AE title {text!r} has a character DICOM forbids (use A-Z, 0-9, space, _ - .)",
        )
    return text


def _host(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise custom("host", f"{value!r} is not a host: write a name or an IP address")
    return value.strip()


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _dest_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise custom(
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
        raise custom("file", f"file not found: {value}")
    return value


def _secret_file(value: Path, info: ValidationInfo) -> Path:
    """A file holding a secret on its first line (a token, a password): like a TLS file it
    must exist when files are checked, and an empty one is as good as a missing one."""
    value = _existing_file(value, info)
    if (info.context or {}).get("check_files", False):
        try:
            lines = value.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise custom("file", f"cannot read the secret file {value}: {e}") from None
        if not lines or not lines[0].strip():
            raise custom(
                "file", f"the secret file {value} is empty: put the secret on its first line"
            )
    return value


def _url(value: object) -> str:
    """An http:// or https:// URL without query or fragment (a DICOMweb root)."""
    example = "write e.g. https://pacs.example/dicom-web"
    if not isinstance(value, str) or not value.strip():
        raise custom("url", f"{value!r} is not a URL: {example}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise custom("url", f"{text!r} is not a valid URL: {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise custom("url", f"{text!r} is not an http:// or https:// URL: {example}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise custom(
            "url",
            f"{text!r}: give the DICOMweb root only, without user, query or fragment: {example}",
        )
    return text


def _transfer_syntax(value: object) -> str:
    """A lossless target syntax by UID, keyword (ExplicitVRLittleEndian) or name."""
    if not isinstance(value, str) or not value.strip():
        raise custom("transfer_syntax", f"{value!r} is not a transfer syntax")
    text = value.strip()
    for uid in TARGET_ORDER:
        if text in (uid, uids.keyword(uid), uids.name(uid)):
            return uid
    choices = ", ".join(uids.keyword(t) or t for t in TARGET_ORDER)
    raise custom(
        "transfer_syntax",
        f"{text!r} is not a lossless transfer syntax the router can write: one of {choices}",
    )


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
SecretFile = Annotated[Path, AfterValidator(_secret_file)]
Url = Annotated[str, BeforeValidator(_url)]


def lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _network(value: object) -> str:
    if not isinstance(value, str):
        raise custom("network", f"{value!r} is not an address or network: e.g. 10.0.0.5/32")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise custom(
            "network",
            f"{value!r} is not an IP address or network: write e.g. 10.0.0.5, 10.0.0.0/24 or"
            " fd00::/64",
        ) from None


Network = Annotated[str, BeforeValidator(_network)]


_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _node_id(value: object) -> str:
    if not isinstance(value, str) or not _NODE_ID_RE.match(value.strip()):
        raise custom(
            "node_id",
            f"{value!r} is not a node id: 1 to 63 letters, digits, _ . - (it names this node "
            "in leases and logs), e.g. router-a",
        )
    return value.strip()


def host_node_id() -> str:
    """The host name (its first label), as a valid node id: the default ``node_id``."""
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("_.-")[:63]
    return name or "router"


NodeId = Annotated[str, BeforeValidator(_node_id)]

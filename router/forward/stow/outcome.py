"""What a STOW-RS response means for each instance of the request.

Pure: no I/O. The client hands over the HTTP status, the Content-Type and (a bounded
prefix of) the body, and gets one :class:`InstanceResult` per part, in the order sent.

Decisions made here (PS3.18 10.5, and what servers answer in practice):

- Per-instance results come from the response's ReferencedSOPSequence (0008,1199) and
  FailedSOPSequence (0008,1198), as application/dicom+json or as XML (NativeDicomModel).
  Servers label the body loosely (Orthanc sends a 400 with no Content-Type at all when
  one instance of several failed), so the body is recognised by its first character.
- Referenced: delivered; with a WarningReason (0008,1196): delivered with warning.
- Failed: the FailureReason (0008,1197) is classified like a C-STORE status
  (:func:`router.forward.outcome.classify_status`: A7xx retried, A9xx, Cxxx, 0122 dead
  letter, 0110 retried). 0xC122 (referenced transfer syntax not supported) and 0x0122
  are flagged ``syntax_refused``: some servers answer 0122 for a transfer syntax they
  cannot store, and a losslessly converted copy may be accepted. A failed item without a
  FailureReason is retried.
- An instance the response names in neither sequence is retried: nothing says it is
  stored, nor that it never can be.
- A response whose status is 5xx, 429, 401, 403 or 408 is retried as a whole, whatever
  its body says, and counts against the destination (circuit breaker). Other statuses
  (2xx, 400, 409, other 4xx) use the per-instance results when the body has any.
  Without any: 400, 404, 413 and 415 dead-letter every instance with the status and the
  response's text (415 flagged ``syntax_refused``); everything else is retried.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.forward.outcome import Outcome, TransportFailure, classify_status

__all__ = [
    "InstanceResult",
    "ParsedResponse",
    "StowOutcome",
    "classify_response",
    "failed_request",
    "parse_response",
    "response_text",
]

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
WARNING_REASON = "00081196"
FAILURE_REASON = "00081197"

#: FailureReasons that may mean "not in this transfer syntax" (see the module docstring)
SYNTAX_REFUSED_REASONS = frozenset({0xC122, 0x0122})
#: whole-request statuses retried whatever the body says; they say the destination is not
#: taking anything right now (or not from us: credentials are the destination's config)
RETRIED_HTTP = frozenset({401, 403, 408, 429})
#: whole-request statuses that dead-letter when the body has no per-instance results
DEAD_LETTER_HTTP = frozenset({400, 404, 413, 415})
TEXT_LIMIT = 200  # characters of a response's text kept in a reason


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """One instance's result. ``status`` is its FailureReason or WarningReason when the
    response gave one; ``reason`` is one readable line for the queue and the logs."""

    sop_instance_uid: str
    outcome: Outcome
    reason: str
    status: int | None = None
    syntax_refused: bool = False


@dataclass(frozen=True, slots=True)
class StowOutcome:
    """A request's results: ``results`` has one entry per part, in the order sent.
    ``http_status`` is None when no response came back. ``destination_down`` says the
    request failed as a whole for a reason of the destination's (feeds the circuit
    breaker), not because of the instances."""

    results: tuple[InstanceResult, ...]
    http_status: int | None
    destination_down: bool
    reason: str
    #: what went wrong when no response came back (or the request never left)
    failure: TransportFailure | None = None


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """The per-instance content of a STOW-RS response: SOP Instance UID -> its
    WarningReason (referenced) or FailureReason (failed), None where absent."""

    referenced: Mapping[str, int | None]
    failed: Mapping[str, int | None]

    @property
    def empty(self) -> bool:
        return not self.referenced and not self.failed


def _int(value: Any) -> int | None:
    """A US value as DICOM JSON/XML carry it; tolerant of strings (decimal or hex)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            return None
    return None


def _json_first(item: Mapping[str, Any], tag: str) -> Any:
    attr = item.get(tag)
    if not isinstance(attr, Mapping):
        return None
    values = attr.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _json_sequence(doc: Mapping[str, Any], tag: str, reason_tag: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    attr = doc.get(tag)
    items = attr.get("Value") if isinstance(attr, Mapping) else None
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, Mapping):
            continue
        uid = _json_first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str) and uid.strip():
            out[uid.strip()] = _int(_json_first(item, reason_tag))
    return out


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _xml_attr(parent: ET.Element, tag: str) -> ET.Element | None:
    for attr in _children(parent, "DicomAttribute"):
        if attr.get("tag", "").upper() == tag:
            return attr
    return None


def _xml_first(parent: ET.Element, tag: str) -> str | None:
    attr = _xml_attr(parent, tag)
    if attr is None:
        return None
    for value in _children(attr, "Value"):
        if value.text is not None and value.text.strip():
            return value.text.strip()
    return None


def _xml_sequence(root: ET.Element, tag: str, reason_tag: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    attr = _xml_attr(root, tag)
    for item in _children(attr, "Item") if attr is not None else ():
        uid = _xml_first(item, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            out[uid] = _int(_xml_first(item, reason_tag))
    return out


def parse_response(body: bytes) -> ParsedResponse | None:
    """The per-instance results in a STOW-RS response body, or None when the body is
    not a STOW-RS response (empty, an error page, truncated, malformed)."""
    text = body.lstrip()
    if text.startswith((b"{", b"[")):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if isinstance(doc, list) and len(doc) == 1:  # some servers wrap the data set
            doc = doc[0]
        if not isinstance(doc, Mapping):
            return None
        if REFERENCED_SOP_SEQUENCE not in doc and FAILED_SOP_SEQUENCE not in doc:
            return None
        return ParsedResponse(
            _json_sequence(doc, REFERENCED_SOP_SEQUENCE, WARNING_REASON),
            _json_sequence(doc, FAILED_SOP_SEQUENCE, FAILURE_REASON),
        )
    if text.startswith(b"<"):
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            return None
        if _local(root.tag) != "NativeDicomModel":
            return None
        if _xml_attr(root, REFERENCED_SOP_SEQUENCE) is None and (
            _xml_attr(root, FAILED_SOP_SEQUENCE) is None
        ):
            return None
        return ParsedResponse(
            _xml_sequence(root, REFERENCED_SOP_SEQUENCE, WARNING_REASON),
            _xml_sequence(root, FAILED_SOP_SEQUENCE, FAILURE_REASON),
        )
    return None


_SPACES = re.compile(r"\s+")


def response_text(body: bytes, limit: int = TEXT_LIMIT) -> str:
    """A response body as one readable line of at most ``limit`` characters."""
    text = body.decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _http_reason(status: int, body: bytes) -> str:
    text = response_text(body)
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def failed_request(
    uids: Sequence[str],
    reason: str,
    *,
    http_status: int | None = None,
    failure: TransportFailure | None = None,
) -> StowOutcome:
    """Every instance retried: the request failed as a whole (no response, a timeout,
    or a status that says the destination cannot take anything now)."""
    results = tuple(InstanceResult(uid, Outcome.TRANSIENT, reason) for uid in uids)
    return StowOutcome(results, http_status, True, reason, failure)


def _per_instance(uid: str, parsed: ParsedResponse, http_status: int) -> InstanceResult:
    if uid in parsed.referenced:
        warning = parsed.referenced[uid]
        if warning is None:
            return InstanceResult(uid, Outcome.DELIVERED, f"stored (HTTP {http_status})")
        return InstanceResult(
            uid, Outcome.WARNING, f"stored with WarningReason 0x{warning:04X}", warning
        )
    if uid in parsed.failed:
        failure = parsed.failed[uid]
        if failure is None:
            return InstanceResult(uid, Outcome.TRANSIENT, "failed without a FailureReason")
        refused = failure in SYNTAX_REFUSED_REASONS
        reason = f"FailureReason 0x{failure:04X}"
        if refused:
            reason += " (transfer syntax not accepted)"
        return InstanceResult(uid, classify_status(failure), reason, failure, refused)
    return InstanceResult(
        uid, Outcome.TRANSIENT, f"HTTP {http_status}: the response does not name this instance"
    )


def classify_response(http_status: int, body: bytes, uids: Sequence[str]) -> StowOutcome:
    """The results of a request that sent the instances ``uids`` (in order) and got
    ``http_status`` with ``body`` (see the module docstring for the rules)."""
    if http_status >= 500 or http_status in RETRIED_HTTP:
        return failed_request(uids, _http_reason(http_status, body), http_status=http_status)
    parsed = parse_response(body)
    if parsed is not None and not parsed.empty:
        results = tuple(_per_instance(uid, parsed, http_status) for uid in uids)
        delivered = sum(r.outcome.delivered for r in results)
        summary = f"HTTP {http_status}: {delivered} of {len(uids)} stored"
        return StowOutcome(results, http_status, False, summary)
    reason = _http_reason(http_status, body)
    if http_status in DEAD_LETTER_HTTP:
        refused = http_status == 415
        if refused:
            reason += " (transfer syntax not accepted)"
        results = tuple(
            InstanceResult(uid, Outcome.PERMANENT, reason, None, refused) for uid in uids
        )
        return StowOutcome(results, http_status, False, reason)
    if 200 <= http_status < 300:
        reason = f"HTTP {http_status} without per-instance results"
    results = tuple(InstanceResult(uid, Outcome.TRANSIENT, reason) for uid in uids)
    return StowOutcome(results, http_status, False, reason)

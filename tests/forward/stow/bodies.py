"""STOW-RS bodies for the tests: responses shaped like Orthanc's and PS3.18's, and an
independent multipart parser (the standard library's email package)."""

from __future__ import annotations

import email.parser
import email.policy
import json
from collections.abc import Sequence


def _item(uid: str, reason_tag: str | None = None, reason: object = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if reason_tag is not None:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


def dicom_json(
    referenced: Sequence[tuple[str, int | None]] = (),
    failed: Sequence[tuple[str, object]] = (),
) -> bytes:
    doc: dict[str, object] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}
    doc["00081198"] = {"vr": "SQ"}
    if failed:
        doc["00081198"] = {
            "vr": "SQ",
            "Value": [_item(u, "00081197" if r is not None else None, r) for u, r in failed],
        }
    doc["00081199"] = {"vr": "SQ"}
    if referenced:
        doc["00081199"] = {
            "vr": "SQ",
            "Value": [_item(u, "00081196" if w is not None else None, w) for u, w in referenced],
        }
    return json.dumps(doc).encode()


def _xml_item(uid: str, tag: str | None, keyword: str, value: int | None) -> str:
    reason = (
        f'<DicomAttribute tag="{tag}" vr="US" keyword="{keyword}"><Value number="1">{value}'
        "</Value></DicomAttribute>"
        if tag
        else ""
    )
    return (
        '<Item number="1">'
        '<DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">'
        f'<Value number="1">{uid}</Value></DicomAttribute>{reason}</Item>'
    )


def dicom_xml(referenced: list[tuple[str, int | None]], failed: list[tuple[str, int]]) -> bytes:
    ref = "".join(
        _xml_item(u, "00081196" if w is not None else None, "WarningReason", w)
        for u, w in referenced
    )
    fail = "".join(_xml_item(u, "00081197", "FailureReason", r) for u, r in failed)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
        f'<DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">{fail}'
        '<Value number="1" /></DicomAttribute>'
        f'<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">{ref}'
        "</DicomAttribute></NativeDicomModel>"
    ).encode()


def split_parts(content_type: str, data: bytes) -> list[tuple[str, bytes]]:
    """An independent multipart parser (the standard library's email package)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data
    )
    assert msg.get_content_type() == "multipart/related"
    assert msg.get_param("type") == "application/dicom"
    out = []
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((part.get_content_type(), payload))
    return out

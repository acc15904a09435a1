"""What the rules do with one DICOM file, for ``dicom-router explain``.

The one place beside the rules that reads DICOM files: config loading and the rule engine
stay pure, and this adapter feeds them a header read from disk.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from router.profiles import describe
from router.rules.engine import uid_label

if TYPE_CHECKING:
    from router.config import Config

__all__ = ["explain_file"]


def explain_file(
    config: Config,
    dicom_path: str | os.PathLike[str],
    calling_ae: str | None = None,
    called_ae: str | None = None,
) -> dict[str, Any]:
    """What the rules of ``config`` do with one DICOM file.

    Returns ``{"file", "sop_class_uid", "sop_instance_uid", "calling_ae", "called_ae",
    "matched": [{"rule", "file", "line", "reasons": [...], "forward": [...], "stop"}],
    "destinations": [...], "unrouted": bool, "profiles": [{"destination", "profile",
    "changes": [{"attribute", "action"}]}], "error": str | None}``: ``profiles`` has one
    entry per matched destination with a profile (what it would change, never a value).
    calling_ae defaults to "" (rules on calling_ae then do not match); called_ae to our
    ae_title.
    """
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
        "profiles": [],
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
    out["profiles"] = _profiles(config, out["destinations"], ds)
    return out


def _profiles(config: Config, destinations: list[str], ds: Dataset) -> list[dict[str, Any]]:
    """What each matched destination's profile would change (actions, never values)."""
    out = []
    for name in destinations:
        dest = config.destinations.get(name)
        if dest is None or dest.profile is None:
            continue
        changes = describe(config.profiles[dest.profile], ds)
        out.append(
            {
                "destination": name,
                "profile": dest.profile,
                "changes": [{"attribute": c.attribute, "action": c.action} for c in changes],
            }
        )
    return out

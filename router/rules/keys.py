"""Match keys (DICOM keywords, tags, calling_ae/called_ae) and UID values, as written in
rules, turned into what the engine compares; anything else gets a message saying how to
write it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Final

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag

from router.dicom import uids
from router.rules.engine import CALLED_AE, CALLING_AE
from router.yamlsrc import suggest

__all__ = ["OPERATORS", "MatchKey", "normalize_uid", "parse_key"]

OPERATORS: Final = ("regex", "glob", "present", "gt", "ge", "lt", "le", "not")

_TAG_PAREN = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$")
_TAG_COMMA = re.compile(r"^([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})$")
_TAG_HEX = re.compile(r"^(?:0[xX])?([0-9A-Fa-f]{8})$")
_KEYWORD_BY_LOWER: Final = {k.lower(): k for k in keyword_dict}


@dataclass(frozen=True)
class MatchKey:
    """A parsed match key: how messages show it, its tag and VR (None for AE keys)."""

    display: str
    tag: int | None
    vr: str | None

    @property
    def is_uid(self) -> bool:
        return self.vr == "UI"


def parse_key(text: str) -> MatchKey | str:
    """A match key -> element description, or an error message."""
    if text in (CALLING_AE, CALLED_AE):
        return MatchKey(text, None, "AE")
    m = _TAG_PAREN.match(text) or _TAG_COMMA.match(text)
    tag: int | None = None
    if m:
        tag = int(m.group(1) + m.group(2), 16)
    else:
        m = _TAG_HEX.match(text)
        if m:
            tag = int(m.group(1), 16)
    if tag is not None:
        try:
            vr: str | None = dictionary_VR(tag)
        except KeyError:
            vr = None
        keyword = keyword_for_tag(tag) if vr is not None else ""
        display = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        return MatchKey(f"{keyword} {display}" if keyword else display, tag, vr)
    tag = keyword_dict.get(text)
    if tag is not None:
        return MatchKey(text, tag, dictionary_VR(tag))
    if text in OPERATORS:
        return (
            f"'{text}' is an operator: put it under a key, e.g. 'BodyPartExamined: {{{text}: ...}}'"
        )
    if text.lower() in _KEYWORD_BY_LOWER:
        hint = f" (did you mean '{_KEYWORD_BY_LOWER[text.lower()]}'? keywords are case-sensitive)"
    else:
        hint = suggest(text, keyword_dict)
    if text[:1].isdigit() or text.startswith("(") or text.lower().startswith("0x"):
        return (
            f"'{text}' is not a tag: write (gggg,eeee) or ggggeeee in hexadecimal, "
            "e.g. (0010,0020) or 00100020 (inside {...} quote it: '(0010,0020)')"
        )
    return (
        f"unknown DICOM keyword '{text}'{hint}; a key is a DICOM keyword, a tag like "
        "(0010,0020), calling_ae, called_ae, or one of any/all/not"
    )


@cache
def _uid_keywords() -> tuple[str, ...]:
    """Keywords offered as "did you mean": the storage SOP classes and transfer syntaxes,
    which are what rules on UIDs name."""
    found = {uids.keyword(u) for u in (*uids.STORAGE_SOP_CLASSES, *uids.ALL_TRANSFER_SYNTAXES)}
    return tuple(sorted(k for k in found if k))


def normalize_uid(text: str) -> tuple[str, str | None]:
    """(dotted UID, None) or (text, error message). Accepts dotted UIDs, UID keywords
    (CTImageStorage) and UID names (CT Image Storage)."""
    t = text.strip()
    if t and (t[0].isdigit()):
        if uids.is_valid(t):
            return t, None
        return t, (
            f"'{t}' is not a valid UID (dot-separated numbers without leading zeros, "
            "at most 64 characters)"
        )
    uid = uids.lookup(t)
    if uid is not None:
        return uid, None
    hint = suggest(t, _uid_keywords()) if " " not in t else ""
    return t, (
        f"unknown UID keyword or name '{t}'{hint}: write a dotted UID, "
        "a keyword like CTImageStorage or a name like 'CT Image Storage'"
    )

"""The header of a received data set: one walk over its element headers that checks the
structure and picks the few top-level elements the ingest and the rules read.

Reading every element with pydicom was the largest single cost of an instance at ingest
(docs/architecture.md, "Speed"). The walk that checks the structure visits every
element header anyway, so it also keeps the wanted elements' bytes and builds a pydicom
Dataset of just those, as the raw elements pydicom itself would have made: values are
converted by pydicom when read, so the rules see exactly what a full read shows them.
Anything out of the common case (big endian, an undefined-length element before the
pixel data, item tags at the top level, a wanted element with an unknown VR) returns
None and the caller reads the data set with pydicom as a whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_KNOWN_VRS = frozenset(v.value.encode() for v in VR if len(v.value) == 2)
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005

_LE_TAG_LEN = struct.Struct("<HHL")
_LE_SHORT = struct.Struct("<HH2sH")
_LE_LONG = struct.Struct("<L")
_BE_TAG_LEN = struct.Struct(">HHL")
_BE_SHORT = struct.Struct(">HH2sH")
_BE_LONG = struct.Struct(">L")


class BrokenDataSet(InvalidDicomError):
    """A data set whose element structure does not add up to its length."""


@lru_cache(maxsize=16)
def wanted_tags(tags: frozenset[int]) -> frozenset[int]:
    """``tags`` plus what a minimal data set needs to convert them as a full read
    would: the Specific Character Set, and the creator of each private element (its
    VR, when implicit, comes from the private dictionary by creator)."""
    out = set(tags)
    out.add(_CHARSET)
    for tag in tags:
        group, elem = tag >> 16, tag & 0xFFFF
        if group & 1 and elem >= 0x1000:
            out.add(group << 16 | elem >> 8)
    return frozenset(out)


def check_structure(fp: Any, start: int, end: int, *, implicit: bool, little: bool) -> None:
    """Walk the element headers from ``start`` to ``end`` (seeking over values, so a
    2 GB pixel data element costs one seek) and raise :class:`BrokenDataSet` when an
    element runs past the end (truncated), a header is cut, or undefined-length
    sequences and items do not close. Contents of undefined-length UN elements are
    implicit VR (PS3.5 6.2.2)."""
    _walk(fp, start, end, implicit=implicit, little=little, wanted=None)


def scan_header(
    fp: Any, start: int, end: int, *, implicit: bool, wanted: Iterable[int]
) -> Dataset | None:
    """Check the structure of a little endian data set (as :func:`check_structure`)
    and return a Dataset of its top-level elements in ``wanted`` that come before the
    pixel data, or None when the data set is out of the common case (then read it with
    pydicom). Raises :class:`BrokenDataSet` as the check does, and InvalidDicomError
    when there is no element before the pixel data (as the full read does)."""
    picked: dict[BaseTag, DataElement | RawDataElement] = {}
    found = _walk(
        fp, start, end, implicit=implicit, little=True, wanted=frozenset(wanted), picked=picked
    )
    if found is None:
        return None
    if not found:
        raise InvalidDicomError("empty data set")
    ds = Dataset(picked)
    encoding: str | list[str] | Any = default_encoding
    charset = picked.get(BaseTag(_CHARSET))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def _walk(
    fp: Any,
    start: int,
    end: int,
    *,
    implicit: bool,
    little: bool,
    wanted: frozenset[int] | None,
    picked: dict[BaseTag, DataElement | RawDataElement] | None = None,
) -> int | None:
    """The structure check; with ``wanted``, it also fills ``picked`` and returns how
    many top-level elements precede the pixel data (None: out of the common case)."""
    if little:
        tag_len, short, long_len = _LE_TAG_LEN, _LE_SHORT, _LE_LONG
    else:
        tag_len, short, long_len = _BE_TAG_LEN, _BE_SHORT, _BE_LONG
    picking = wanted is not None  # still before the pixel data, at the top level
    odd = False
    count = 0
    stack: list[bool] = []  # open undefined-length elements and items: implicit inside?
    pos = start
    while pos < end:
        if end - pos < 8:
            raise BrokenDataSet(f"{end - pos} bytes left where an element header starts")
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise BrokenDataSet("data set shorter than received")
        group, elem, length = tag_len.unpack(head)
        pos += 8
        if group == 0xFFFE:  # item / item delimiter / sequence delimiter
            if picking and not stack:
                odd, picking = True, False
            if elem == 0xE000:
                if length == _UNDEFINED:
                    stack.append(stack[-1] if stack else implicit)
                elif length > end - pos:
                    raise BrokenDataSet("item runs past the end of the data set")
                else:
                    pos += length
            elif elem in (0xE00D, 0xE0DD):
                if not stack:
                    raise BrokenDataSet("delimiter without an open sequence or item")
                stack.pop()
            else:
                raise BrokenDataSet(f"unknown item tag (fffe,{elem:04x})")
            continue
        here_implicit = stack[-1] if stack else implicit
        vr = b"UN"
        if not here_implicit:
            _g, _e, vr, length = short.unpack(head)
            if not (vr.isalpha() and vr.isupper()):
                raise BrokenDataSet(f"element ({group:04x},{elem:04x}) has no VR: {vr!r}")
            if vr in _LONG_VRS:
                more = fp.read(4)
                if len(more) < 4 or end - pos < 4:
                    raise BrokenDataSet("element header cut short")
                (length,) = long_len.unpack(more)
                pos += 4
        if picking and not stack:
            tag = group << 16 | elem
            if tag == _PIXEL_DATA:
                picking = False
            elif length == _UNDEFINED:
                # a sequence pydicom parses (and might refuse) as a whole
                odd, picking = True, False
            else:
                count += 1
                if tag in wanted:  # type: ignore[operator]
                    if not implicit and vr not in _KNOWN_VRS:
                        odd, picking = True, False
                    elif length <= end - pos:
                        _pick(fp, picked, tag, None if implicit else vr.decode(), length, pos)
        if length == _UNDEFINED:
            stack.append(here_implicit or vr == b"UN")
            continue
        if length > end - pos:
            raise BrokenDataSet(
                f"element ({group:04x},{elem:04x}) of {length} bytes runs past the end"
                f" of the data set ({end - pos} left): truncated"
            )
        pos += length
    if stack:
        raise BrokenDataSet("data set ends inside a sequence")
    return None if odd or wanted is None else count


def _pick(
    fp: Any,
    picked: dict[BaseTag, DataElement | RawDataElement] | None,
    tag: int,
    vr: str | None,
    length: int,
    at: int,
) -> None:
    """Keep one element as pydicom's reader would have yielded it."""
    assert picked is not None
    if length:
        fp.seek(at)
        value: bytes | None = fp.read(length)
    else:
        value = empty_value_for_VR(vr, raw=True)  # type: ignore[assignment]
    t = BaseTag(tag)
    picked[t] = RawDataElement(t, vr, length, value, at, vr is None, True)

"""Just enough Part-10 parsing to send a file without decoding it: the file meta group.

Stdlib only, so that the requestor client and the harness pay no pydicom import for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_PREAMBLE = 128
# Explicit VR elements whose length field is 4 bytes (after 2 reserved bytes).
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


@dataclass(frozen=True)
class FileMeta:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_offset: int  # where the data set starts: just after the file meta group
    size: int  # whole file size in bytes


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii")


def read_meta(path: Path) -> FileMeta:
    """Parse the preamble, "DICM" and the group 0002 elements (always explicit VR LE)."""
    with path.open("rb") as f:
        head = f.read(8192)
        size = f.seek(0, 2)
    if head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise ValueError(f"{path}: not a DICOM Part-10 file (no DICM prefix)")
    pos = _PREAMBLE + 4
    values: dict[int, bytes] = {}
    end: int | None = None
    while end is None or pos < end:
        if pos + 8 > len(head):
            raise ValueError(f"{path}: file meta group longer than 8 KiB or truncated")
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            value_at = pos + 8
        value = head[value_at : value_at + length]
        values[elem] = value
        pos = value_at + length
        if elem == 0x0000 and end is None:
            (group_length,) = struct.unpack("<I", value[:4])
            end = pos + group_length
    offset = end if end is not None else pos
    try:
        return FileMeta(
            path=path,
            sop_class_uid=_uid(values[0x0002]),
            sop_instance_uid=_uid(values[0x0003]),
            transfer_syntax=_uid(values[0x0010]),
            data_offset=offset,
            size=size,
        )
    except KeyError as exc:
        raise ValueError(f"{path}: file meta lacks (0002,{exc.args[0]:04X})") from None

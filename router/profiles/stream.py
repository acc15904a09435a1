"""A spooled Part-10 file rewritten for one destination's profile, pixel data untouched.

Memory stays bounded by the header, not the instance: only the elements before the pixel
data (and the few after it, usually none) are decoded and re-encoded, in the file's own
transfer syntax; the pixel data element is located by offset and length so the sender
streams it unchanged from the spool. The exception is Deflated Explicit VR Little Endian,
where the whole data set is one deflate stream: it is inflated, rewritten and deflated
again in memory (such instances are reports and small objects in practice).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from router.dicom.uids import DEFLATED_EXPLICIT_VR_LE
from router.profiles.actions import apply_profile
from router.profiles.model import Profile
from router.store.spool import part10_header

#: the elements after the pixel data are decoded in memory; more than this is refused
MAX_TAIL_BYTES: Final = 16 * 1024 * 1024
_LONG_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN"})
_LONG_VRS_ALL: Final = _LONG_VRS | {b"UR", b"UT"}
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_SEQUENCE_END: Final = 0xFFFEE0DD


class RewriteError(ValueError):
    """The spooled file cannot be rewritten (it is not the Part-10 file the spool writes)."""


@dataclass(frozen=True, slots=True)
class Rewritten:
    """What to send for one instance: ``dataset_head``, then bytes ``pixel_offset`` ..
    ``pixel_offset + pixel_length`` of the original file, then ``dataset_tail``.

    ``meta + dataset_head + <pixel range> + dataset_tail`` is the rewritten Part-10 file;
    a C-STORE sends everything but ``meta``, with ``sop_instance_uid`` in its command."""

    meta: bytes  #: preamble, "DICM" and file meta (MediaStorageSOPInstanceUID is the new UID)
    dataset_head: bytes  #: the rewritten data set up to the pixel data
    pixel_offset: int  #: where the original (7FE0,0010) element starts in the source
    pixel_length: int  #: its length in bytes, header included; 0 without pixel data
    dataset_tail: bytes  #: the rewritten elements after the pixel data (usually empty)
    sop_class_uid: str
    sop_instance_uid: str  #: the SOP Instance UID after the profile
    transfer_syntax: str  #: the same as the source's

    def chunks(self, source: Path | bytes | memoryview, size: int = 1 << 20) -> Iterator[bytes]:
        """The data set to send, in pieces of at most ``size`` bytes (``meta`` excluded)."""
        yield self.dataset_head
        if self.pixel_length:
            with _open(source) as fp:
                fp.seek(self.pixel_offset)
                left = self.pixel_length
                while left:
                    piece = fp.read(min(size, left))
                    if not piece:
                        raise RewriteError("the spooled file ended inside its pixel data")
                    left -= len(piece)
                    yield piece
        if self.dataset_tail:
            yield self.dataset_tail


def _open(source: Path | bytes | memoryview) -> BinaryIO:
    if isinstance(source, Path):
        return source.open("rb")
    return io.BytesIO(source)


def _encode(ds: Dataset, ts: UID) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = ts.is_little_endian
    buf.is_implicit_VR = ts.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


def _read(fp: BinaryIO, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise RewriteError("the spooled file ends inside an element")
    return data


def _skip_pixel_element(fp: BinaryIO, ts: UID) -> None:
    """Move ``fp`` from the start of the pixel data element to just past it."""
    end = "<" if ts.is_little_endian else ">"
    _read(fp, 4)
    if ts.is_implicit_VR:
        (length,) = struct.unpack(end + "I", _read(fp, 4))
    else:
        vr = _read(fp, 2)
        if vr in _LONG_VRS_ALL:
            (length,) = struct.unpack(end + "2xI", _read(fp, 6))
        else:
            (length,) = struct.unpack(end + "H", _read(fp, 2))
    if length != _UNDEFINED:
        fp.seek(length, io.SEEK_CUR)
        return
    while True:  # encapsulated: items of defined length up to the sequence delimiter
        group, element, item_length = struct.unpack(end + "HHI", _read(fp, 8))
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM or item_length == _UNDEFINED:
            raise RewriteError("the encapsulated pixel data is malformed")
        fp.seek(item_length, io.SEEK_CUR)


def rewrite_part10(
    profile: Profile, secret: bytes | None, source: Path | bytes | memoryview
) -> Rewritten:
    """Rewrite the spooled Part-10 file ``source`` (a path, or the bytes of a small one)
    as ``profile`` says.

    Raises :class:`router.profiles.BurnedInAnnotationError` when the profile must not send
    this instance, and :class:`RewriteError` when ``source`` is not a readable Part-10
    file."""
    with _open(source) as fp:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except Exception as e:  # pydicom raises many kinds on a damaged file
            raise RewriteError(f"the spooled file cannot be read as DICOM: {e}") from None
        meta = ds.file_meta
        ts = UID(str(meta.get("TransferSyntaxUID", "")))
        if not ts.is_transfer_syntax:
            raise RewriteError(f"the spooled file has no usable transfer syntax: {ts!r}")
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        if ts == DEFLATED_EXPLICIT_VR_LE:
            return _rewrite_deflated(profile, secret, fp, sop_class, ts)
        pixel_offset = fp.tell()
        fp.seek(0, io.SEEK_END)
        size = fp.tell()
        pixel_length = 0
        tail = b""
        if pixel_offset < size:
            fp.seek(pixel_offset)
            _skip_pixel_element(fp, ts)
            pixel_length = fp.tell() - pixel_offset
            if pixel_offset + pixel_length > size:
                raise RewriteError("the spooled file ends inside its pixel data")
            if size - fp.tell() > MAX_TAIL_BYTES:
                raise RewriteError("more than 16 MiB of elements follow the pixel data")
            tail = fp.read()
    uid = apply_profile(profile, secret, ds)
    tail_bytes = b""
    if tail:
        try:
            tail_ds = pydicom.dcmread(io.BytesIO(part10_header(sop_class, uid, str(ts)) + tail))
        except Exception as e:  # as above: a damaged file raises many kinds
            raise RewriteError(f"the elements after the pixel data cannot be read: {e}") from None
        apply_profile(profile, secret, tail_ds, top_level=False)
        tail_bytes = _encode(tail_ds, ts)
    return Rewritten(
        meta=part10_header(sop_class, uid, str(ts)),
        dataset_head=_encode(ds, ts),
        pixel_offset=pixel_offset,
        pixel_length=pixel_length,
        dataset_tail=tail_bytes,
        sop_class_uid=sop_class,
        sop_instance_uid=uid,
        transfer_syntax=str(ts),
    )


def _rewrite_deflated(
    profile: Profile, secret: bytes | None, fp: BinaryIO, sop_class: str, ts: UID
) -> Rewritten:
    fp.seek(0)
    ds = pydicom.dcmread(fp)
    uid = apply_profile(profile, secret, ds)
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(_encode(ds, ts)) + deflater.flush()
    return Rewritten(
        meta=part10_header(sop_class, uid, str(ts)),
        dataset_head=body,
        pixel_offset=0,
        pixel_length=0,
        dataset_tail=b"",
        sop_class_uid=sop_class,
        sop_instance_uid=uid,
        transfer_syntax=str(ts),
    )

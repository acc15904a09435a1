"""Convert a stored data set to another transfer syntax for a destination.

The conversion engine only; choosing the syntax is :mod:`router.syntaxes`. Synchronous and
CPU-heavy (pixel decoding): the forward worker runs it off the event loop, e.g.::

    limiter = anyio.CapacityLimiter(2)          # concurrent decodes, one per spare core
    target = syntaxes.plan(lease.transfer_syntax, assoc.accepted_transfer_syntaxes(sop))
    if target is None:
        dead letter with syntaxes.refusal(lease.transfer_syntax, accepted)
    elif target == lease.transfer_syntax:
        send the stored bytes untouched (offset=lease.data_offset)
    else:
        try:
            out = await anyio.to_thread.run_sync(
                functools.partial(transcode, lease.source, lease.transfer_syntax, target,
                                  data_offset=lease.data_offset, tmp_dir=spool.tmp_dir,
                                  max_decoded_bytes=limit),
                limiter=limiter)
        except TranscodeError as e:
            dead letter with e.reason  (never dropped)
        try:
            await assoc.c_store(sop, uid, out.transfer_syntax, out.path)   # offset 0
        finally:
            out.discard()

What changes in the data set, and only that: the encoding (VR form, byte order, deflate);
the pixel coding; Photometric Interpretation and Planar Configuration where decoding
changes them (YBR_FULL_422 from JPEG becomes YBR_FULL once upsampled, YBR_RCT/YBR_ICT from
JPEG 2000 becomes RGB, decoded colour is always Planar Configuration 0); the Extended Offset
Table of an encapsulated source (meaningless for native pixel data) is removed; and Lossy
Image Compression becomes "01" when the source was DCT JPEG without saying so (PS3.3
C.7.6.1.1.5; an existing "01" always stays). The SOP Instance UID never changes and
YCbCr is never converted to RGB. :attr:`Transcoded.changes` lists every such update.

Memory: the decoded size is estimated from the header before anything is decoded; above
``max_decoded_bytes`` (or a stored/inflated data set above it) the instance is refused
with :class:`TranscodeError` ("too large to transcode"). Decoding to a native syntax
writes frame by frame (peak: the encoded pixel data + one frame); encoding to a compressed
syntax holds the decoded pixels and the encoded result.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from router import syntaxes
from router.dicom.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE
from router.syntaxes import NATIVE, name

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "TranscodeError",
    "Transcoded",
    "transcode",
]

#: default bound on the decoded size of one instance (and on a stored data set converted)
DEFAULT_MAX_DECODED_BYTES = 512 * 1024 * 1024

PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, PIXEL_DATA}
_EXTENDED_OFFSET_TABLE = (0x7FE00001, 0x7FE00002)
_CHUNK = 1 << 20
#: VRs whose values are binary words that change with the byte order, and the word size
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
#: attributes whose before/after values are reported in Transcoded.changes
_WATCHED = (
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "LossyImageCompression",
    "NumberOfFrames",
    "PixelRepresentation",
    "BitsStored",
)


class TranscodeError(Exception):
    """The instance cannot be converted; ``reason`` says why (for the dead letter)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Transcoded:
    """A converted data set: ``path`` holds it without preamble or file meta, ready for
    ``c_store(sop_class, sop_instance, transfer_syntax, path)``. The caller owns the file
    and removes it with :meth:`discard` once sent (or given up)."""

    path: Path
    transfer_syntax: str
    length: int
    #: human-readable updates made besides the encoding, e.g.
    #: "PhotometricInterpretation: YBR_FULL_422 -> YBR_FULL"
    changes: tuple[str, ...]

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def transcode(
    source: bytes | bytearray | memoryview | Path,
    source_ts: str,
    target_ts: str,
    *,
    data_offset: int = 0,
    tmp_dir: Path | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Transcoded:
    """Convert the data set stored in ``source`` from ``data_offset`` on (a spooled Part-10
    file or its bytes; the data set is read in ``source_ts``, the file meta is ignored) to
    ``target_ts``, into a new file in ``tmp_dir`` (default: the system's temp directory;
    the router passes its storage tmp/ directory, swept at start-up).

    Blocking and CPU-bound: run it in a worker thread. Raises :class:`TranscodeError` with a
    reason for anything that cannot be converted (unknown or undecodable syntax, decoder or
    encoder failure, too large, malformed data set); ``ValueError`` only for a call that
    breaks the contract (target not one of :data:`router.syntaxes.TARGET_ORDER`, or equal
    to the source).
    """
    if target_ts not in syntaxes.TARGET_ORDER:
        raise ValueError(f"{target_ts} is not a target syntax")
    if target_ts == source_ts:
        raise ValueError("source and target syntax are the same: send the original")
    if target_ts not in syntaxes.ENCODABLE:
        raise TranscodeError(f"no installed encoder for {name(target_ts)}")
    if source_ts not in syntaxes.DECODABLE:
        raise TranscodeError(f"no installed decoder for {name(source_ts)}")

    with contextlib.ExitStack() as stack:
        fp, size = _open_data_set(source, data_offset, stack)
        if source_ts == DEFLATED_EXPLICIT_VR_LE:
            fp, size = _inflate(fp, tmp_dir, max_decoded_bytes, stack)
            read_ts = EXPLICIT_VR_LE
        else:
            read_ts = source_ts
        if size > max_decoded_bytes:
            raise TranscodeError(
                f"too large to transcode: the data set is {size} bytes, the limit "
                f"(max_decoded_bytes) is {max_decoded_bytes}"
            )
        ds = _read(fp, read_ts, max_decoded_bytes)
        out = _new_output(tmp_dir)
        try:
            with out:
                changes = _convert(ds, read_ts, target_ts, out, max_decoded_bytes)
            length = os.path.getsize(out.name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out.name)
            raise
        return Transcoded(Path(out.name), target_ts, length, tuple(changes))
    raise AssertionError("unreachable")  # pragma: no cover (for mypy: ExitStack may swallow)


# -- input ---------------------------------------------------------------------------------


def _open_data_set(
    source: bytes | bytearray | memoryview | Path, offset: int, stack: contextlib.ExitStack
) -> tuple[BinaryIO, int]:
    if isinstance(source, Path):
        try:
            f = stack.enter_context(source.open("rb"))
            size = os.fstat(f.fileno()).st_size - offset
        except OSError as e:
            raise TranscodeError(f"cannot read the stored data set: {e}") from e
        if size < 0:
            raise TranscodeError("the stored file is shorter than its header")
        f.seek(offset)
        return f, size
    view = memoryview(source)[offset:]
    return io.BytesIO(view), len(view)


def _inflate(
    fp: BinaryIO, tmp_dir: Path | None, limit: int, stack: contextlib.ExitStack
) -> tuple[BinaryIO, int]:
    """Inflate a deflated data set (raw deflate, PS3.5 A.5) into a temporary file."""
    out = stack.enter_context(tempfile.TemporaryFile(dir=tmp_dir, prefix="inflate-"))  # noqa: SIM115
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while True:
            chunk = fp.read(_CHUNK)
            data = inflater.decompress(chunk, _CHUNK) if chunk else inflater.flush()
            while True:
                total += len(data)
                if total > limit:
                    raise TranscodeError(
                        f"too large to transcode: the inflated data set exceeds the limit "
                        f"(max_decoded_bytes) of {limit} bytes"
                    )
                out.write(data)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
            if not chunk or inflater.eof:
                break
    except zlib.error as e:
        raise TranscodeError(f"cannot inflate the deflated data set: {e}") from e
    out.seek(0)
    return out, total


def _read(fp: BinaryIO, ts: str, limit: int) -> Dataset:
    """The whole data set, after checking from its header that decoding it stays within
    ``limit`` bytes."""
    uid = UID(ts)
    start = fp.tell()
    try:
        header = read_dataset(
            fp, uid.is_implicit_VR, uid.is_little_endian, stop_when=_at_pixel_data
        )
        decoded = _decoded_size(header)
    except TranscodeError:
        raise
    except Exception as e:
        raise TranscodeError(f"cannot parse the data set as {name(ts)}: {_describe(e)}") from e
    if decoded is not None and decoded > limit:
        raise TranscodeError(
            f"too large to transcode: {decoded} bytes decoded, the limit "
            f"(max_decoded_bytes) is {limit}"
        )
    fp.seek(start)
    try:
        ds = read_dataset(fp, uid.is_implicit_VR, uid.is_little_endian)
    except Exception as e:
        raise TranscodeError(f"cannot parse the data set as {name(ts)}: {_describe(e)}") from e
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return ds


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TranscodeError(f"{keyword} is not a number: {value!r}") from None


def _decoded_size(ds: Dataset) -> int | None:
    """Bytes of the native pixel data the Image Pixel module describes (None: no image)."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if rows is None or cols is None or bits is None:
        return None
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    frames = _int(ds, "NumberOfFrames", 1) or 1
    pixels = rows * cols * samples * frames
    return (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)


# -- output --------------------------------------------------------------------------------


def _new_output(tmp_dir: Path | None) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(  # closed by the caller
        dir=tmp_dir, prefix="transcode-", suffix=".dcm", delete=False
    )


class _DeflateWriter(io.RawIOBase):
    """Raw-deflates what is written into ``out``; ``tell`` counts uncompressed bytes."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._n += len(data)
        self._out.write(self._z.compress(data))
        return len(data)

    def tell(self) -> int:
        return self._n

    def finish(self) -> None:
        self._out.write(self._z.flush())


def _encoder_of(ts: str) -> tuple[bool, bool]:
    if ts == DEFLATED_EXPLICIT_VR_LE:
        return False, True
    uid = UID(ts)
    return bool(uid.is_implicit_VR), bool(uid.is_little_endian)


def _convert(ds: Dataset, read_ts: str, target_ts: str, out: IO[bytes], limit: int) -> list[str]:
    before = {k: ds.get(k) for k in _WATCHED}
    sop_instance = ds.get("SOPInstanceUID")
    source_native = read_ts in NATIVE
    target_native = target_ts in NATIVE
    implicit, little = _encoder_of(target_ts)
    px = ds.get(PIXEL_DATA)  # by tag: the element (by keyword it would be the value)
    extra: list[str] = []

    _refuse_nested_encapsulated(ds, source_native)
    if UID(read_ts).is_implicit_VR and not implicit:
        # resolve 'OB or OW', 'US or SS'... now, while the values are still little endian
        correct_ambiguous_vr(ds, True)
        if px is not None and not px.is_undefined_length:
            # explicit VR: OB for 8-bit pixels (as they would have been sent explicit)
            bits = _int(ds, "BitsAllocated", 16) or 16
            px.VR = "OB" if bits <= 8 else "OW"
    if not UID(read_ts).is_little_endian or not little:
        # native big endian in or out: OW/OF/OL/OD/OV values are words in the byte order
        _swap_words(ds)
        if not UID(read_ts).is_little_endian:
            ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)  # pixel words now LE

    deflater = _DeflateWriter(out) if target_ts == DEFLATED_EXPLICIT_VR_LE else None
    sink: Any = deflater if deflater is not None else out
    fp = DicomFileLike(sink)
    fp.is_implicit_VR, fp.is_little_endian = implicit, little

    step = f"convert {name(read_ts)} -> {name(target_ts)}"
    try:
        if px is None or (source_native and target_native):
            write_dataset(fp, ds)
        elif target_native:
            step = f"decode {name(read_ts)}"
            _mark_lossy(ds, read_ts)
            extra += _drop_extended_offset_table(ds)
            _decode_to_native(ds, fp, implicit, little)
        else:
            # through the decoder even for native pixels: the encoders want colour
            # interleaved (Planar Configuration 0) and YBR_FULL_422 upsampled
            step = f"decode {name(read_ts)}"
            _decode_in_memory(ds)
            if not source_native:
                extra += _drop_extended_offset_table(ds)
            _mark_lossy(ds, read_ts)
            step = f"encode {name(target_ts)}"
            _encode(ds, target_ts)
            step = f"write {name(target_ts)}"
            write_dataset(fp, ds)
        if deflater is not None:
            deflater.finish()
    except (TranscodeError, MemoryError, OSError):
        raise
    except Exception as e:
        raise TranscodeError(f"cannot {step}: {_describe(e)}") from e

    if ds.get("SOPInstanceUID") != sop_instance:  # pragma: no cover (a guard, never expected)
        raise TranscodeError("conversion changed the SOP Instance UID")
    changes = [
        f"{k}: {_show(before[k])} -> {_show(ds.get(k))}"
        for k in _WATCHED
        if _show(before[k]) != _show(ds.get(k))
    ]
    return changes + [c for c in extra if not any(c.startswith(k + ":") for k in _WATCHED)]


def _show(value: Any) -> str:
    return "absent" if value is None else str(value)


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _refuse_nested_encapsulated(ds: Dataset, source_native: bool) -> None:
    if source_native:
        return
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                for sub in item.iterall():
                    if sub.tag == PIXEL_DATA and sub.is_undefined_length:
                        raise TranscodeError(
                            "encapsulated pixel data inside a sequence (e.g. an Icon Image "
                            "Sequence) is not supported for transcoding"
                        )


def _swap_words(ds: Dataset) -> None:
    """Reverse the byte order of every word-valued binary element (pydicom leaves them as
    read). Pixel Data is swapped by its Bits Allocated (as pydicom reads big endian)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_words(item)
            continue
        width = _SWAP_WIDTH.get(elem.VR)
        if elem.tag == PIXEL_DATA:
            if elem.is_undefined_length:
                continue
            bits = _int(ds, "BitsAllocated", 8) or 8
            if bits in (16, 32, 64):
                width = bits // 8
        if width is None or not elem.value:
            continue
        elem.value = _swapped(bytes(elem.value), width)


def _swapped(data: bytes, width: int) -> bytes:
    import numpy as np

    n = len(data) // width * width
    arr = np.frombuffer(data[:n], dtype=f"<u{width}").byteswap()
    return arr.tobytes() + data[n:]


def _mark_lossy(ds: Dataset, read_ts: str) -> None:
    """PS3.3 C.7.6.1.1.5: decoded DCT JPEG pixels have lost information for good."""
    if read_ts in syntaxes.ALWAYS_LOSSY and ds.get("LossyImageCompression") != "01":
        ds.LossyImageCompression = "01"


def _drop_extended_offset_table(ds: Dataset) -> list[str]:
    dropped = []
    for tag in _EXTENDED_OFFSET_TABLE:
        if tag in ds:
            dropped.append(f"{ds[tag].keyword}: removed")
            del ds[tag]
    return dropped


def _frames(ds: Dataset) -> Iterator[tuple[Any, dict[str, str | int]]]:
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    # as_rgb=False: YCbCr stays YCbCr (the decoder reports what it produced)
    yield from decoder.iter_array(ds, as_rgb=False)


def _apply_properties(ds: Dataset, props: dict[str, str | int]) -> None:
    pi = props.get("photometric_interpretation")
    if pi == "YBR_FULL_422":
        # the decoder upsampled the chroma (one Cb Cr per pixel) but pydicom 3.0 still
        # reports the coded value; native YBR_FULL_422 would mean subsampled (PS3.3
        # C.7.6.3.1.2), so the decoded pixels are YBR_FULL
        pi = "YBR_FULL"
    if pi is not None:
        ds.PhotometricInterpretation = str(pi)
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    if samples > 1 and "planar_configuration" in props:
        ds.PlanarConfiguration = int(props["planar_configuration"])


def _frame_bytes(arr: Any, bits: int) -> bytes:
    if bits == 1:
        raise AssertionError("bit-packed frames are handled by the caller")
    if arr.dtype.itemsize * 8 != bits:
        raise TranscodeError(
            f"decoder returned {arr.dtype.itemsize * 8}-bit samples for Bits Allocated {bits}"
        )
    data: bytes = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return data


def _decode_to_native(ds: Dataset, fp: DicomFileLike, implicit: bool, little: bool) -> None:
    """Write ``ds`` with its encapsulated Pixel Data decoded, one frame at a time."""
    import numpy as np
    from pydicom.pixels.utils import pack_bits

    expected = _decoded_size(ds)
    bits = _int(ds, "BitsAllocated")
    if expected is None or bits is None:
        raise TranscodeError("Pixel Data without Rows, Columns or Bits Allocated")
    frames = _frames(ds)
    first = next(frames, None)
    if first is None:
        raise TranscodeError("the encapsulated Pixel Data holds no frame")

    # head: every element before Pixel Data; tail: every element after it
    tail = Dataset()
    for tag in [t for t in ds.keys() if t > PIXEL_DATA]:  # noqa: SIM118 (iterates elements)
        tail[tag] = ds[tag]
    head = ds
    del head[PIXEL_DATA]
    for tag in list(tail.keys()):
        del head[tag]
    _apply_properties(head, first[1])
    write_dataset(fp, head)

    padded = expected + (expected % 2)
    fp.write_tag(Tag(PIXEL_DATA))
    if not implicit:
        fp.write(b"OW\x00\x00" if bits > 8 else b"OB\x00\x00")
    fp.write_UL(padded)
    written = 0
    if bits == 1:
        arrs = [first[0]]
        arrs += [a for a, _ in frames]
        data = pack_bits(np.concatenate([a.ravel() for a in arrs]), pad=False)
        fp.write(data)
        written = len(data)
    else:
        for arr, _props in _chain(first, frames):
            data = _frame_bytes(arr, bits)
            if not little and bits > 8:
                data = _swapped(data, bits // 8)
            written += len(data)
            if written > expected:
                break
            fp.write(data)
    if written != expected:
        raise TranscodeError(
            f"decoded {written} bytes of pixel data where the header describes {expected}"
        )
    if padded != expected:
        fp.write(b"\x00")
    if len(tail):
        write_dataset(fp, tail)


def _chain(
    first: tuple[Any, dict[str, str | int]], rest: Iterator[tuple[Any, dict[str, str | int]]]
) -> Iterator[tuple[Any, dict[str, str | int]]]:
    yield first
    yield from rest


def _decode_in_memory(ds: Dataset) -> None:
    """Decode the encapsulated Pixel Data in place (for re-encoding in another syntax)."""
    from pydicom.pixels.utils import pack_bits

    bits = _int(ds, "BitsAllocated")
    if bits is None:
        raise TranscodeError("Pixel Data without Bits Allocated")
    chunks: list[bytes] = []
    props: dict[str, str | int] = {}
    arrs = []
    for arr, frame_props in _frames(ds):
        props = frame_props
        if bits == 1:
            arrs.append(arr.ravel())
        else:
            chunks.append(_frame_bytes(arr, bits))
    if bits == 1:
        import numpy as np

        chunks = [pack_bits(np.concatenate(arrs), pad=False)]
    value = b"".join(chunks)
    if len(value) % 2:
        value += b"\x00"
    _apply_properties(ds, props)
    elem = ds[PIXEL_DATA]
    elem.value = value
    elem.is_undefined_length = False
    elem.VR = "OW" if bits > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)


def _encode(ds: Dataset, target_ts: str) -> None:
    from pydicom.pixels.utils import compress

    # native little-endian pixels by now (read so, swapped from big endian, or decoded)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    compress(ds, UID(target_ts), generate_instance_uid=False)

"""The STOW-RS request body: multipart/related, one application/dicom part per instance,
generated while it is sent.

Each part is a Part-10 file exactly as the spool holds it (file meta plus data set):
bytes for an instance kept inline in the queue, else a file read in bounded chunks. The
body's length is known before the first byte (part headers plus file sizes), so the
request goes with a Content-Length rather than chunked (servers without chunked request
bodies take it too) and memory stays at one chunk whatever the instance size.
"""

from __future__ import annotations

import errno
import secrets
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from router.store.queue import Lease

#: a piece of a part: bytes, or ``(path, offset, length)`` of a file (router.dicom's)
Segment = bytes | bytearray | memoryview | tuple[Path, int, int]

__all__ = [
    "CHUNK_SIZE",
    "MultipartBody",
    "Part",
    "SourceError",
    "group_by_study",
    "new_boundary",
    "part_of",
    "part_of_segments",
]

CHUNK_SIZE = 1024 * 1024  # bytes read from a spool file per step of the body
PART_CONTENT_TYPE = "application/dicom"

T = TypeVar("T")


class SourceError(Exception):
    """A part's bytes could not be read as promised. ``permanent``: the stored copy is
    gone or shorter than its size (retrying cannot help); else an I/O error that may
    pass (out of descriptors, a disk hiccup)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


_GONE = frozenset({errno.ENOENT, errno.ENOTDIR})


def _os_error(path: Path, e: OSError) -> SourceError:
    return SourceError(f"{path}: {e.strerror or e}", permanent=e.errno in _GONE)


@dataclass(frozen=True, slots=True)
class Part:
    """One instance to send: ``header`` then ``length`` bytes of ``source`` from
    ``offset`` (together a Part-10 file: the spool's file or inline bytes; or a converted
    data set behind a new file meta ``header``). With ``segments`` (see
    :func:`part_of_segments`), the part is ``header`` then those, and ``source`` is unused."""

    sop_instance_uid: str
    source: bytes | Path
    offset: int = 0
    length: int | None = None  # None: to the end of the source
    header: bytes = b""
    segments: tuple[Segment, ...] = ()

    def size(self) -> int:
        """The part's byte count; raises :class:`SourceError` when the file is gone or
        too short for ``offset`` + ``length``."""
        if self.segments:
            return len(self.header) + sum(_segment_size(s) for s in self.segments)
        return len(self.header) + self._source_size()

    def _source_size(self) -> int:
        if isinstance(self.source, bytes):
            total = len(self.source)
        else:
            try:
                total = self.source.stat().st_size
            except OSError as e:
                raise _os_error(self.source, e) from e
        available = total - self.offset
        if self.length is None:
            if available < 0:
                raise SourceError(
                    f"offset {self.offset} past the end ({total} bytes)", permanent=True
                )
            return available
        if self.length > available:
            raise SourceError(
                f"{self.length} bytes promised, {max(available, 0)} there", permanent=True
            )
        return self.length


def _segment_size(segment: Segment) -> int:
    if not isinstance(segment, tuple):
        return len(segment)
    path, offset, length = segment
    return Part("", path, offset, length).size()


def part_of_segments(sop_instance_uid: str, segments: Sequence[Segment]) -> Part:
    """A part made of byte strings and ``(path, offset, length)`` ranges, in order (a
    profile's rewritten copy: new header and elements around the stored pixel data)."""
    return Part(sop_instance_uid, b"", segments=tuple(segments))


def part_of(lease: Lease) -> Part:
    """A leased delivery as a part: its whole Part-10 file (header and data set), from
    the spool file or the inline bytes."""
    return Part(lease.sop_instance_uid, lease.source, 0, lease.size)


def new_boundary() -> str:
    """A random boundary (128 bits): the chance it occurs inside a part is nil."""
    return "dicom-router-" + secrets.token_hex(16)


class MultipartBody:
    """A multipart/related body over ``parts``: ``content_type``, ``content_length``,
    and ``async for chunk in body`` (one pass; chunks of at most :data:`CHUNK_SIZE`)."""

    def __init__(
        self, parts: Sequence[Part], *, boundary: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> None:
        if not parts:
            raise ValueError("a STOW-RS request needs at least one instance")
        self.parts = tuple(parts)
        self.boundary = boundary or new_boundary()
        self.chunk_size = chunk_size
        self.sizes = tuple(p.size() for p in self.parts)
        self._head = f"--{self.boundary}\r\nContent-Type: {PART_CONTENT_TYPE}\r\n\r\n".encode(
            "ascii"
        )
        self._tail = f"--{self.boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{PART_CONTENT_TYPE}"; boundary={self.boundary}'

    @property
    def content_length(self) -> int:
        per_part = len(self._head) + 2  # head, data, CRLF
        return len(self.parts) * per_part + sum(self.sizes) + len(self._tail)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._generate()

    async def _generate(self) -> AsyncIterator[bytes]:
        """The pieces joined up to ``chunk_size``: a small instance goes in one write
        with its part head and the boundaries, not four."""
        held: list[bytes] = []
        n = 0
        async for piece in self._pieces():
            if n + len(piece) <= self.chunk_size:
                held.append(piece)
                n += len(piece)
                continue
            if held:
                yield b"".join(held)
            held, n = [piece], len(piece)
        if held:
            yield b"".join(held)

    async def _pieces(self) -> AsyncIterator[bytes]:
        for part, size in zip(self.parts, self.sizes, strict=True):
            yield self._head
            if part.header:
                yield part.header
                size -= len(part.header)
            if part.segments:
                for segment in part.segments:
                    async for chunk in self._segment(segment):
                        yield chunk
            elif isinstance(part.source, bytes):
                for start in range(part.offset, part.offset + size, self.chunk_size):
                    yield part.source[start : min(start + self.chunk_size, part.offset + size)]
            else:
                async for chunk in self._read_file(part.source, part.offset, size):
                    yield chunk
            yield b"\r\n"
        yield self._tail

    async def _segment(self, segment: Segment) -> AsyncIterator[bytes]:
        if isinstance(segment, tuple):
            async for chunk in self._read_file(*segment):
                yield chunk
            return
        view = memoryview(segment)
        for start in range(0, len(view), self.chunk_size):
            yield bytes(view[start : start + self.chunk_size])

    async def _read_file(self, path: Path, offset: int, size: int) -> AsyncIterator[bytes]:
        try:
            async with await anyio.open_file(path, "rb") as f:
                await f.seek(offset)
                left = size
                while left > 0:
                    chunk = await f.read(min(self.chunk_size, left))
                    if not chunk:
                        raise SourceError(f"{path}: ended {left} bytes early", permanent=True)
                    left -= len(chunk)
                    yield chunk
        except OSError as e:
            raise _os_error(path, e) from e


def group_by_study(
    items: Sequence[T], study_of: Callable[[T], Hashable | None], max_per_request: int
) -> list[list[T]]:
    """``items`` cut into requests: each holds instances of one study (first-seen order
    of studies, items in their order), at most ``max_per_request`` each. An item whose
    study is unknown (None) goes alone."""
    if max_per_request < 1:
        raise ValueError("max_per_request must be at least 1")
    groups: list[list[T]] = []
    open_group: dict[Hashable, list[T]] = {}
    for item in items:
        study = study_of(item)
        if study is None:
            groups.append([item])
            continue
        group = open_group.get(study)
        if group is None or len(group) >= max_per_request:
            group = []
            groups.append(group)
            open_group[study] = group
        group.append(item)
    return groups

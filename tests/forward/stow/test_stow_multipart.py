"""The multipart/related body and the grouping of a batch into requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.forward.stow.multipart import MultipartBody, Part, SourceError, group_by_study
from tests.forward.stow.bodies import split_parts


async def collect(body: MultipartBody) -> list[bytes]:
    return [chunk async for chunk in body]


@pytest.mark.asyncio
async def test_parts_from_bytes_and_files_round_trip(tmp_path: Path) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB, several chunks
    f = tmp_path / "a.dcm"
    f.write_bytes(b"HEAD" + big + b"TAIL")
    parts = [
        Part("1.1", b"\r\n--not-a-boundary\r\n" * 3),
        Part("1.2", f, offset=4, length=len(big)),
        Part("1.3", f),
        Part("1.4", b"0123456789", offset=2, length=5),
    ]
    body = MultipartBody(parts, chunk_size=64 * 1024)
    chunks = await collect(body)
    data = b"".join(chunks)
    assert len(data) == body.content_length
    assert max(len(c) for c in chunks) <= 64 * 1024
    got = split_parts(body.content_type, data)
    assert got == [
        ("application/dicom", b"\r\n--not-a-boundary\r\n" * 3),
        ("application/dicom", big),
        ("application/dicom", b"HEAD" + big + b"TAIL"),
        ("application/dicom", b"23456"),
    ]


def test_content_type_names_the_boundary() -> None:
    body = MultipartBody([Part("1", b"x")], boundary="abc")
    assert body.content_type == 'multipart/related; type="application/dicom"; boundary=abc'
    assert MultipartBody([Part("1", b"x")]).boundary != MultipartBody([Part("1", b"x")]).boundary


def test_missing_or_short_sources_are_refused_before_sending(tmp_path: Path) -> None:
    f = tmp_path / "short.dcm"
    f.write_bytes(b"12345")
    with pytest.raises(SourceError, match="promised") as short:
        MultipartBody([Part("1", f, offset=0, length=6)])
    with pytest.raises(SourceError, match="No such file") as gone:
        MultipartBody([Part("1", tmp_path / "gone.dcm")])
    assert short.value.permanent and gone.value.permanent
    with pytest.raises(SourceError, match="past the end"):
        Part("1", b"abc", offset=4).size()
    with pytest.raises(ValueError, match="at least one"):
        MultipartBody([])


@pytest.mark.asyncio
async def test_file_truncated_while_sending_raises(tmp_path: Path) -> None:
    f = tmp_path / "a.dcm"
    f.write_bytes(b"x" * 300_000)
    body = MultipartBody([Part("1", f)], chunk_size=100_000)
    f.write_bytes(b"x" * 150_000)
    with pytest.raises(SourceError, match="early"):
        await collect(body)


# (case, [(item, study)], max per request, expected groups of items)
GROUPS = [
    ("one study", [(1, "s"), (2, "s"), (3, "s")], 16, [[1, 2, 3]]),
    ("split by max", [(1, "s"), (2, "s"), (3, "s")], 2, [[1, 2], [3]]),
    ("interleaved", [(1, "a"), (2, "b"), (3, "a"), (4, "b")], 16, [[1, 3], [2, 4]]),
    ("unknown alone", [(1, "a"), (2, None), (3, None), (4, "a")], 16, [[1, 4], [2], [3]]),
    ("max 1", [(1, "a"), (2, "a")], 1, [[1], [2]]),
    ("refill after full", [(1, "a"), (2, "a"), (3, "b"), (4, "a")], 2, [[1, 2], [3], [4]]),
    ("empty", [], 4, []),
]


@pytest.mark.parametrize(
    ("items", "limit", "expected"), [g[1:] for g in GROUPS], ids=[g[0] for g in GROUPS]
)
def test_group_by_study(
    items: list[tuple[int, str | None]], limit: int, expected: list[list[int]]
) -> None:
    studies = dict(items)
    groups = group_by_study([i for i, _ in items], studies.__getitem__, limit)
    assert groups == expected


def test_group_by_study_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        group_by_study([1], lambda _: "s", 0)

"""``Association.c_store`` with a list of segments (bytes and file ranges) sends them as
one data set: what the acceptor receives is their concatenation, whatever the PDU size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.dicom import Segment, associate
from tests.forward.peer import CT, EXPLICIT, ScriptedHandler, acceptor

pytestmark = pytest.mark.asyncio


def expected(segments: list[Segment]) -> bytes:
    out = b""
    for s in segments:
        if isinstance(s, tuple):
            path, start, n = s
            out += path.read_bytes()[start : start + n]
        else:
            out += bytes(s)
    return out


@pytest.mark.parametrize("max_pdu", [4096, 1 << 20])
async def test_segments_arrive_as_one_data_set(tmp_path: Path, max_pdu: int) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(300_000))
    cases: list[list[Segment]] = [
        [b"head" * 100, (blob, 1234, 250_000), b"tail"],
        [b"", (blob, 0, 0), memoryview(b"x" * 4090), bytearray(b"y" * 7), (blob, 299_999, 1)],
        [(blob, 0, 300_000)],
        [b"only bytes" * 10_000],
        [],
    ]
    handler = ScriptedHandler()
    async with (
        acceptor(handler, max_pdu_length=max_pdu) as port,
        associate(
            "127.0.0.1", port, calling_ae="ROUTER", called_ae="PACS", contexts=[(CT, [EXPLICIT])]
        ) as assoc,
    ):
        for i, segments in enumerate(cases):
            rsp = await assoc.c_store(CT, f"1.2.3.{i}", EXPLICIT, segments)
            assert rsp.status == 0
            assert assoc.peer_max_pdu == max_pdu
    assert [r.data for r in handler.received] == [expected(c) for c in cases]


async def test_a_range_outside_its_file_is_refused_before_sending(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"z" * 100)
    handler = ScriptedHandler()
    async with (
        acceptor(handler) as port,
        associate(
            "127.0.0.1", port, calling_ae="ROUTER", called_ae="PACS", contexts=[(CT, [EXPLICIT])]
        ) as assoc,
    ):
        with pytest.raises(ValueError, match="outside the file"):
            await assoc.c_store(CT, "1.2.3", EXPLICIT, [(blob, 50, 51)])
        with pytest.raises(ValueError, match="do not apply"):
            await assoc.c_store(CT, "1.2.3", EXPLICIT, [b"x"], offset=1)

"""The write buffer of the requestor (router.dicom.framing) lays out the same bytes as
pdata_pdus, reused from one write to the next, and fills its slots from files and
memory in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.dicom import framing, pdu
from router.dicom.framing import PDataFramer, SlotWriter, copy_into, read_into


def run_of(framer: PDataFramer, head: bytes, ctx: int, data: bytes, last: bool) -> bytes:
    run, slots = framer.layout(head, ctx, len(data), last)
    copy_into(SlotWriter(slots).spans(len(data)), memoryview(data))
    return bytes(run)


@pytest.mark.parametrize("max_pdu", [7, 100, 4096, 16384, 0])
@pytest.mark.parametrize("size", [0, 1, 93, 94, 95, 4090, 10_000, 100_000])
@pytest.mark.parametrize("last", [True, False])
def test_a_run_is_what_pdata_pdus_gives(max_pdu: int, size: int, last: bool) -> None:
    data = os.urandom(size)
    head = bytes(pdu.pdata_pdus(3, b"cmd!", max_pdu, pdu.COMMAND, True))
    framer = PDataFramer(max_pdu)
    expected = head + bytes(pdu.pdata_pdus(3, data, max_pdu, 0, last))
    assert run_of(framer, head, 3, data, last) == expected
    # the buffer is reused: a shorter run after a longer one is still exact
    assert run_of(framer, b"", 3, data[: size // 3], last) == bytes(
        pdu.pdata_pdus(3, data[: size // 3], max_pdu, 0, last)
    )


def test_a_write_holds_whole_fragments_and_few_enough_for_one_preadv() -> None:
    assert PDataFramer(16384).chunk_size == (framing.READ_CHUNK // 16378) * 16378
    assert PDataFramer(100).chunk_size == 94 * framing.MAX_SLOTS
    assert PDataFramer(1 << 20).chunk_size == (1 << 20) - 6  # one PDU bigger than a chunk
    with pytest.raises(ValueError, match="too small"):
        PDataFramer(6)


@pytest.mark.parametrize("preadv", [True, False])
def test_slots_are_filled_in_order_from_files_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preadv: bool
) -> None:
    if not preadv:  # a platform without os.preadv
        monkeypatch.setattr(framing, "_preadv", None)
    blob = tmp_path / "blob"
    content = os.urandom(50_000)
    blob.write_bytes(content)
    framer = PDataFramer(1000)
    run, slots = framer.layout(b"", 1, 30_000, True)
    writer = SlotWriter(slots)
    fd = os.open(blob, os.O_RDONLY)
    try:
        copy_into(writer.spans(5), memoryview(b"head!"))
        assert read_into(fd, writer.spans(29_990), 123) == 29_990
        copy_into(writer.spans(5), memoryview(b"tail!"))
        data = b"head!" + content[123 : 123 + 29_990] + b"tail!"
        assert bytes(run) == bytes(pdu.pdata_pdus(1, data, 1000, 0, True))
        with pytest.raises(IndexError):
            writer.spans(1)  # the run is full
        # past the end of the file: fewer bytes than asked
        _, more = framer.layout(b"", 1, 100, True)
        assert read_into(fd, SlotWriter(more).spans(100), 49_950) == 50
    finally:
        os.close(fd)


@pytest.mark.parametrize("max_pdu", [7, 100, 16384, 0])
def test_command_and_whole_data_set_are_what_pdata_pdus_gives(max_pdu: int) -> None:
    framer = PDataFramer(max_pdu)
    command = os.urandom(180)
    head = framer.command(5, command)
    assert head == bytes(pdu.pdata_pdus(5, command, max_pdu, pdu.COMMAND, True))
    small = os.urandom(min(framer.frag, 8000))
    assert framer.whole(head, 5, memoryview(small)) == head + bytes(
        pdu.pdata_pdus(5, small, max_pdu, 0, True)
    )
    with pytest.raises(ValueError, match="fragment"):
        framer.whole(head, 5, memoryview(b"x" * (framer.frag + 1)))

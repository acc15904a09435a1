"""Against a real DCMTK storescp that accepts only uncompressed syntaxes: propose the
original and the fallbacks, plan from what it accepted, convert, send with our requestor,
and read what storescp wrote."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pynetdicom.dsutils import split_dataset

from router import syntaxes
from router.dicom import associate
from router.transcode import transcode
from tests.async_peers import storescp as dcmtk_storescp
from tests.ports import reserve_port

from .helpers import source_ds, stored
from .test_transcode import DECODABLE_FILES

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.dcmtk,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ENV = {**os.environ, "TCP_NODELAY": "1"}


@asynccontextmanager
async def storescp(port: int, outdir: Path, *extra: str) -> AsyncIterator[None]:
    """storescp writing what it receives unchanged (+B) into ``outdir``; without
    --accept-all it takes Explicit VR LE/BE and Implicit VR LE only (``+xi``: implicit)."""
    async with dcmtk_storescp(port, outdir, "+B", *extra):
        yield


async def send(
    port: int, names: list[str], tmp: Path, check: Callable[[str, str], None]
) -> dict[str, str]:
    """Each file on its own association (as the worker: contexts from propose, then plan),
    then ``check(name, syntax sent)``; returns name -> the syntax it was sent in."""
    sent: dict[str, str] = {}
    for name in names:
        s = stored(name)
        contexts = syntaxes.contexts(s.sop_class, s.transfer_syntax)
        async with associate(
            "127.0.0.1", port, calling_ae="ROUTER", called_ae="STORESCP", contexts=contexts
        ) as assoc:
            accepted = assoc.accepted_transfer_syntaxes(s.sop_class)
            target = syntaxes.plan(s.transfer_syntax, accepted)
            assert target is not None, syntaxes.refusal(s.transfer_syntax, accepted)
            if target == s.transfer_syntax:
                rsp = await assoc.c_store(
                    s.sop_class, s.sop_instance, target, s.data, offset=s.data_offset
                )
            else:
                out = await anyio.to_thread.run_sync(
                    lambda s=s, target=target: transcode(
                        s.data, s.transfer_syntax, target, data_offset=s.data_offset, tmp_dir=tmp
                    ),
                    limiter=anyio.CapacityLimiter(2),
                )
                try:
                    rsp = await assoc.c_store(s.sop_class, s.sop_instance, target, out.path)
                finally:
                    out.discard()
            assert rsp.status == 0, (name, hex(rsp.status))
            sent[name] = target
        check(name, target)
    return sent


def take(outdir: Path, sop_instance: str) -> Path:
    """The one file storescp wrote for ``sop_instance``, moved out of its way (several of
    pydicom's test files share a SOP Instance UID)."""
    (path,) = [p for p in outdir.iterdir() if sop_instance in p.name]
    return path.rename(outdir.parent / f"checked-{path.name}")


@pytest.mark.parametrize(
    ("options", "expected"),
    [((), syntaxes.EXPLICIT_VR_LE), (("+xi",), syntaxes.IMPLICIT_VR_LE)],
    ids=["uncompressed", "implicit-only"],
)
async def test_every_decodable_compressed_file_arrives_uncompressed(
    dcmtk: Path, tmp_path: Path, options: tuple[str, ...], expected: str
) -> None:
    outdir, tmp = tmp_path / "scp", tmp_path / "tmp"
    tmp.mkdir()

    def check(name: str, target: str) -> None:
        s = stored(name)
        got = pydicom.dcmread(take(outdir, s.sop_instance))
        assert target == expected
        assert got.file_meta.TransferSyntaxUID == expected
        assert got.SOPInstanceUID == s.sop_instance
        src = source_ds(s)
        assert np.array_equal(pixel_array(got, as_rgb=False), pixel_array(src, as_rgb=False)), name
        if int(src.SamplesPerPixel) == 3:
            assert np.array_equal(pixel_array(got), pixel_array(src)), name

    port = reserve_port()
    async with storescp(port, outdir, *options):
        sent = await send(port, DECODABLE_FILES, tmp, check)
    assert sorted(sent) == sorted(DECODABLE_FILES)
    assert list(tmp.iterdir()) == []


async def test_original_bytes_when_the_original_is_accepted(dcmtk: Path, tmp_path: Path) -> None:
    outdir = tmp_path / "scp"

    def check(name: str, target: str) -> None:
        s = stored(name)
        assert target == s.transfer_syntax
        path = take(outdir, s.sop_instance)
        _meta, offset = split_dataset(path)
        assert path.read_bytes()[offset:] == s.data[s.data_offset :], name  # as received

    port = reserve_port()
    async with storescp(port, outdir):
        await send(
            port,
            ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"],
            tmp_path,
            check,
        )

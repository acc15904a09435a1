"""A destination with a profile, in process: the copy sent to it is rewritten at send time
(header re-encoded, pixel data streamed from the spool unchanged), every other copy and the
stored instance stay as received."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from router.config import Config
from router.dicom import StoreRequest
from router.forward.profiled import SendProfile, rewrite_source
from router.forward.profiled import send_profile as profile_of
from router.store.queue import Entry, Filter, InstanceRecord, Queue
from tests.async_peers import until, until_awaited
from tests.forward.peer import CT, EXPLICIT, IMPLICIT, ScriptedHandler, acceptor, rig
from tests.integration.peers import dataset_bytes
from tests.profiles.helpers import IDENTIFYING, ct_instance, new_uid, part10


def key(
    tmp_path: Path, name: str = "k.key", text: bytes = b"a key of more than sixteen bytes"
) -> Path:
    path = tmp_path / name
    path.write_bytes(text)
    return path


def config(tmp_path: Path, port: int, profile: dict[str, Any], **dest: Any) -> Config:
    return Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path / "storage"), "inline_max_bytes": 4096},
            "profiles": {"research": profile},
            "destinations": {
                "plain": {"ae_title": "PACS", "host": "127.0.0.1", "port": port},
                "research": {
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": port,
                    "profile": "research",
                    **dest,
                },
            },
        },
        context={"check_files": True},
    )


def deidentify(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"deidentify": {"secret_file": str(key(tmp_path))}, **extra}


def encoded(ds: Dataset, tmp_path: Path) -> bytes:
    """The data set bytes (explicit VR little endian) a sender would send."""
    return dataset_bytes(part10(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))


async def commit(q: Queue, data: bytes, uid: str, dests: list[str]) -> None:
    sink = q.new_sink(StoreRequest(1, CT, uid, EXPLICIT))
    sink.write(data)
    await q.commit_instance(InstanceRecord(CT, uid, EXPLICIT), sink, dests)


async def failed(q: Queue, destination: str) -> list[Entry]:
    """The dead letters of ``destination``, once there is one (10 s at most)."""
    found: list[Entry] = []

    async def there() -> bool:
        found[:] = await q.list_deliveries(Filter(destination=destination, state="failed"))
        return bool(found)

    await until_awaited(there)
    return found


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def pixel_bytes(data: bytes) -> bytes:
    """The pixel data element, header included, as it is in ``data``."""
    start = data.index(b"\xe0\x7f\x10\x00")
    return data[start:]


@pytest.mark.asyncio
@pytest.mark.parametrize("pixels", [256, 64 * 1024], ids=["inline", "spool-file"])
async def test_the_profile_copy_is_rewritten_the_other_is_as_received(
    tmp_path: Path, pixels: int
) -> None:
    handler = ScriptedHandler()
    ds = ct_instance(
        new_uid(), new_uid(), new_uid(), new_uid(), bytes(range(256)) * (pixels // 256)
    )
    data = encoded(ds, tmp_path)
    async with acceptor(handler) as port:
        cfg = config(tmp_path, port, deidentify(tmp_path, set={"ClinicalTrialSiteID": "SITE-A"}))
        async with rig(tmp_path, cfg) as r:
            await commit(r.queue, data, ds.SOPInstanceUID, ["plain", "research"])
            await until(lambda: len(handler.received) == 2)
            spooled = [p for p in (tmp_path / "storage").rglob("*.dcm")]
            if pixels > 4096:
                assert len(spooled) == 1 and dataset_bytes(spooled[0]) == data  # as received
    by_uid = {x.sop_instance_uid: x for x in handler.received}
    assert by_uid[ds.SOPInstanceUID].data == data
    (new,) = set(by_uid) - {ds.SOPInstanceUID}
    got = by_uid[new].data
    assert new.startswith("2.25.")
    for value in IDENTIFYING:
        assert value.encode() not in got, value
    out = read(got)
    assert out.SOPInstanceUID == new and out.ClinicalTrialSiteID == "SITE-A"
    assert out.PatientIdentityRemoved == "YES"
    assert pixel_bytes(got) == pixel_bytes(data)  # the pixel data element, byte for byte


@pytest.mark.asyncio
async def test_burned_in_annotation_is_a_dead_letter_for_the_profile_only(tmp_path: Path) -> None:
    handler = ScriptedHandler()
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x01" * 64)
    ds.BurnedInAnnotation = "YES"
    async with acceptor(handler) as port:
        cfg = config(tmp_path, port, deidentify(tmp_path))
        async with rig(tmp_path, cfg) as r:
            await commit(r.queue, encoded(ds, tmp_path), ds.SOPInstanceUID, ["plain", "research"])
            await until(lambda: len(handler.received) == 1)
            found = await failed(r.queue, "research")
    assert handler.received[0].sop_instance_uid == ds.SOPInstanceUID
    assert "BurnedInAnnotation is YES" in (found[0].last_error or "")
    assert "profile research" in (found[0].last_error or "")


@pytest.mark.asyncio
async def test_a_conversion_comes_first_then_the_profile_rewrites_the_converted_copy(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x02\x01" * 32)
    async with acceptor(handler) as port:
        cfg = config(tmp_path, port, deidentify(tmp_path), transcode_to="ImplicitVRLittleEndian")
        async with rig(tmp_path, cfg) as r:
            await commit(r.queue, encoded(ds, tmp_path), ds.SOPInstanceUID, ["plain", "research"])
            await until(lambda: len(handler.received) == 2)
    (sent,) = [x for x in handler.received if x.sop_instance_uid != ds.SOPInstanceUID]
    assert sent.transfer_syntax == IMPLICIT
    out = read(sent.data)  # no file meta: pydicom tells implicit VR from the bytes
    assert out.SOPInstanceUID == sent.sop_instance_uid
    assert out.PatientID.startswith("ANON")
    assert out.PixelData == b"\x02\x01" * 32
    for value in IDENTIFYING:
        assert value.encode() not in sent.data, value
    tmp = tmp_path / "storage" / "tmp"
    assert not [p for p in tmp.iterdir()] if tmp.exists() else True  # temp copies removed


@pytest.mark.asyncio
async def test_a_reload_with_a_new_key_applies_to_the_sends_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = ScriptedHandler()
    first = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x01" * 64)
    second = ct_instance(first.StudyInstanceUID, new_uid(), new_uid(), new_uid(), b"\x01" * 64)
    caplog.set_level(logging.DEBUG, logger="router.forward")
    async with acceptor(handler) as port:
        profile = {"deidentify": {"secret_file": str(key(tmp_path))}}
        old = config(tmp_path, port, profile)
        async with rig(tmp_path, old) as r:
            await commit(r.queue, encoded(first, tmp_path), first.SOPInstanceUID, ["research"])
            await until(lambda: len(handler.received) == 1)
            key(tmp_path, text=b"another key, rotated, long enough")  # same file, new key
            new = config(tmp_path, port, profile)
            r.forwarder.reconfigure(old, new)
            await commit(r.queue, encoded(second, tmp_path), second.SOPInstanceUID, ["research"])
            await until(lambda: len(handler.received) == 2)
    studies = [read(x.data).StudyInstanceUID for x in handler.received]
    assert studies[0] != studies[1]  # one original study, two keys: two new study UIDs
    events = [r for r in caplog.records if r.getMessage() == "deidentified"]
    assert len(events) == 2 and all(e.levelno == logging.DEBUG for e in events)
    for e in caplog.records:
        for value in IDENTIFYING:
            assert value not in e.getMessage() and value not in str(e.__dict__), value


@pytest.mark.asyncio
async def test_an_instance_the_profile_cannot_rewrite_is_a_dead_letter_with_the_reason(
    tmp_path: Path,
) -> None:
    handler = ScriptedHandler()
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x01" * 64)
    truncated = encoded(ds, tmp_path)[:-10]  # the pixel data ends early
    async with acceptor(handler) as port:
        cfg = config(tmp_path, port, deidentify(tmp_path))
        async with rig(tmp_path, cfg) as r:
            await commit(r.queue, truncated, ds.SOPInstanceUID, ["plain", "research"])
            (dead,) = await failed(r.queue, "research")
            await until(lambda: len(handler.received) == 1)
    assert handler.received[0].data == truncated  # the plain copy: as received
    assert "profile research: cannot rewrite the instance" in (dead.last_error or "")


def test_a_spooled_file_is_sent_as_header_bytes_around_a_range_of_that_file(
    tmp_path: Path,
) -> None:
    pixels = bytes(range(256)) * 64
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), pixels)
    path = part10(ds, tmp_path / "in.dcm")
    cfg = config(tmp_path, 104, deidentify(tmp_path))
    profile = profile_of(cfg, cfg.destinations["research"])
    assert isinstance(profile, SendProfile) and profile.deidentifies
    from_file = rewrite_source(profile, path)
    head, pixel_range = from_file.segments  # no elements after the pixel data
    assert isinstance(head, bytes) and len(head) < 2048
    assert isinstance(pixel_range, tuple) and pixel_range[0] == path
    _, start, n = pixel_range
    assert path.read_bytes()[start : start + n].endswith(pixels)
    assert from_file.length == len(head) + n
    from_bytes = rewrite_source(profile, path.read_bytes())
    assert isinstance(from_bytes.segments[1], memoryview)
    assert bytes(from_bytes.segments[1]) == path.read_bytes()[start : start + n]
    assert from_bytes.sop_instance_uid == from_file.sop_instance_uid != ds.SOPInstanceUID
    assert from_file.part10[0] == from_file.meta and from_file.meta[128:132] == b"DICM"

"""The DICOMweb kind in the Forwarder, in process, against a STOW-RS server on a real
socket (the standard library's HTTP server) that reads every part as DICOM and answers
what each test scripts: requests cut per study and size, each HTTP outcome, a refused
transfer syntax converted and sent again. Orthanc end to end: tests/integration."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

from router.config import Config
from router.dicom import StoreRequest
from router.forward.dicomweb import DicomWebKind, stow_config
from router.forward.kind import TransportError
from router.forward.outcome import TransportFailure
from router.store.queue import InstanceRecord, Queue
from tests.async_peers import until, until_awaited
from tests.forward.peer import CT, EXPLICIT, IMPLICIT, encoded, rig
from tests.forward.stow.bodies import dicom_json, split_parts
from tests.forward.test_forwarder import rows, until_row
from tests.ports import reserve_port


@dataclass(frozen=True)
class Got:
    sop_instance_uid: str
    transfer_syntax: str
    study: str
    part10: bytes


# a request's instances -> (HTTP status, body)
Script = Callable[[list[Got]], tuple[int, bytes]]


def all_stored(got: list[Got]) -> tuple[int, bytes]:
    return 200, dicom_json(referenced=[(g.sop_instance_uid, None) for g in got])


@dataclass
class StowServer:
    url: str
    script: Script = all_stored
    requests: list[list[Got]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)


@pytest.fixture
def stow() -> Iterator[StowServer]:
    state = StowServer("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got = []
            for _, part in split_parts(self.headers["Content-Type"], body):
                ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
                got.append(
                    Got(
                        str(ds.SOPInstanceUID),
                        str(ds.file_meta.TransferSyntaxUID),
                        str(ds.get("StudyInstanceUID", "")),
                        part,
                    )
                )
            state.requests.append(got)
            self._reply(*state.script(got))

        def do_GET(self) -> None:
            state.gets.append(self.path)
            self._reply(200, b"[]")

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


async def until_done(q: Queue, uid: str) -> None:
    """Every delivery of ``uid`` delivered: the instance is done and its rows go."""

    async def done() -> bool:
        return not await rows(q, uid)

    await until_awaited(done)


def forwarded(r: Any, outcome: str) -> float | None:
    value: float | None = r.metrics.registry.get_sample_value(
        "dicom_router_forwarded_instances_total", {"destination": "web", "outcome": outcome}
    )
    return value


def web_config(tmp_path: Path, url: str, **more: Any) -> Config:
    web = {"url": url, **more.pop("dicomweb", {})}
    return Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path / "storage")},
            "destinations": {"web": {"dicomweb": web, **more}},
        }
    )


async def commit(q: Queue, study: str = "1.2.9", ts: str = EXPLICIT) -> tuple[str, bytes]:
    uid, data = encoded(ts, CT)
    sink = q.new_sink(StoreRequest(1, CT, uid, ts))
    sink.write(data)
    await q.commit_instance(InstanceRecord(CT, uid, ts, study, "MOD", "ROUTER"), sink, ["web"])
    return uid, data


@pytest.mark.asyncio
async def test_requests_carry_one_study_each_up_to_the_limit(
    stow: StowServer, tmp_path: Path
) -> None:
    cfg = web_config(tmp_path, stow.url, dicomweb={"max_instances_per_request": 2})
    empty = Config.model_validate(
        {"ae_title": "ROUTER", "storage": {"path": str(tmp_path / "storage")}}
    )
    async with rig(tmp_path, empty) as r:
        studies = ("A", "B", "A", "A", "B")  # as the queue recorded them
        sent = [await commit(r.queue, study) for study in studies]
        study_of = {uid: study for (uid, _), study in zip(sent, studies, strict=True)}
        r.forwarder.reconfigure(empty, cfg)
        await until(lambda: sum(len(req) for req in stow.requests) == 5)
        for uid, _ in sent:
            await until_done(r.queue, uid)
        active = r.metrics.registry.get_sample_value(
            "dicom_router_associations_active", {"direction": "out"}
        )
        assert active == 1  # one session (one connection) carried the three requests
    assert [[study_of[g.sop_instance_uid] for g in req] for req in stow.requests] == [
        ["A", "A"],
        ["B", "B"],
        ["A"],
    ]
    by_uid = {g.sop_instance_uid: g for req in stow.requests for g in req}
    for uid, data in sent:  # each part is the Part-10 file: header + data set as received
        assert by_uid[uid].part10.endswith(data)
        assert by_uid[uid].transfer_syntax == EXPLICIT


def _failed(reason: int) -> Script:
    def script(got: list[Got]) -> tuple[int, bytes]:
        first, *rest = got
        return 200, dicom_json(
            referenced=[(g.sop_instance_uid, None) for g in rest],
            failed=[(first.sop_instance_uid, reason)],
        )

    return script


def _status(status: int, text: bytes) -> Script:
    return lambda got: (status, text)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "state", "status", "error"),
    [
        (_failed(0xA700), "pending", 0xA700, "FailureReason 0xA700"),
        (_failed(0xC000), "failed", 0xC000, "FailureReason 0xC000"),
        (_failed(0xA900), "failed", 0xA900, "FailureReason 0xA900"),
        (_status(400, b"bad multipart"), "failed", 0xC000, "HTTP 400: bad multipart"),
        (_status(404, b"no such root"), "failed", 0xC000, "HTTP 404: no such root"),
        (_status(413, b"too big"), "failed", 0xC000, "HTTP 413: too big"),
        (_status(503, b"busy"), "pending", None, "HTTP 503: busy"),
        (_status(429, b"slow down"), "pending", None, "HTTP 429: slow down"),
        (_status(401, b"who are you"), "pending", None, "HTTP 401: who are you"),
        (_status(403, b"forbidden"), "pending", None, "HTTP 403: forbidden"),
    ],
    ids=[
        "A700",
        "C000",
        "A900",
        "400",
        "404",
        "413",
        "503",
        "429",
        "401",
        "403",
    ],
)
async def test_each_outcome(
    stow: StowServer,
    tmp_path: Path,
    script: Script,
    state: str,
    status: int | None,
    error: str | None,
) -> None:
    stow.script = script
    cfg = web_config(tmp_path, stow.url)
    async with rig(tmp_path, cfg) as r:
        uid, _ = await commit(r.queue)
        row = await until_row(r.queue, uid, state)
        breaker = r.forwarder.breaker("web")
    assert row.attempts == 1
    assert row.last_status == status
    if error is not None:
        assert row.last_error is not None and error in row.last_error, row.last_error
    # a whole request refused counts against the destination; an instance's answer not
    assert breaker is not None
    assert breaker.consecutive_failures == (1 if status is None else 0)


@pytest.mark.asyncio
async def test_a_warning_reason_is_delivered_with_warning(stow: StowServer, tmp_path: Path) -> None:
    stow.script = lambda got: (
        200,
        dicom_json(referenced=[(g.sop_instance_uid, 0xB000) for g in got]),
    )
    async with rig(tmp_path, web_config(tmp_path, stow.url)) as r:
        uid, _ = await commit(r.queue)
        await until_done(r.queue, uid)
        assert forwarded(r, "warning") == 1


@pytest.mark.asyncio
async def test_a_failed_request_retries_every_instance_of_the_batch(
    stow: StowServer, tmp_path: Path
) -> None:
    stow.script = _status(503, b"maintenance")
    empty = Config.model_validate(
        {"ae_title": "ROUTER", "storage": {"path": str(tmp_path / "storage")}}
    )
    cfg = web_config(tmp_path, stow.url)
    async with rig(tmp_path, empty) as r:
        sent = [await commit(r.queue, study) for study in ("A", "B", "A")]
        r.forwarder.reconfigure(empty, cfg)
        rows = [await until_row(r.queue, uid, "pending", attempts=1) for uid, _ in sent]
    assert len(stow.requests) == 1  # the first request failed: the batch waits
    assert all(row.due_at is not None and row.due_at > r.clock.t for row in rows)


@pytest.mark.asyncio
async def test_a_refused_syntax_is_converted_and_sent_again(
    stow: StowServer, tmp_path: Path
) -> None:
    def explicit_only(got: list[Got]) -> tuple[int, bytes]:
        return 200, dicom_json(
            referenced=[(g.sop_instance_uid, None) for g in got if g.transfer_syntax == EXPLICIT],
            failed=[(g.sop_instance_uid, 0xC122) for g in got if g.transfer_syntax != EXPLICIT],
        )

    stow.script = explicit_only
    async with rig(tmp_path, web_config(tmp_path, stow.url)) as r:
        uid, _ = await commit(r.queue, ts=IMPLICIT)
        await until_done(r.queue, uid)
        assert forwarded(r, "delivered") == 1
        transcoded = r.metrics.registry.get_sample_value(
            "dicom_router_transcoded_instances_total", {"destination": "web", "result": "ok"}
        )
    first, second = stow.requests
    assert [(g.sop_instance_uid, g.transfer_syntax) for g in first] == [(uid, IMPLICIT)]
    assert [(g.sop_instance_uid, g.transfer_syntax) for g in second] == [(uid, EXPLICIT)]
    original = pydicom.dcmread(io.BytesIO(first[0].part10))
    converted = pydicom.dcmread(io.BytesIO(second[0].part10))
    assert converted.PixelData == original.PixelData
    assert converted.SOPInstanceUID == uid and converted.file_meta.TransferSyntaxUID == EXPLICIT
    assert transcoded == 1


@pytest.mark.asyncio
async def test_transcode_to_converts_before_sending(stow: StowServer, tmp_path: Path) -> None:
    cfg = web_config(tmp_path, stow.url, transcode_to="ImplicitVRLittleEndian")
    async with rig(tmp_path, cfg) as r:
        uid, _ = await commit(r.queue, ts=EXPLICIT)
        await until_done(r.queue, uid)
    ((got,),) = stow.requests
    assert (got.sop_instance_uid, got.transfer_syntax) == (uid, IMPLICIT)


@pytest.mark.asyncio
async def test_echo_and_unreachable(stow: StowServer, tmp_path: Path) -> None:
    web = web_config(tmp_path, stow.url).destinations["web"].dicomweb
    assert web is not None
    echo = await DicomWebKind(stow_config(web)).echo()
    assert (echo.ok, echo.detail) == (True, "HTTP 200")
    assert stow.gets == ["/dicom-web/studies?limit=1"]
    gone = web.model_copy(update={"url": f"http://127.0.0.1:{reserve_port()}/dicom-web"})
    with pytest.raises(TransportError) as e:
        await DicomWebKind(stow_config(gone)).echo()
    assert e.value.failure is TransportFailure.CONNECT_REFUSED


def profiled_config(tmp_path: Path, url: str, **dest: Any) -> Config:
    secret = tmp_path / "k.key"
    secret.write_bytes(b"a key of more than sixteen bytes")
    return Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path / "storage"), "inline_max_bytes": 4096},
            "profiles": {
                "research": {
                    "deidentify": {"secret_file": str(secret)},
                    "set": {"ClinicalTrialSiteID": "SITE-A"},
                }
            },
            "destinations": {"web": {"dicomweb": {"url": url}, "profile": "research", **dest}},
        },
        context={"check_files": True},
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT], ids=["as-received", "converted"])
async def test_a_profile_rewrites_the_copy_sent(stow: StowServer, tmp_path: Path, ts: str) -> None:
    """The profile's copy goes (de-identified, under its new UID, pixel data unchanged);
    with ``transcode_to`` the converted copy is rewritten. The response names the new
    UID, and that answers for the instance."""
    more = {"transcode_to": "ExplicitVRLittleEndian"} if ts == IMPLICIT else {}
    async with rig(tmp_path, profiled_config(tmp_path, stow.url, **more)) as r:
        uid, data = await commit(r.queue, ts=ts)
        await until_done(r.queue, uid)
        assert forwarded(r, "delivered") == 1
    ((got,),) = stow.requests
    assert got.sop_instance_uid != uid and got.sop_instance_uid.startswith("2.25.")
    assert got.transfer_syntax == EXPLICIT
    sent = pydicom.dcmread(io.BytesIO(got.part10))
    original = pydicom.dcmread(io.BytesIO(data), force=True)
    assert sent.ClinicalTrialSiteID == "SITE-A"
    assert sent.PatientIdentityRemoved == "YES"
    assert sent.PatientID != original.PatientID
    assert sent.PixelData == original.PixelData

"""Each A-ASSOCIATE-RJ the acceptor sends carries the cause it was made for, and that
cause (not the wire code, which several causes share) is what handlers count and log."""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest
from dicom_helpers import RecordingHandler, config, echo, raw_connect, running, wait_for

from router.dicom import Acceptor, AssociationInfo, AssociationRejected, Rejection, pdu
from router.dicom.association import requestor_contexts
from router.dicom.uids import IMPLICIT_VR_LE, VERIFICATION
from router.metrics import REJECT_REASONS


class FailingCheck(RecordingHandler):
    def check_association(self, info: AssociationInfo) -> Rejection | None:
        raise RuntimeError("a bug in the handler")


async def _read_pdu(s: anyio.abc.SocketStream) -> tuple[int, bytes]:
    head = b""
    with anyio.fail_after(10):
        while len(head) < 6:
            head += await s.receive(6 - len(head))
        pdu_type, length = struct.unpack(">BxL", head)
        body = b""
        while len(body) < length:
            body += await s.receive(length - len(body))
    return pdu_type, head + body


@pytest.mark.asyncio
async def test_a_failing_handler_is_an_internal_error_not_a_shutdown(tmp_path: Path) -> None:
    handler = FailingCheck(tmp_path)
    async with running(Acceptor(config(), handler)) as port:
        with pytest.raises(AssociationRejected) as info:
            await echo(port)
    assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 1)
    assert [r.cause for r in handler.rejected] == ["internal_error"]


@pytest.mark.asyncio
async def test_a_stopping_acceptor_rejects_as_shutting_down(tmp_path: Path) -> None:
    """A connection accepted before stop_accepting() that associates after it."""
    handler = RecordingHandler(tmp_path)
    acceptor = Acceptor(config(), handler)
    async with running(acceptor) as port:
        s = await raw_connect(port)
        try:
            await wait_for(lambda: acceptor.negotiating == 1)
            acceptor.stop_accepting()
            contexts = requestor_contexts([(VERIFICATION, [IMPLICIT_VR_LE])])
            await s.send(pdu.encode_associate_rq("SENDER", "ROUTER", contexts, 16384))
            pdu_type, rj = await _read_pdu(s)
        finally:
            await s.aclose()
    assert pdu_type == pdu.A_ASSOCIATE_RJ_TYPE
    assert pdu.decode_associate_rj(rj) == (2, 3, 1)
    assert [r.cause for r in handler.rejected] == ["shutting_down"]


@pytest.mark.asyncio
async def test_the_limit_is_too_many_associations(tmp_path: Path) -> None:
    handler = RecordingHandler(tmp_path)
    async with running(Acceptor(config(max_associations=0), handler)) as port:
        with pytest.raises(AssociationRejected) as info:
            await echo(port)
    assert (info.value.result, info.value.source, info.value.reason) == (2, 3, 2)
    assert [r.cause for r in handler.rejected] == ["too_many_associations"]


CONSTRUCTORS = [
    Rejection.no_reason,
    Rejection.application_context_not_supported,
    Rejection.calling_ae_not_recognized,
    Rejection.host_not_allowed,
    Rejection.called_ae_not_recognized,
    Rejection.protocol_version_not_supported,
    Rejection.temporary_congestion,
    Rejection.shutting_down,
    Rejection.internal_error,
    Rejection.too_many_associations,
]


@pytest.mark.parametrize("make", CONSTRUCTORS, ids=lambda f: f.__name__)
def test_every_cause_is_a_label_of_the_metric(make: object) -> None:
    assert callable(make)
    assert make().cause in REJECT_REASONS


def test_causes_tell_apart_what_the_wire_code_does_not() -> None:
    causes = {make().cause for make in CONSTRUCTORS}
    assert len(causes) == len(CONSTRUCTORS)
    # equal on the wire, different causes: equality is what the peer sees
    assert Rejection.shutting_down() == Rejection.internal_error() == Rejection(2, 3, 1)
    assert Rejection.host_not_allowed() == Rejection.calling_ae_not_recognized()

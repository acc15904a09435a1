"""The sans-I/O core: framing, P-DATA, command sets, negotiation, the state table."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import PresentationContext

from router.dicom import FileSink, PduTooLarge, ProtocolError, Rejection, Status, dimse, pdu
from router.dicom.association import Action, Machine, State, negotiate
from router.dicom.dimse import PDataReader
from router.dicom.uids import STORAGE_SOP_CLASSES

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.50"


# -- framing ---------------------------------------------------------------------------


def test_header_limits_are_checked_before_buffering() -> None:
    assert pdu.parse_header(b"\x04\x00\x00\x00\x10\x00", 4096) == (4, 4096)
    with pytest.raises(PduTooLarge) as info:
        pdu.parse_header(b"\x04\x00\xff\xff\xff\xff", 1 << 20)
    assert info.value.length == 0xFFFFFFFF
    assert info.value.kind == "pdu_too_large"
    with pytest.raises(ProtocolError) as unknown:
        pdu.parse_header(b"GET / ", 1 << 20)
    assert unknown.value.kind == "unknown_pdu_type"


def test_association_pdus_round_trip_through_pynetdicom_codecs() -> None:
    cx = PresentationContext()
    cx.context_id = 1
    cx.abstract_syntax = CT
    cx.transfer_syntax = [JPEG, EXPLICIT]
    raw = pdu.encode_associate_rq("CALLING", "CALLED", [cx], 32768)
    rq = pdu.decode_associate_rq(raw)
    assert (rq.calling_ae, rq.called_ae, rq.max_pdu_length) == ("CALLING", "CALLED", 32768)
    assert [str(t) for t in rq.contexts[0].transfer_syntax] == [JPEG, EXPLICIT]
    results = negotiate(rq.contexts, True)
    ac = pdu.decode_associate_ac(pdu.encode_associate_ac(rq, results, 65536))
    assert ac.max_pdu_length == 65536
    assert [(c.context_id, c.result, str(c.transfer_syntax[0])) for c in ac.contexts] == [
        (1, 0, JPEG)
    ]
    assert pdu.decode_associate_rj(pdu.encode_associate_rj(2, 3, 2)) == (2, 3, 2)
    assert pdu.decode_abort(pdu.encode_abort(2, 6)) == (2, 6)
    assert pdu.RELEASE_RQ[:1] == b"\x05" and pdu.RELEASE_RP[:1] == b"\x06"
    with pytest.raises(ProtocolError):
        pdu.decode_associate_rq(b"\x01\x00\x00\x00\x00\x04abcd")


# -- P-DATA ------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        assert isinstance(data, memoryview)  # slices of the PDU, no copies
        self.chunks.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


def split_pdus(stream: bytes) -> list[memoryview]:
    out, pos = [], 0
    while pos < len(stream):
        _t, n = pdu.parse_header(stream[pos : pos + 6], 1 << 30)
        out.append(memoryview(stream)[pos + 6 : pos + 6 + n])
        pos += 6 + n
    return out


@pytest.mark.parametrize("max_pdu", [20, 100, 16384, 0])
@pytest.mark.parametrize("size", [0, 1, 13, 16378, 100_001])
def test_pdata_fragmenting_and_reassembly(max_pdu: int, size: int) -> None:
    command = dimse.store_rq(7, CT, "1.2.3")
    data = bytes(i % 251 for i in range(size))
    stream = bytes(pdu.pdata_pdus(1, command, max_pdu, pdu.COMMAND, True)) + bytes(
        pdu.pdata_pdus(1, data, max_pdu, 0, True)
    )
    bodies = split_pdus(stream)
    if max_pdu:
        assert all(len(b) <= max_pdu for b in bodies)
    reader = PDataReader(frozenset({1}))
    sink = ListSink()
    events = []
    for body in bodies:
        reader.feed(body)
        while (event := reader.next_event()) != PDataReader.NEED_DATA:
            events.append(event)
            if event == PDataReader.COMMAND_DONE:
                ctx, raw = reader.take_command()
                assert ctx == 1 and raw == command
                reader.start_data(ctx, sink)
    assert events == [PDataReader.COMMAND_DONE, PDataReader.DATA_DONE]
    assert b"".join(sink.chunks) == data
    assert not reader.in_message


def test_command_and_data_in_one_pdu() -> None:
    command = dimse.store_rq(1, CT, "1.2.3")
    pdvs = (
        bytes(pdu.pdata_pdus(5, command, 0, pdu.COMMAND, True))[6:]
        + bytes(pdu.pdata_pdus(5, b"abcd", 0, 0, True))[6:]
    )
    reader = PDataReader(frozenset({5}))
    reader.feed(memoryview(pdvs))
    assert reader.next_event() == PDataReader.COMMAND_DONE
    reader.start_data(*reader.take_command()[:1], None)  # discard the data set
    assert reader.next_event() == PDataReader.DATA_DONE
    assert reader.data_bytes == 4


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x00\x00\x00\x01\x01", "malformed_pdv"),  # shorter than a PDV header
        (b"\x00\x00\x00\x01\x01\x03", "malformed_pdv"),  # item length < 2
        (b"\x00\x00\x10\x00\x01\x03abc", "malformed_pdv"),  # longer than the PDU
        (b"\x00\x00\x00\x03\x09\x03x", "bad_context"),
        (b"\x00\x00\x00\x03\x01\x02x", "unexpected_pdv"),  # data before any command
    ],
)
def test_malformed_pdvs(body: bytes, kind: str) -> None:
    reader = PDataReader(frozenset({1}))
    reader.feed(memoryview(body))
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.kind == kind


# -- command sets: ours against pynetdicom's (pydicom) codecs -----------------------------


def test_command_sets_match_pynetdicom() -> None:
    # pynetdicom's own C-STORE-RQ message, encoded by pynetdicom, parsed by us
    prim = C_STORE()
    prim.MessageID = 12
    prim.AffectedSOPClassUID = CT
    prim.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.234"
    prim.Priority = 1
    prim.MoveOriginatorApplicationEntityTitle = "MOVER"
    prim.MoveOriginatorMessageID = 3
    prim.DataSet = None
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    raw = b"".join(  # each PDV value: message control header, then the fragment
        bytes(value[1:])
        for p_data in msg.encode_msg(1, 16384)
        for _ctx, value in p_data.presentation_data_value_list
        if value[0] & 0x01
    )
    cmd = dimse.decode_command(raw)
    req = dimse.store_request(cmd, EXPLICIT)
    assert req == dimse.StoreRequest(
        12, CT, "1.2.826.0.1.3680043.2.1125.1.234", EXPLICIT, 1, "MOVER", 3
    )
    # ours, decoded by pydicom (dsutils), equal to pydicom's own encoding
    for ours in (
        dimse.store_rq(9, CT, "1.2.3.4.5", 2, "AE1", 7),
        dimse.store_rsp(9, CT, "1.2.3.4", Status.OUT_OF_RESOURCES, "disk full"),
        dimse.echo_rq(65535),
        dimse.echo_rsp(1),
    ):
        ds = dimse.decode_command_pydicom(ours)
        again = Dataset()
        for elem in ds:
            if elem.keyword != "CommandGroupLength":
                again[elem.tag] = elem
        assert dimse.encode_command_pydicom(again) == ours
    rsp = dimse.decode_command(dimse.store_rsp(9, CT, "1.2.3.4", 0xA700, "disk full"))
    assert rsp.get("Status") == 0xA700
    assert rsp.get("ErrorComment") == "disk full"
    assert rsp.get("MessageIDBeingRespondedTo") == 9
    assert C_ECHO_RQ and C_STORE_RSP and P_DATA_TF  # the classes we interoperate with


@pytest.mark.parametrize(
    ("message_id", "sop_class", "instance", "number"),
    [
        (1, CT, "1.2.3", 2),
        (65535, CT, "1.2.3.4", 0),
        (7, "1.2.840.10008.5.1.4.1.1.4", "", 0xA700),
        (9, CT, "1.2.3\u00e9.9", 0xC000),  # a hostile UID echoed back: replaced, padded
    ],
)
def test_store_commands_laid_out_as_encode_command(
    message_id: int, sop_class: str, instance: str, number: int
) -> None:
    """The direct C-STORE-RQ/-RSP layout is the generic encoder's bytes."""
    priority = number & 3
    assert dimse.store_rq(message_id, sop_class, instance, priority) == dimse.encode_command(
        AffectedSOPClassUID=sop_class,
        CommandField=0x0001,
        MessageID=message_id,
        Priority=priority,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=instance,
    )
    assert dimse.store_rsp(message_id, sop_class, instance, number) == dimse.encode_command(
        AffectedSOPClassUID=sop_class,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=message_id,
        CommandDataSetType=0x0101,
        Status=number,
        AffectedSOPInstanceUID=instance,
    )


@pytest.mark.parametrize(
    "raw",
    [b"\x00\x00\x00\x01\x04\x00\x00\x00", b"\x00\x00\x00\x01\xff\x00\x00\x00ab", b"\x00\x00"],
)
def test_bad_command_sets(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        dimse.decode_command(raw)


def test_status_values() -> None:
    assert Status.SUCCESS == 0 and Status.OUT_OF_RESOURCES == 0xA700
    assert Status.CANNOT_UNDERSTAND == 0xC000 and Status.DATASET_MISMATCH == 0xA900
    assert Status.SOP_CLASS_NOT_SUPPORTED == 0x0122 and Status.NOT_AUTHORIZED == 0x0124
    assert Status.PROCESSING_FAILURE == 0x0110 and Status.DUPLICATE_INVOCATION == 0x0210
    assert Status.RESOURCE_LIMITATION == 0x0213 and Status.COERCION == 0xB000
    assert Status.ELEMENTS_DISCARDED == 0xB006
    assert Status.DATASET_SOP_CLASS_MISMATCH == 0xB007


# -- association --------------------------------------------------------------------------


def context(cid: int, abstract: str, *syntaxes: str) -> PresentationContext:
    cx = PresentationContext()
    cx.context_id = cid
    cx.abstract_syntax = abstract
    cx.transfer_syntax = list(syntaxes)
    return cx


def test_negotiation() -> None:
    private = "1.2.3.4.5.6.7.8"  # unknown to pydicom and pynetdicom
    worklist = "1.2.840.10008.5.1.4.31"  # known, but not a storage SOP class
    proposed = [
        context(1, CT, "1.2.999.1", JPEG, EXPLICIT),  # first *supported* proposed wins
        context(3, CT, IMPLICIT, EXPLICIT),  # same SOP class, its own order
        context(5, "1.2.840.10008.1.1", IMPLICIT),
        context(7, private, EXPLICIT),
        context(9, worklist, EXPLICIT),
        context(11, CT, "1.2.999.2"),  # no transfer syntax we know
    ]
    got = {c.context_id: (c.result, str(c.transfer_syntax[0])) for c in negotiate(proposed, True)}
    assert got[1] == (0, JPEG)
    assert got[3] == (0, IMPLICIT)
    assert got[5] == (0, IMPLICIT)
    assert got[7] == (0, EXPLICIT)
    assert got[9][0] == 3  # abstract syntax not supported
    assert got[11][0] == 4  # transfer syntaxes not supported
    strict = {c.context_id: c.result for c in negotiate(proposed, False)}
    assert strict[7] == 3
    assert len(STORAGE_SOP_CLASSES) > 150


def test_rejections() -> None:
    assert Rejection.calling_ae_not_recognized() == Rejection(1, 1, 3)
    assert Rejection.called_ae_not_recognized() == Rejection(1, 1, 7)
    assert Rejection.too_many_associations() == Rejection(2, 3, 2)
    assert Rejection.too_many_associations().transient
    assert not Rejection.no_reason().transient


@pytest.mark.parametrize(
    ("state", "pdu_type", "next_state", "action"),
    [
        (State.AWAIT_RQ, 1, State.ESTABLISHED, Action.ASSOCIATE_RQ),
        (State.AWAIT_RQ, 4, State.CLOSED, Action.PROTOCOL_ERROR),
        (State.AWAIT_RQ, 7, State.CLOSED, Action.ABORTED),
        (State.AWAIT_AC, 2, State.ESTABLISHED, Action.ASSOCIATE_AC),
        (State.AWAIT_AC, 3, State.CLOSED, Action.ASSOCIATE_RJ),
        (State.AWAIT_AC, 4, State.CLOSED, Action.PROTOCOL_ERROR),
        (State.ESTABLISHED, 4, State.ESTABLISHED, Action.P_DATA),
        (State.ESTABLISHED, 5, State.CLOSED, Action.RELEASE_RQ),
        (State.ESTABLISHED, 7, State.CLOSED, Action.ABORTED),
        (State.ESTABLISHED, 1, State.CLOSED, Action.PROTOCOL_ERROR),
        (State.ESTABLISHED, 6, State.CLOSED, Action.PROTOCOL_ERROR),
        (State.AWAIT_RELEASE_RP, 6, State.CLOSED, Action.RELEASE_RP),
        (State.AWAIT_RELEASE_RP, 4, State.AWAIT_RELEASE_RP, Action.P_DATA),
        (State.AWAIT_RELEASE_RP, 5, State.CLOSED, Action.RELEASE_RQ),
        (State.CLOSED, 4, State.CLOSED, Action.PROTOCOL_ERROR),
    ],
)
def test_state_table(state: State, pdu_type: int, next_state: State, action: Action) -> None:
    m = Machine(state)
    assert m.receive(pdu_type) is action
    assert m.state is next_state


def test_file_sink(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    sink.write(b"abc")
    sink.write(memoryview(b"defg")[1:])
    sink.close()
    assert sink.path.read_bytes() == b"abcefg" and sink.size == 6
    assert sink.path.parent == tmp_path and ".." not in sink.path.name
    sink.abort()
    sink.abort()  # idempotent
    assert not sink.path.exists()

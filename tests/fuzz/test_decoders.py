"""Fuzz the sans-I/O decoders of router.dicom: whatever the bytes, they return a value
or raise the documented error (a DicomError: ProtocolError and its subclasses), never
anything else; and what the acceptor and requestor do next with a decoded value
(negotiation, answering, reading the command) raises nothing else either.

Every crash found becomes an @example here (or a plain test), next to its fix."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from router.dicom import DicomError, ProtocolError, dimse, pdu
from router.dicom.association import (
    Machine,
    State,
    check_ae_titles,
    negotiate,
    requestor_contexts,
    requestor_results,
)
from router.dicom.dimse import PDataReader
from tests.fuzz import strategies as S
from tests.fuzz.profiles import DECODERS

# pydicom warns about invalid values (UIDs, AE titles) a peer sends; outside the test
# suite that is a warning, not an error: the fuzzers take the production path.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class ListSink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        self.chunks.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True


# -- framing ----------------------------------------------------------------------------


@DECODERS
@given(st.binary(min_size=6, max_size=6), st.integers(0, 2**32))
def test_parse_header(header: bytes, limit: int) -> None:
    try:
        pdu_type, length = pdu.parse_header(header, limit)
    except ProtocolError:
        return
    assert pdu_type in pdu.KNOWN_TYPES
    assert 0 <= length <= limit


# -- association control ----------------------------------------------------------------


def _accept_path(raw: bytes) -> None:
    """What the acceptor does with an A-ASSOCIATE-RQ: decode (may raise ProtocolError),
    then check, negotiate and answer (may raise nothing)."""
    try:
        rq = pdu.decode_associate_rq(raw)
    except ProtocolError:
        return
    check_ae_titles(rq, "ROUTER", True, frozenset({"CT_1"}))
    check_ae_titles(rq, "ROUTER", False, None)
    for unknown in (True, False):
        results = negotiate(rq.contexts, unknown)
        answer = pdu.encode_associate_ac(rq, results, 16384)
        assert answer[0] == pdu.A_ASSOCIATE_AC_TYPE
        accepted = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results
            if cx.result == 0 and cx.context_id is not None
        }
        PDataReader(frozenset(accepted))
    pdu.encode_associate_rj(1, 1, 1)


@DECODERS
@given(st.binary(max_size=600))
def test_associate_rq_arbitrary_bytes(raw: bytes) -> None:
    _accept_path(pdu.frame(pdu.A_ASSOCIATE_RQ_TYPE, raw))


@DECODERS
@given(S.associate_pdu().flatmap(S.mutated))
# found by the fuzzer: a presentation context without transfer syntax sub-items made
# pynetdicom's negotiation raise IndexError (now: the context is rejected, result 4)
@example(
    b"\x01\x00\x00\x00\x00z\x00\x01\x00\x00ROUTER          ROUTER          "
    + b"\x00" * 32
    + b"\x10\x00\x00\x151.2.840.10008.3.1.1.1 \x00\x00\x19\x01\x00\x00\x000\x00\x00\x11"
    + b"1.2.840.10008.1.1"
)
def test_associate_rq_structured_and_mutated(raw: bytes) -> None:
    _accept_path(raw)


def _request_path(raw: bytes) -> None:
    """What the requestor does with the answer to its A-ASSOCIATE-RQ."""
    proposed = requestor_contexts([(S.VERIFICATION, [S.IMPLICIT]), (S.CT, [S.EXPLICIT, S.JPEG])])
    try:
        ac = pdu.decode_associate_ac(raw)
        results = requestor_results(proposed, ac.contexts)
    except DicomError:
        return
    for cx in results:
        if cx.result == 0 and cx.context_id is not None and cx.transfer_syntax:
            int(cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0])


@DECODERS
@given(S.associate_pdu(ac=True).flatmap(S.mutated))
def test_associate_ac_structured_and_mutated(raw: bytes) -> None:
    _request_path(raw)


@DECODERS
@given(st.binary(max_size=64))
def test_short_pdus(raw: bytes) -> None:
    for pdu_type in (pdu.A_ASSOCIATE_RJ_TYPE, pdu.A_ABORT_TYPE):
        framed = pdu.frame(pdu_type, raw)
        try:
            result, source, reason = pdu.decode_associate_rj(framed)
            assert all(0 <= v <= 255 for v in (result, source, reason))
        except ProtocolError:
            pass
        source, reason = pdu.decode_abort(framed)
        assert 0 <= source <= 255 and 0 <= reason <= 255


@DECODERS
@given(st.lists(st.integers(0, 255), max_size=12))
def test_state_machine_never_raises(pdu_types: list[int]) -> None:
    for start in State:
        machine = Machine(start)
        for t in pdu_types:
            machine.receive(t)
        assert machine.state in State


# -- DIMSE ------------------------------------------------------------------------------


def _command_path(raw: bytes, transfer_syntax: str = S.EXPLICIT) -> None:
    """What the acceptor does with a reassembled command set."""
    try:
        command = dimse.decode_command(raw)
        field = int(command.get("CommandField", 0) or 0)
        int(command.get("MessageID", 0) or 0)
        if field == dimse.C_STORE_RQ and dimse.has_data_set(command):
            req = dimse.store_request(command, transfer_syntax)
            assert isinstance(req.sop_instance_uid, str)
        for keyword in dimse.COMMAND_ELEMENTS:
            command.get(keyword)
            assert isinstance(keyword in command, bool)
    except ProtocolError:
        return


@DECODERS
@given(st.binary(max_size=400))
def test_command_arbitrary_bytes(raw: bytes) -> None:
    _command_path(raw)


@DECODERS
@given(S.command_set().flatmap(lambda c: S.mutated(c, 3)))
def test_command_structured_and_mutated(raw: bytes) -> None:
    _command_path(raw)


@DECODERS
@given(st.integers(0, 0xFFFF), S.uid_text, S.uid_text, st.integers(0, 0xFFFF))
def test_command_round_trip(message_id: int, sop_class: str, instance: str, status: int) -> None:
    """Our encoder and decoder agree on anything ASCII the peer could send back."""
    sop_class = sop_class.encode("ascii", "replace").decode()
    instance = instance.encode("ascii", "replace").decode()
    raw = dimse.store_rsp(message_id, sop_class, instance, status)
    command = dimse.decode_command(raw)
    assert command.get("MessageIDBeingRespondedTo") == message_id
    assert command.get("Status") == status
    assert command.get("AffectedSOPInstanceUID") == instance.rstrip("\0 ")


# -- P-DATA reassembly ------------------------------------------------------------------

CONTEXTS = [1, 3, 5]

#: one reassembled DIMSE message: context, command set, data set (None: the command
#: announced none)
Message = tuple[int, bytes, bytes | None]


def _wants_data(command: bytes) -> bool:
    """What the acceptor decides after a command: a data set follows (or the command is
    undecodable: ProtocolError)."""
    return dimse.has_data_set(dimse.decode_command(command))


def _reassemble(bodies: list[bytes]) -> tuple[list[Message], str | None]:
    """The acceptor's P-DATA loop without the sockets: the messages PDataReader completes,
    and the kind of the ProtocolError that stopped it (None: it read every body). Only
    ProtocolError may come out of the reader."""
    reader = PDataReader(frozenset(CONTEXTS))
    messages: list[Message] = []
    command: tuple[int, bytes] | None = None
    sink = ListSink()
    try:
        for body in bodies:
            reader.feed(memoryview(body))
            while (event := reader.next_event()) != PDataReader.NEED_DATA:
                if event == PDataReader.COMMAND_DONE:
                    ctx, raw = reader.take_command()
                    assert ctx in CONTEXTS
                    _command_path(raw)
                    if _wants_data(raw):
                        command, sink = (ctx, raw), ListSink()
                        reader.start_data(ctx, sink)
                    else:
                        messages.append((ctx, raw, None))
                else:
                    assert event == PDataReader.DATA_DONE
                    assert command is not None and not reader.expect_data
                    data = b"".join(sink.chunks)
                    assert reader.data_bytes == len(data)
                    messages.append((*command, data))
                    command = None
    except ProtocolError as e:
        return messages, e.kind
    return messages, None


def _model(bodies: list[bytes]) -> tuple[list[Message], str | None]:
    """An independent reading of P-DATA-TF (PS3.8 9.3.5, E.2): each body a sequence of
    PDVs (4-byte length, context id, control header, fragment); the fragments of a
    command on one context until the last one, then, if the command announces one, the
    fragments of its data set on the same context. Returns what `_reassemble` must."""
    messages: list[Message] = []
    command = b""  # fragments so far
    command_ctx = 0
    data: bytearray | None = None  # None: no data set expected
    done: tuple[int, bytes] | None = None  # the command whose data set is being read
    try:
        for body in bodies:
            pos = 0
            while pos < len(body):
                if len(body) - pos < 6:
                    raise ProtocolError("truncated PDV header", "malformed_pdv")
                (length,) = struct.unpack_from(">L", body, pos)
                ctx, control = body[pos + 4], body[pos + 5]
                if length < 2 or pos + 4 + length > len(body):
                    raise ProtocolError("PDV overruns its PDU", "malformed_pdv")
                if ctx not in CONTEXTS:
                    raise ProtocolError("unknown context", "bad_context")
                fragment = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 1:  # a command fragment
                    if data is not None:
                        raise ProtocolError("command in a data set", "unexpected_pdv")
                    if command and ctx != command_ctx:
                        raise ProtocolError("command on two contexts", "bad_context")
                    command, command_ctx = command + fragment, ctx
                    if len(command) > dimse.MAX_COMMAND_SET:
                        raise ProtocolError("command too large", "command_too_large")
                    if control & 2:
                        raw, command = command, b""
                        if _wants_data(raw):
                            done, data = (ctx, raw), bytearray()
                        else:
                            messages.append((ctx, raw, None))
                else:
                    if data is None or done is None or ctx != done[0]:
                        raise ProtocolError("data outside a data set", "unexpected_pdv")
                    data += fragment
                    if control & 2:
                        messages.append((*done, bytes(data)))
                        done, data = None, None
    except ProtocolError as e:
        return messages, e.kind
    return messages, None


def _check_against_model(bodies: list[bytes]) -> None:
    assert _reassemble(bodies) == _model(bodies)


@DECODERS
@given(st.lists(S.pdata_body(CONTEXTS), max_size=6))
def test_pdata_structured(bodies: list[bytes]) -> None:
    _check_against_model(bodies)


@DECODERS
@given(st.lists(S.pdata_body(CONTEXTS).flatmap(S.mutated), max_size=6))
def test_pdata_mutated(bodies: list[bytes]) -> None:
    _check_against_model(bodies)


@DECODERS
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_pdata_arbitrary_bytes(bodies: list[bytes]) -> None:
    _check_against_model(bodies)


@DECODERS
@given(S.dimse_stream(CONTEXTS))
def test_pdata_valid_streams_reassemble(stream: tuple[list[bytes], list[Message]]) -> None:
    """Valid P-DATA, however fragmented and split into PDUs, gives back exactly the
    messages that went in, and no error."""
    bodies, messages = stream
    assert _reassemble(bodies) == (messages, None)


_ECHO = dimse.echo_rq(1)
_STORE = dimse.store_rq(2, S.CT, "1.2.3.4")


def _p(ctx: int, control: int, fragment: bytes, length: int | None = None) -> bytes:
    """One PDV; control 1 = command, 2 = last fragment; ``length`` a lie if given."""
    size = len(fragment) + 2 if length is None else length
    return struct.pack(">LBB", size, ctx, control) + fragment


@pytest.mark.parametrize(
    ("bodies", "messages", "kind"),
    [
        pytest.param([_p(1, 3, _ECHO)], [(1, _ECHO, None)], None, id="echo"),
        pytest.param(
            [_p(3, 1, _STORE[:10]), _p(3, 3, _STORE[10:]) + _p(3, 0, b"ab"), _p(3, 2, b"c")],
            [(3, _STORE, b"abc")],
            None,
            id="store-in-fragments",
        ),
        pytest.param([b"\0\0\0\x02\x01"], [], "malformed_pdv", id="truncated-header"),
        pytest.param([_p(1, 3, b"", length=1)], [], "malformed_pdv", id="length-below-2"),
        pytest.param([_p(1, 3, _ECHO, length=len(_ECHO) + 3)], [], "malformed_pdv", id="overrun"),
        pytest.param([_p(7, 3, _ECHO)], [], "bad_context", id="unknown-context"),
        pytest.param(
            [_p(1, 1, _ECHO[:8]) + _p(3, 3, _ECHO[8:])], [], "bad_context", id="command-2-contexts"
        ),
        pytest.param(
            [_p(1, 3, _ECHO) + _p(1, 2, b"x")],
            [(1, _ECHO, None)],
            "unexpected_pdv",
            id="data-without-data-set",
        ),
        pytest.param(
            [_p(3, 3, _STORE) + _p(1, 2, b"x")], [], "unexpected_pdv", id="data-2-contexts"
        ),
        pytest.param(
            [_p(3, 3, _STORE) + _p(3, 0, b"x") + _p(3, 3, _ECHO)],
            [],
            "unexpected_pdv",
            id="command-inside-data-set",
        ),
        pytest.param(
            [_p(1, 1, b"\0" * 40_000), _p(1, 1, b"\0" * 40_000)],
            [],
            "command_too_large",
            id="command-too-large",
        ),
    ],
)
def test_pdata_table(bodies: list[bytes], messages: list[Message], kind: str | None) -> None:
    """Hand-made P-DATA: valid ones reassemble to their messages, invalid ones stop with
    the named error (and the model agrees, so the fuzzers above check something)."""
    assert _reassemble(bodies) == (messages, kind)
    assert _model(bodies) == (messages, kind)


@DECODERS
@given(st.binary(max_size=3000), st.integers(8, 600), st.sampled_from(CONTEXTS))
@example(b"", 8, 1)
def test_pdata_fragments_reassemble_exactly(data: bytes, max_pdu: int, ctx: int) -> None:
    """Our fragmenter and reader are inverse: the data set comes out as it went in."""
    out = pdu.pdata_pdus(ctx, data, max_pdu, 0, True)
    reader = PDataReader(frozenset(CONTEXTS))
    reader.start_data(ctx, sink := ListSink())
    pos = 0
    done = False
    while pos < len(out):
        _t, length = struct.unpack_from(">BxL", out, pos)
        reader.feed(memoryview(out)[pos + 6 : pos + 6 + length])
        pos += 6 + length
        while (event := reader.next_event()) != PDataReader.NEED_DATA:
            assert event == PDataReader.DATA_DONE
            done = True
    assert done
    assert b"".join(sink.chunks) == data


def test_context_without_transfer_syntax_is_rejected_not_crashed() -> None:
    """Regression (fuzzer): the A-ASSOCIATE-AC answers result 4 for that context and
    accepts the others."""
    raw = pdu.encode_associate_rq(
        "FUZZ", "ROUTER", requestor_contexts([(S.VERIFICATION, []), (S.CT, [S.EXPLICIT])]), 16384
    )
    rq = pdu.decode_associate_rq(raw)
    results = negotiate(rq.contexts, True)
    assert [(cx.context_id, cx.result) for cx in results] == [(1, 4), (3, 0)]
    ac = pdu.decode_associate_ac(pdu.encode_associate_ac(rq, results, 16384))
    assert [(cx.context_id, cx.result) for cx in ac.contexts] == [(1, 4), (3, 0)]


def test_non_ascii_uids_are_answered_not_crashed() -> None:
    """Regression (make fuzz): the UIDs of a C-STORE-RQ are echoed in the response;
    non-ASCII bytes in them made encode_command raise UnicodeEncodeError."""
    raw = dimse.store_rq(7, S.CT, "1.2.3.XX").replace(b"1.2.3.XX", b"1.2.\xff\xe9\xc3\xa9")
    req = dimse.store_request(dimse.decode_command(raw), S.EXPLICIT)
    rsp = dimse.decode_command(
        dimse.store_rsp(req.message_id, req.sop_class_uid, req.sop_instance_uid, 0xC000)
    )
    assert rsp.get("Status") == 0xC000
    assert rsp.get("AffectedSOPInstanceUID").startswith("1.2.")

"""DIMSE: command sets, P-DATA reassembly, statuses (PS3.7), sans-I/O.

Command sets are encoded and decoded with pynetdicom's dsutils (pydicom, implicit VR
little endian). Data set fragments are never decoded: `PDataReader` parses the PDV
headers itself and hands memoryview slices of the PDU straight to the sink.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode as _ds_decode
from pynetdicom.dsutils import encode as _ds_encode

from router.dicom.errors import ProtocolError
from router.dicom.pdu import COMMAND, LAST, unpack_pdv_header
from router.dicom.uids import VERIFICATION


class Status(enum.IntEnum):
    """DIMSE statuses the router uses (PS3.4 Annex B and PS3.7 Annex C)."""

    SUCCESS = 0x0000
    CANCEL = 0xFE00
    PENDING = 0xFF00
    WARNING = 0x0001
    COERCION = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_SOP_CLASS_MISMATCH = 0xB007
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_INVOCATION = 0x0210
    RESOURCE_LIMITATION = 0x0213
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_CLASS = 0x0118
    INVALID_ARGUMENT = 0x0115
    MISTYPED_ARGUMENT = 0x0212
    UNRECOGNIZED_OPERATION = 0x0211


C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101
MAX_COMMAND_SET = 64 * 1024


class Sink(Protocol):
    """Where the bytes of a received data set go, exactly as received."""

    def write(self, data: bytes | memoryview) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A C-STORE-RQ command set plus the transfer syntax of its presentation context."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    priority: int = 2
    move_originator_ae: str | None = None
    move_originator_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoreResponse:
    status: int
    error_comment: str | None = None


# -- command sets ----------------------------------------------------------------------
#
# A command set is a handful of group-0000 elements in implicit VR little endian. On
# the hot path (one C-STORE-RQ in, one C-STORE-RSP out per instance) pydicom's general
# dataset codec costs more than the rest of the exchange, so command sets are encoded
# and parsed here directly; tests check both against pynetdicom's dsutils (pydicom).

_US = "US"
_UL = "UL"
_UI = "UI"
_AE = "AE"
_LO = "LO"
#: keyword -> (element number in group 0000, VR)
COMMAND_ELEMENTS: dict[str, tuple[int, str]] = {
    "CommandGroupLength": (0x0000, _UL),
    "AffectedSOPClassUID": (0x0002, _UI),
    "RequestedSOPClassUID": (0x0003, _UI),
    "CommandField": (0x0100, _US),
    "MessageID": (0x0110, _US),
    "MessageIDBeingRespondedTo": (0x0120, _US),
    "MoveDestination": (0x0600, _AE),
    "Priority": (0x0700, _US),
    "CommandDataSetType": (0x0800, _US),
    "Status": (0x0900, _US),
    "OffendingElement": (0x0901, "AT"),
    "ErrorComment": (0x0902, _LO),
    "ErrorID": (0x0903, _US),
    "AffectedSOPInstanceUID": (0x1000, _UI),
    "RequestedSOPInstanceUID": (0x1001, _UI),
    "MoveOriginatorApplicationEntityTitle": (0x1030, _AE),
    "MoveOriginatorMessageID": (0x1031, _US),
}
_VR_OF = {elem: vr for elem, vr in COMMAND_ELEMENTS.values()}
_ELEMENT = struct.Struct("<HHL")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


def encode_command(**fields: int | str | None) -> bytes:
    """Encode a command set from keywords, with its Command Group Length, in implicit
    VR little endian, elements in tag order; None values are left out."""
    items = []
    for keyword, value in fields.items():
        if value is None:
            continue
        elem, vr = COMMAND_ELEMENTS[keyword]
        if vr == _US:
            raw = _U16.pack(int(value))
        elif vr == _UL:
            raw = _U32.pack(int(value))
        else:
            raw = str(value).encode("ascii", "replace")  # a hostile UID echoed back
            if len(raw) % 2:
                raw += b"\0" if vr == _UI else b" "
        items.append((elem, raw))
    items.sort()
    body = b"".join(_ELEMENT.pack(0, elem, len(raw)) + raw for elem, raw in items)
    return _ELEMENT.pack(0, 0, 4) + _U32.pack(len(body)) + body


class Command:
    """A parsed command set: element number -> raw value, read by keyword."""

    __slots__ = ("elements",)

    def __init__(self, elements: dict[int, bytes]) -> None:
        self.elements = elements

    def get(self, keyword: str, default: Any = None) -> Any:
        elem, vr = COMMAND_ELEMENTS[keyword]
        raw = self.elements.get(elem)
        if raw is None or (not raw and vr not in (_UI, _AE, _LO)):
            return default
        if vr == _US:
            if len(raw) != 2:
                raise ProtocolError(f"{keyword}: bad US length {len(raw)}", "bad_command_set")
            return _U16.unpack(raw)[0]
        if vr == _UL:
            if len(raw) != 4:
                raise ProtocolError(f"{keyword}: bad UL length {len(raw)}", "bad_command_set")
            return _U32.unpack(raw)[0]
        if vr == _UI:
            return raw.rstrip(b"\0 ").decode("ascii", "replace")
        if vr in (_AE, _LO):
            return raw.decode("ascii", "replace").strip(" \0")
        return raw

    def __contains__(self, keyword: str) -> bool:
        return COMMAND_ELEMENTS[keyword][0] in self.elements


def decode_command(data: bytes | bytearray) -> Command:
    """Parse a command set (group 0000, implicit VR little endian)."""
    view = memoryview(data)
    end = len(view)
    pos = 0
    elements: dict[int, bytes] = {}
    unpack = _ELEMENT.unpack_from
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("truncated command element", "bad_command_set")
        group, elem, length = unpack(view, pos)
        pos += 8
        if group != 0 or length > end - pos:
            raise ProtocolError(
                f"bad command element ({group:04x},{elem:04x}) length {length}", "bad_command_set"
            )
        elements[elem] = bytes(view[pos : pos + length])
        pos += length
    if 0x0100 not in elements:
        raise ProtocolError("command set without CommandField", "bad_command_set")
    return Command(elements)


def encode_command_pydicom(ds: Dataset) -> bytes:
    """Reference codec (pynetdicom dsutils / pydicom), used by tests and for checks."""
    if "CommandGroupLength" in ds:
        del ds.CommandGroupLength
    body = _ds_encode(ds, True, True)
    if body is None:
        raise ValueError("command set could not be encoded")
    ds.CommandGroupLength = len(body)
    full = _ds_encode(ds, True, True)
    assert full is not None
    return bytes(full)


def decode_command_pydicom(data: bytes | bytearray) -> Dataset:
    return _ds_decode(BytesIO(bytes(data)), True, True)


def echo_rq(message_id: int) -> bytes:
    return encode_command(
        AffectedSOPClassUID=VERIFICATION,
        CommandField=C_ECHO_RQ,
        MessageID=message_id,
        CommandDataSetType=NO_DATA_SET,
    )


def echo_rsp(message_id: int, status: int = Status.SUCCESS) -> bytes:
    return encode_command(
        AffectedSOPClassUID=VERIFICATION,
        CommandField=C_ECHO_RSP,
        MessageIDBeingRespondedTo=message_id,
        CommandDataSetType=NO_DATA_SET,
        Status=int(status),
    )


# The usual C-STORE-RQ and -RSP (one of each per instance) are laid out directly: the
# same bytes as encode_command, which tests/dicom/test_core.py checks.
_US_ELEMENT = struct.Struct("<HHLH")
_STORE_RQ_FIELD = _US_ELEMENT.pack(0, 0x0100, 2, C_STORE_RQ)
_STORE_RSP_FIELD = _US_ELEMENT.pack(0, 0x0100, 2, C_STORE_RSP)
_NO_DATA_SET_ELEMENT = _US_ELEMENT.pack(0, 0x0800, 2, NO_DATA_SET)


def _ui_element(elem: int, value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\0"
    return _ELEMENT.pack(0, elem, len(raw)) + raw


def _framed(body: bytes) -> bytes:
    return _ELEMENT.pack(0, 0, 4) + _U32.pack(len(body)) + body


def store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    priority: int = 2,
    move_originator_ae: str | None = None,
    move_originator_message_id: int | None = None,
) -> bytes:
    if move_originator_ae is None and move_originator_message_id is None:
        return _framed(
            _ui_element(0x0002, str(sop_class_uid))
            + _STORE_RQ_FIELD
            + _US_ELEMENT.pack(0, 0x0110, 2, int(message_id))
            + _US_ELEMENT.pack(0, 0x0700, 2, int(priority))
            + _US_ELEMENT.pack(0, 0x0800, 2, 0x0000)
            + _ui_element(0x1000, str(sop_instance_uid))
        )
    return encode_command(
        AffectedSOPClassUID=sop_class_uid,
        CommandField=C_STORE_RQ,
        MessageID=message_id,
        Priority=priority,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance_uid,
        MoveOriginatorApplicationEntityTitle=move_originator_ae,
        MoveOriginatorMessageID=move_originator_message_id,
    )


def store_rsp(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    if not error_comment:
        return _framed(
            _ui_element(0x0002, str(sop_class_uid))
            + _STORE_RSP_FIELD
            + _US_ELEMENT.pack(0, 0x0120, 2, int(message_id))
            + _NO_DATA_SET_ELEMENT
            + _US_ELEMENT.pack(0, 0x0900, 2, int(status))
            + _ui_element(0x1000, str(sop_instance_uid))
        )
    return encode_command(
        AffectedSOPClassUID=sop_class_uid,
        CommandField=C_STORE_RSP,
        MessageIDBeingRespondedTo=message_id,
        CommandDataSetType=NO_DATA_SET,
        Status=int(status),
        ErrorComment=error_comment[:64] if error_comment else None,
        AffectedSOPInstanceUID=sop_instance_uid,
    )


def store_request(command: Command, transfer_syntax: str) -> StoreRequest:
    return StoreRequest(
        message_id=int(command.get("MessageID", 0)),
        sop_class_uid=str(command.get("AffectedSOPClassUID", "")),
        sop_instance_uid=str(command.get("AffectedSOPInstanceUID", "")),
        transfer_syntax=transfer_syntax,
        priority=int(command.get("Priority", 2)),
        move_originator_ae=command.get("MoveOriginatorApplicationEntityTitle") or None,
        move_originator_message_id=command.get("MoveOriginatorMessageID"),
    )


def has_data_set(command: Command) -> bool:
    return int(command.get("CommandDataSetType", NO_DATA_SET)) != NO_DATA_SET


# -- P-DATA reassembly ---------------------------------------------------------------


class PDataReader:
    """Reassembles DIMSE messages from P-DATA-TF bodies.

    Feed a PDU body with `feed`, then call `next_event` until it returns NEED_DATA.
    Command fragments are accumulated (bounded); data set fragments go straight to
    `sink` (or are discarded when it is None) as memoryview slices of the body.
    """

    NEED_DATA = 0
    COMMAND_DONE = 1
    DATA_DONE = 2

    __slots__ = (
        "_body",
        "_pos",
        "command",
        "command_context",
        "context_ids",
        "data_bytes",
        "data_context",
        "expect_data",
        "sink",
    )

    def __init__(self, context_ids: frozenset[int]) -> None:
        self.context_ids = context_ids
        self.command = bytearray()
        self.command_context = 0
        self.sink: Sink | None = None
        self.expect_data = False
        self.data_context = 0
        self.data_bytes = 0
        self._body: memoryview = memoryview(b"")
        self._pos = 0

    def feed(self, body: memoryview) -> None:
        if self._pos < len(self._body):
            raise ProtocolError("PDU fed before the previous one was consumed", "internal")
        self._body = body
        self._pos = 0

    @property
    def in_message(self) -> bool:
        """True between the first fragment of a message and the end of its data set."""
        return bool(self.command) or self.expect_data

    def next_event(self) -> int:
        body = self._body
        end = len(body)
        pos = self._pos
        while pos < end:
            if end - pos < 6:
                raise ProtocolError("truncated PDV header", "malformed_pdv")
            length, ctx, control = unpack_pdv_header(body, pos)
            stop = pos + 4 + length
            if length < 2 or stop > end:
                raise ProtocolError(f"bad PDV length {length}", "malformed_pdv")
            if ctx not in self.context_ids:
                raise ProtocolError(f"PDV on unknown context {ctx}", "bad_context")
            start = pos + 6
            pos = stop
            if control & COMMAND:
                if self.expect_data:
                    raise ProtocolError("command fragment inside a data set", "unexpected_pdv")
                if self.command and ctx != self.command_context:
                    raise ProtocolError("command fragments on two contexts", "bad_context")
                self.command_context = ctx
                self.command += body[start:stop]
                if len(self.command) > MAX_COMMAND_SET:
                    raise ProtocolError("command set too large", "command_too_large")
                if control & LAST:
                    self._pos = pos
                    return self.COMMAND_DONE
            else:
                if not self.expect_data or ctx != self.data_context:
                    raise ProtocolError("unexpected data set fragment", "unexpected_pdv")
                self.data_bytes += stop - start
                sink = self.sink
                if sink is not None:
                    sink.write(body[start:stop])
                if control & LAST:
                    self.expect_data = False
                    self._pos = pos
                    return self.DATA_DONE
        self._pos = pos
        return self.NEED_DATA

    def take_command(self) -> tuple[int, bytes]:
        data = bytes(self.command)
        self.command.clear()
        return self.command_context, data

    def start_data(self, context_id: int, sink: Sink | None) -> None:
        self.expect_data = True
        self.data_context = context_id
        self.sink = sink
        self.data_bytes = 0

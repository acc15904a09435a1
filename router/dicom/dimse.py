"""DIMSE: command sets, P-DATA reassembly, statuses (PS3.7), sans-I/O.

Command sets are encoded and decoded with pynetdicom's dsutils (pydicom, implicit VR
little endian). Data set fragments are never decoded: `PDataReader` parses the PDV
headers itself and hands memoryview slices of the PDU straight to the sink.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode as _ds_decode
from pynetdicom.dsutils import encode as _ds_encode

from router.dicom.errors import ProtocolError
from router.dicom.pdu import COMMAND, LAST, unpack_pdv_header


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


def encode_command(ds: Dataset) -> bytes:
    """Encode a command set, with its Command Group Length, implicit VR LE."""
    if "CommandGroupLength" in ds:
        del ds.CommandGroupLength
    body = _ds_encode(ds, True, True)
    if body is None:
        raise ValueError("command set could not be encoded")
    ds.CommandGroupLength = len(body)
    full = _ds_encode(ds, True, True)
    assert full is not None
    return bytes(full)


def decode_command(data: bytes | bytearray) -> Dataset:
    try:
        ds = _ds_decode(BytesIO(bytes(data)), True, True)
        ds.CommandField  # noqa: B018 - force parsing of the one element we always need
    except Exception as exc:
        raise ProtocolError(f"undecodable command set: {exc!r}", "bad_command_set") from exc
    return ds


def echo_rq(message_id: int) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = C_ECHO_RQ
    ds.MessageID = message_id
    ds.CommandDataSetType = NO_DATA_SET
    return encode_command(ds)


def echo_rsp(message_id: int, status: int = Status.SUCCESS) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.1.1"
    ds.CommandField = C_ECHO_RSP
    ds.MessageIDBeingRespondedTo = message_id
    ds.CommandDataSetType = NO_DATA_SET
    ds.Status = int(status)
    return encode_command(ds)


def store_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = 2
) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class_uid
    ds.CommandField = C_STORE_RQ
    ds.MessageID = message_id
    ds.Priority = priority
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance_uid
    return encode_command(ds)


def store_rsp(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class_uid
    ds.CommandField = C_STORE_RSP
    ds.MessageIDBeingRespondedTo = message_id
    ds.CommandDataSetType = NO_DATA_SET
    ds.Status = int(status)
    ds.AffectedSOPInstanceUID = sop_instance_uid
    if error_comment:
        ds.ErrorComment = error_comment[:64]
    return encode_command(ds)


def _get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword, default)
    return default if value is None else value


def store_request(ds: Dataset, transfer_syntax: str) -> StoreRequest:
    try:
        return StoreRequest(
            message_id=int(_get(ds, "MessageID", 0)),
            sop_class_uid=str(_get(ds, "AffectedSOPClassUID", "")).rstrip("\0 "),
            sop_instance_uid=str(_get(ds, "AffectedSOPInstanceUID", "")).rstrip("\0 "),
            transfer_syntax=transfer_syntax,
            priority=int(_get(ds, "Priority", 2)),
            move_originator_ae=(str(ds.MoveOriginatorApplicationEntityTitle).strip() or None)
            if ds.get("MoveOriginatorApplicationEntityTitle")
            else None,
            move_originator_message_id=int(ds.MoveOriginatorMessageID)
            if ds.get("MoveOriginatorMessageID") is not None
            else None,
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad C-STORE-RQ command set: {exc!r}", "bad_command_set") from exc


def has_data_set(ds: Dataset) -> bool:
    return int(_get(ds, "CommandDataSetType", NO_DATA_SET)) != NO_DATA_SET


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

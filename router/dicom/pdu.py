"""PDU framing and codecs (PS3.8 section 9), sans-I/O.

Association PDUs are encoded and decoded by pynetdicom's PDU classes; the framing
(the 6-byte header, our maximum length) and the P-DATA-TF hot path are ours: PDV
headers are built and parsed directly with no object per fragment.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from router.dicom.errors import PduTooLarge, ProtocolError
from router.dicom.uids import (
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)

A_ASSOCIATE_RQ_TYPE = 0x01
A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
P_DATA_TF_TYPE = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07
KNOWN_TYPES = frozenset(range(1, 8))

HEADER_LENGTH = 6
# Association-control PDUs are small; anything bigger than this before the
# association is established is hostile (the A-ASSOCIATE-RQ of 128 contexts with a
# dozen transfer syntaxes each stays well below it).
MAX_ASSOCIATE_PDU = 256 * 1024
DEFAULT_MAX_PDU = 256 * 1024
# When the peer says "unlimited" (0) we still cut data sets into PDUs of this size.
UNLIMITED_SEND_PDU = 1024 * 1024

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")  # PDV item length, context id, message control header


def parse_header(header: bytes | bytearray | memoryview, limit: int) -> tuple[int, int]:
    """Return (pdu_type, body_length) from a 6-byte header; raise before buffering
    anything when the peer announces more than ``limit`` bytes or an unknown type."""
    pdu_type, length = _HEADER.unpack_from(header)
    if pdu_type not in KNOWN_TYPES:
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02x}", "unknown_pdu_type")
    if length > limit:
        raise PduTooLarge(length, limit)
    return pdu_type, length


def frame(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


# -- association PDUs (pynetdicom codecs) ---------------------------------------------


def _user_information(max_pdu_length: int) -> list[Any]:
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_pdu_length
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    iv = ImplementationVersionNameNotification()
    iv.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [ml, ic, iv]


def encode_associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[PresentationContext],
    max_pdu_length: int,
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = calling_ae
    prim.called_ae_title = called_ae
    prim.presentation_context_definition_list = list(contexts)
    prim.user_information = _user_information(max_pdu_length)
    return bytes(A_ASSOCIATE_RQ(prim).encode())


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    """The decoded A-ASSOCIATE-RQ: what the acceptor needs to decide."""

    calling_ae: str
    called_ae: str
    application_context: str
    contexts: list[PresentationContext]
    max_pdu_length: int  # the requestor's maximum receive length, 0 = unlimited
    implementation_class_uid: str


def _max_length(user_information: list[Any]) -> int:
    for item in user_information:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received or 0)
    return 0


def _decode(pdu_cls: type[Any], pdu: bytes) -> Any:
    obj = pdu_cls()
    try:
        obj.decode(pdu)
        return obj.to_primitive()
    except ProtocolError:
        raise
    except Exception as exc:  # pynetdicom raises many kinds on malformed input
        raise ProtocolError(f"malformed {pdu_cls.__name__}: {exc!r}", "malformed_pdu") from exc


def decode_associate_rq(pdu: bytes) -> AssociateRequest:
    """``pdu`` is the whole PDU including its 6-byte header."""
    prim = _decode(A_ASSOCIATE_RQ, pdu)
    impl = ""
    for item in prim.user_information:
        if isinstance(item, ImplementationClassUIDNotification):
            impl = str(item.implementation_class_uid or "")
    return AssociateRequest(
        calling_ae=str(prim.calling_ae_title).strip(),
        called_ae=str(prim.called_ae_title).strip(),
        application_context=str(prim.application_context_name or ""),
        contexts=list(prim.presentation_context_definition_list),
        max_pdu_length=_max_length(prim.user_information),
        implementation_class_uid=impl,
    )


def encode_associate_ac(
    rq: AssociateRequest, results: Sequence[PresentationContext], max_pdu_length: int
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = rq.calling_ae or "ANY"
    prim.called_ae_title = rq.called_ae or "ANY"
    prim.result = 0x00
    prim.result_source = 0x01
    prim.presentation_context_definition_results_list = list(results)
    prim.user_information = _user_information(max_pdu_length)
    return bytes(A_ASSOCIATE_AC(prim).encode())


@dataclass(frozen=True, slots=True)
class AssociateAccept:
    contexts: list[PresentationContext]  # results: context_id, result, transfer_syntax
    max_pdu_length: int


def decode_associate_ac(pdu: bytes) -> AssociateAccept:
    prim = _decode(A_ASSOCIATE_AC, pdu)
    return AssociateAccept(
        contexts=list(prim.presentation_context_definition_results_list),
        max_pdu_length=_max_length(prim.user_information),
    )


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    rj = A_ASSOCIATE_RJ()
    rj.result, rj.source, rj.reason_diagnostic = result, source, reason
    return bytes(rj.encode())


def decode_associate_rj(pdu: bytes) -> tuple[int, int, int]:
    if len(pdu) < 10:
        raise ProtocolError("short A-ASSOCIATE-RJ", "malformed_pdu")
    return pdu[7], pdu[8], pdu[9]


RELEASE_RQ = bytes(A_RELEASE_RQ().encode())
RELEASE_RP = bytes(A_RELEASE_RP().encode())


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT: source 0 = service user, 2 = service provider (then reason applies)."""
    ab = A_ABORT_RQ()
    ab.source = source
    ab.reason_diagnostic = reason if source == 2 else 0
    return bytes(ab.encode())


def decode_abort(pdu: bytes | bytearray | memoryview) -> tuple[int, int]:
    if len(pdu) < 10:
        return 0, 0
    return pdu[8], pdu[9]


# -- P-DATA-TF: built and parsed by hand (hot path) -------------------------------------

COMMAND = 0x01
LAST = 0x02


def pdata_pdus(
    context_id: int, data: bytes | bytearray | memoryview, max_pdu: int, flags: int, last: bool
) -> bytearray:
    """Encode ``data`` as consecutive P-DATA-TF PDUs of at most ``max_pdu`` bytes of body,
    one PDV each; ``flags`` is COMMAND or 0, LAST is set on the final fragment when
    ``last``. Returns one buffer holding every PDU, for one socket write."""
    max_pdu = max_pdu or UNLIMITED_SEND_PDU
    frag = max_pdu - 6  # PDV item = 4-byte length + ctx id + control header + data
    if frag <= 0:
        raise ValueError("max PDU length too small")
    view = memoryview(data)
    n = len(view)
    count = max(1, -(-n // frag))
    out = bytearray(n + 12 * count)
    pos = 0
    off = 0
    hdr = _HEADER.pack_into
    pdv = _PDV_HEADER.pack_into
    for i in range(count):
        chunk = view[off : off + frag]
        size = len(chunk)
        off += size
        control = flags | (LAST if last and i == count - 1 else 0)
        hdr(out, pos, P_DATA_TF_TYPE, size + 6)
        pdv(out, pos + 6, size + 2, context_id, control)
        out[pos + 12 : pos + 12 + size] = chunk
        pos += 12 + size
    return out


def unpack_pdv_header(body: memoryview, pos: int) -> tuple[int, int, int]:
    """(item_length, context_id, control) of the PDV at ``pos``."""
    return _PDV_HEADER.unpack_from(body, pos)  # type: ignore[return-value]

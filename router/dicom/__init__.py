"""router.dicom: the DICOM upper layer (PS3.8) on anyio.

A sans-I/O core (pdu, association, dimse) under two thin anyio adapters (acceptor,
requestor). pynetdicom supplies the codecs, not the threads.
"""

from router.dicom.acceptor import Acceptor, AcceptorConfig
from router.dicom.association import AssociationInfo, Rejection
from router.dicom.dimse import Sink, Status, StoreRequest, StoreResponse
from router.dicom.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectError,
    DicomError,
    DicomTimeout,
    NoPresentationContext,
    PduTooLarge,
    ProtocolError,
    SourceError,
)
from router.dicom.handler import FileSink, StoreHandler, StoreRefused
from router.dicom.requestor import Association, Segment, associate

__all__ = [
    "Acceptor",
    "AcceptorConfig",
    "Association",
    "AssociationAborted",
    "AssociationInfo",
    "AssociationRejected",
    "ConnectError",
    "DicomError",
    "DicomTimeout",
    "FileSink",
    "NoPresentationContext",
    "PduTooLarge",
    "ProtocolError",
    "Rejection",
    "Segment",
    "Sink",
    "SourceError",
    "Status",
    "StoreHandler",
    "StoreRefused",
    "StoreRequest",
    "StoreResponse",
    "associate",
]

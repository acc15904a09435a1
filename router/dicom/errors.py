"""Typed errors of the DICOM layer; every one is a `DicomError`, but for
`SourceError`, which is about the caller's data, not the association."""

from __future__ import annotations


class DicomError(Exception):
    """Base of every error raised by router.dicom."""


class ConnectError(DicomError):
    """The TCP connection (or its TLS handshake) could not be made."""


class ProtocolError(DicomError):
    """The peer broke the upper-layer protocol (malformed or unexpected PDU)."""

    def __init__(self, message: str, kind: str = "protocol") -> None:
        super().__init__(message)
        self.kind = kind


class PduTooLarge(ProtocolError):
    """A PDU announced a length larger than we accept."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"PDU length {length} exceeds our limit {limit}", "pdu_too_large")
        self.length = length
        self.limit = limit


class DicomTimeout(DicomError):
    """A network, ACSE or DIMSE timeout expired."""


class NoPresentationContext(DicomError):
    """No accepted presentation context for this SOP class / transfer syntax."""


class AssociationRejected(DicomError):
    """The acceptor answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected result={result} source={source} reason={reason}")
        self.result = result
        self.source = source
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.result == 2


class AssociationAborted(DicomError):
    """The association was aborted (A-ABORT received, or connection lost)."""

    def __init__(self, source: int, reason: int) -> None:
        super().__init__(f"association aborted source={source} reason={reason}")
        self.source = source
        self.reason = reason


class SourceError(ValueError):
    """The data set to send is shorter than the range it was given (a file cut or
    changed under the sender). Raised before the first byte went out, the association
    stays usable; after, it has been aborted, so the peer keeps nothing of it."""

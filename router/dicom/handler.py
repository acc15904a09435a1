"""What the acceptor calls: the StoreHandler hooks and the simplest Sink, FileSink."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import BinaryIO

from router.dicom.association import AssociationInfo, Rejection
from router.dicom.dimse import Sink, Status, StoreRequest


class StoreRefused(Exception):
    """Raised by `StoreHandler.open_store` to answer ``status`` without storing; the
    data set is still read (and discarded) so the association can go on."""

    def __init__(self, status: int = Status.OUT_OF_RESOURCES, comment: str | None = None) -> None:
        super().__init__(f"store refused with status 0x{status:04X}")
        self.status = int(status)
        self.comment = comment


#: FileSink gathers the fragments (one per P-DATA PDU, 16 KB with DCMTK's default) into
#: writes of up to this size: a 20 KB data set is one write(), a 512 KB one two or three
#: instead of 32 (measured: file writes, not the network, dominate the acceptor's CPU)
FILE_WRITE_BUFFER = 256 * 1024


class FileSink:
    """A Sink writing the data set bytes, exactly as received, to ``directory`` under a
    name the router makes (never one from the network)."""

    def __init__(self, directory: Path) -> None:
        name = f"{time.time_ns():x}-{secrets.token_hex(4)}.part"
        self.path = Path(directory) / name
        self._file: BinaryIO | None = open(  # noqa: SIM115 - owned by the sink
            self.path, "xb", buffering=FILE_WRITE_BUFFER
        )
        self.size = 0
        self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        f = self._file
        if f is None:
            raise ValueError("write to a closed FileSink")
        self.size += f.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        self.close()
        self.path.unlink(missing_ok=True)


class StoreHandler:
    """Base class with no-op defaults; the acceptor calls these in the association's task."""

    def check_association(self, info: AssociationInfo) -> Rejection | None:
        return None

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> Sink:
        raise StoreRefused(Status.OUT_OF_RESOURCES)

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> int:
        return Status.SUCCESS

    def store_answered(self, info: AssociationInfo, req: StoreRequest, sink: Sink) -> None:
        """After the response to a C-STORE whose data set reached ``finish_store`` went
        out (or failed to): bookkeeping that must not delay the peer's next request."""

    def association_opened(self, info: AssociationInfo) -> None:
        pass

    def association_closed(self, info: AssociationInfo, how: str) -> None:
        pass

    def association_rejected(self, reason: Rejection) -> None:
        pass

    def protocol_error(self, kind: str) -> None:
        pass

"""The C-STORE handler: durable first, acknowledged second.

The network layer streams each data set into a sink made here (a
:class:`~router.store.spool.SpooledSink`: in memory when small, a temp file when
large). When the last fragment is in, :meth:`Ingest.finish_store` reads the header
without pixel data, routes it with the current rules and hands it to the queue, which
returns only once the bytes and one row per destination are durable. Only then is
Success returned, so a Success on the wire always means "stored" (docs/architecture.md,
"Guarantees"). Any failure before that removes what was received (nothing half-received
is kept) and answers a DIMSE failure status instead.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from router import logs
from router.config import Config
from router.dicom import (
    AssociationInfo,
    Rejection,
    Status,
    StoreHandler,
    StoreRefused,
    StoreRequest,
    uids,
)
from router.header import BrokenDataSet as BrokenDataSet
from router.header import check_structure, scan_header, wanted_tags
from router.metrics import Metrics
from router.store.backend import QueueBackend
from router.store.records import CommitResult, InstanceRecord, QueueClosed, QueueUnavailable
from router.store.spool import SpooledSink

log = logging.getLogger("router.ingest")

# Above this size the header is parsed in a worker thread: reading a spilled file's
# header touches the disk, and the event loop serves every other association.
_THREAD_HEADER_ABOVE = 1 << 20


@dataclass(frozen=True, slots=True)
class _Stored:
    """A committed instance, for the bookkeeping after its Success went out."""

    result: CommitResult
    size: int


@dataclass(frozen=True, slots=True)
class Header:
    """What the ingest needs from the data set, beyond what the rules read."""

    sop_instance_uid: str
    study_uid: str | None


#: While a data set is received, free space is checked again every this many bytes.
FREE_SPACE_CHECK_EVERY = 64 * 1024 * 1024


class StorageLow(OSError):
    """Free space fell below ``storage.min_free_bytes`` while a data set came in."""

    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "storage below min_free_bytes")


class GuardedSink:
    """A sink that turns a failing write (disk full, I/O error, free space below
    ``min_free_bytes``) into a recorded error instead of an exception in the network
    layer: the rest of the data set is discarded and :meth:`Ingest.finish_store`
    answers with the right status. With ``digest``, a BLAKE2b of the data set bytes is
    computed as they pass (for ``duplicates: drop_identical``)."""

    __slots__ = (
        "_check_at",
        "_free_bytes",
        "_min_free",
        "digest",
        "error",
        "inner",
        "outcome",
    )

    def __init__(
        self,
        inner: SpooledSink,
        free_bytes: Callable[[], int] | None = None,
        min_free: int = 0,
        *,
        digest: bool = False,
    ) -> None:
        self.inner = inner
        self.error: OSError | None = None
        self.outcome: _Stored | None = None  # what it stored, logged once answered
        self.digest = hashlib.blake2b(digest_size=20) if digest else None
        self._free_bytes = free_bytes
        self._min_free = min_free
        self._check_at = inner.size + FREE_SPACE_CHECK_EVERY

    def write(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            return
        try:
            self.inner.write(data)
        except OSError as e:
            self.error = e
            self.inner.abort()
            return
        if self.digest is not None:
            self.digest.update(data)
        if self.inner.size >= self._check_at and self._free_bytes is not None:
            self._check_at = self.inner.size + FREE_SPACE_CHECK_EVERY
            if self._free_bytes() < self._min_free:
                self.error = StorageLow()
                self.inner.abort()

    def abort(self) -> None:
        self.inner.abort()


def _discard(
    sink: SpooledSink,
    info: AssociationInfo,
    req: StoreRequest,
    status: int,
    reason: str,
    **fields: Any,
) -> int:
    """Drop what was received and answer ``status``: nothing half-received is kept."""
    sink.abort()
    refused = status == Status.OUT_OF_RESOURCES
    logs.event(
        log,
        logging.ERROR if refused else logging.WARNING,
        "store_refused" if refused else "store_rejected",
        assoc=info.id,
        sop_instance_uid=req.sop_instance_uid,
        reason=reason,
        **fields,
    )
    return status


def _store_failed(info: AssociationInfo, req: StoreRequest, error: OSError) -> int:
    """Log why the data could not be stored and the status that says so: A700 (out of
    resources: the sender may retry) for a full disk or an unreachable queue database,
    0110 (processing failure) for any other I/O error."""
    logs.event(
        log,
        logging.ERROR,
        "store_failed",
        assoc=info.id,
        sop_instance_uid=req.sop_instance_uid,
        error=str(error),
    )
    full = isinstance(error, QueueUnavailable) or error.errno in (errno.ENOSPC, errno.EDQUOT)
    return Status.OUT_OF_RESOURCES if full else Status.PROCESSING_FAILURE


def _text(value: Any) -> str:
    return str(value or "").strip("\x00 ")


_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_STUDY_INSTANCE_UID = 0x0020000D
_SERIES_INSTANCE_UID = 0x0020000E
_SERIES_NUMBER = 0x00200011
_INSTANCE_NUMBER = 0x00200013

#: What ingest reads from a data set besides the rules' tags (identity, the queue's
#: study, the series and instance numbers holds order by).
INGEST_TAGS = frozenset(
    (_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_INSTANCE_UID, 0x0020000E, 0x00200011, 0x00200013)
)


def _uid(ds: Dataset, tag: int) -> str:
    """A UID element's text straight from its raw bytes: pydicom's conversion (a
    DataElement and a UID object per read) cost more than the rest of the header read."""
    try:
        elem = ds.get_item(tag)
    except Exception:
        return ""
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return _text(value)


def _number(ds: Dataset, tag: int) -> int | None:
    """An IS element (SeriesNumber, InstanceNumber: a hold's send order) as an int, or
    None when absent, empty or not a whole number (such instances are sent last)."""
    text = _uid(ds, tag)
    try:
        return int(text.split("\\", 1)[0]) if text else None
    except ValueError:
        return None


class Ingest(StoreHandler):
    """One per router. ``config`` is a callable so a reload swaps rules atomically:
    each instance is routed with the config current when its data set completed."""

    def __init__(
        self,
        config: Callable[[], Config],
        queue: QueueBackend,
        metrics: Metrics,
        free_bytes: Callable[[], int],
    ) -> None:
        self._config = config
        self._queue = queue
        self._metrics = metrics
        self._free_bytes = free_bytes

    # -- association-level hooks: metrics only. The acceptor owns the association's
    # lifecycle and logs each of its events (association_opened, association_rejected,
    # association_closed, protocol_error, ...) once; this module logs instances.

    def association_opened(self, info: AssociationInfo) -> None:
        self._metrics.association_opened("in")

    def association_closed(self, info: AssociationInfo, how: str) -> None:
        self._metrics.association_closed("in", how)

    def association_rejected(self, reason: Rejection) -> None:
        self._metrics.association_rejected(reason.cause)

    def protocol_error(self, kind: str) -> None:
        self._metrics.protocol_error(kind)

    def check_association(self, info: AssociationInfo) -> Rejection | None:
        accept = self._config().accept
        if accept.hosts and not accept.host_allowed(info.calling_ae, info.peer_host):
            return Rejection.host_not_allowed()
        return None

    # -- C-STORE

    def open_store(self, info: AssociationInfo, req: StoreRequest) -> GuardedSink:
        cfg = self._config()
        for what, uid in (
            ("SOP Instance UID", req.sop_instance_uid),
            ("SOP Class UID", req.sop_class_uid),
        ):
            if not valid_uid(uid):
                logs.event(
                    log,
                    logging.WARNING,
                    "store_rejected",
                    assoc=info.id,
                    reason="invalid_uid",
                    element=what,
                    value=repr(uid[:80]),
                )
                self._metrics.store_response(Status.CANNOT_UNDERSTAND)
                raise StoreRefused(Status.CANNOT_UNDERSTAND, f"invalid {what}")
        if self._free_bytes() < cfg.storage.min_free_bytes:
            self._refuse(info, req, "storage_low")
        if self._queue.is_full():
            self._refuse(info, req, "queue_full")
        return GuardedSink(
            self._queue.new_sink(req),
            self._free_bytes,
            cfg.storage.min_free_bytes,
            digest=cfg.duplicates == "drop_identical",
        )

    def _refuse(self, info: AssociationInfo, req: StoreRequest, reason: str) -> NoReturn:
        """Answer A700 (out of resources) without storing: the data set is discarded."""
        logs.event(
            log,
            logging.ERROR,
            "store_refused",
            assoc=info.id,
            reason=reason,
            sop_instance_uid=req.sop_instance_uid,
        )
        self._metrics.store_response(Status.OUT_OF_RESOURCES)
        raise StoreRefused(Status.OUT_OF_RESOURCES)

    async def finish_store(self, info: AssociationInfo, req: StoreRequest, sink: Any) -> int:
        assert isinstance(sink, GuardedSink)
        status = await self._finish(info, req, sink)
        self._metrics.store_response(status)
        return status

    def store_answered(self, info: AssociationInfo, req: StoreRequest, sink: Any) -> None:
        """The ``stored`` line, once the peer has its response (the metrics are counted
        before it, so a scrape after the Success sees them)."""
        assert isinstance(sink, GuardedSink)
        done = sink.outcome
        if done is None:
            return
        sink.outcome = None
        result = done.result
        if result.dropped:
            logs.event(
                log,
                logging.INFO,
                "duplicate_dropped",
                assoc=info.id,
                instance=result.id,
                sop_instance_uid=req.sop_instance_uid,
                destinations=",".join(result.dropped),
            )
        if result.stored:
            logs.event(
                log,
                logging.INFO,
                "stored",
                assoc=info.id,
                instance=result.id,
                sop_instance_uid=req.sop_instance_uid,
                size=done.size,
                destinations=",".join(result.queued) or "-",
            )

    async def _finish(self, info: AssociationInfo, req: StoreRequest, guarded: GuardedSink) -> int:
        sink = guarded.inner
        if guarded.error is not None:
            return _store_failed(info, req, guarded.error)
        cfg = self._config()
        if self._free_bytes() < cfg.storage.min_free_bytes:  # it fell during receipt
            return _discard(sink, info, req, Status.OUT_OF_RESOURCES, "storage_low")
        tags = wanted_tags(INGEST_TAGS | cfg.rules.tags)
        try:
            if sink.size > _THREAD_HEADER_ABOVE:
                ds = await anyio.to_thread.run_sync(read_header, sink, req.transfer_syntax, tags)
            else:
                ds = read_header(sink, req.transfer_syntax, tags)
        except Exception as e:  # pydicom raises many kinds on hostile bytes
            return _discard(
                sink, info, req, Status.CANNOT_UNDERSTAND, "undecodable", error=type(e).__name__
            )
        ds_uid = _uid(ds, _SOP_INSTANCE_UID)
        if ds_uid != req.sop_instance_uid:
            return _discard(
                sink,
                info,
                req,
                Status.DATASET_MISMATCH,
                "sop_instance_uid_mismatch",
                dataset_uid=ds_uid,
            )
        ds_class = _uid(ds, _SOP_CLASS_UID)
        if ds_class != req.sop_class_uid:
            return _discard(
                sink,
                info,
                req,
                Status.DATASET_MISMATCH,
                "sop_class_uid_mismatch",
                sop_class_uid=req.sop_class_uid,
                dataset_sop_class_uid=ds_class,
            )
        route = cfg.rules.route(ds, info.calling_ae, info.called_ae)
        record = InstanceRecord(
            sop_class_uid=req.sop_class_uid,
            sop_instance_uid=req.sop_instance_uid,
            transfer_syntax=req.transfer_syntax,
            study_instance_uid=_uid(ds, _STUDY_INSTANCE_UID) or None,
            series_instance_uid=_uid(ds, _SERIES_INSTANCE_UID) or None,
            series_number=_number(ds, _SERIES_NUMBER),
            instance_number=_number(ds, _INSTANCE_NUMBER),
            calling_ae=info.calling_ae,
            called_ae=info.called_ae,
            received_at=time.time(),
            digest=guarded.digest.hexdigest() if guarded.digest is not None else None,
        )
        try:
            result = await self._queue.commit(record, sink, route.destinations)
        except QueueClosed:
            sink.abort()
            return Status.OUT_OF_RESOURCES
        except QueueUnavailable as e:
            # not committed (or not known to be): never Success; the sender retries
            sink.abort()
            return _store_failed(info, req, e)
        except OSError as e:
            sink.abort()
            return _store_failed(info, req, e)
        size = sink.size - sink.data_offset
        self._metrics.instance_received(size)
        if result.stored:
            for m in route.matches:
                self._metrics.rule_matched(m.name)
            if not route.destinations:
                self._metrics.unrouted_instances_total.inc()
        guarded.outcome = _Stored(result, size)
        return Status.SUCCESS


# Transfer syntaxes whose data set pydicom can read straight from the bytes; deflated
# (and anything unknown) goes through dcmread, which inflates.
_ENCODINGS = {
    uids.IMPLICIT_VR_LE: (True, True),
    uids.EXPLICIT_VR_BE: (False, False),  # retired
}
_DEFLATED = frozenset({uids.DEFLATED_EXPLICIT_VR_LE, uids.JPIP_REFERENCED_DEFLATE})


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag == 0x7FE00010)


def read_header(
    sink: SpooledSink, transfer_syntax: str, tags: frozenset[int] | None = None
) -> Dataset:
    """The data set without pixel data. The sink's file meta is our own, so reading
    starts at the data set with the negotiated encoding (twice as fast as dcmread).
    Raises when the data set is truncated or its element structure is broken (pydicom
    alone silently returns what it could read of a truncated one). With ``tags`` (from
    :func:`router.header.wanted_tags`), a little endian data set may come back with
    only those of its elements (router/header.py): enough for whoever reads only them."""
    with sink.open_for_header() as fp:
        if transfer_syntax in _DEFLATED:
            return dcmread(fp, stop_before_pixels=True)
        implicit, little = _ENCODINGS.get(transfer_syntax, (False, True))
        if tags is not None and little:
            ds = scan_header(fp, sink.data_offset, sink.size, implicit=implicit, wanted=tags)
            if ds is not None:
                return ds
        check_structure(fp, sink.data_offset, sink.size, implicit=implicit, little=little)
        fp.seek(sink.data_offset)
        ds = read_dataset(
            fp, is_implicit_VR=implicit, is_little_endian=little, stop_when=_stop_at_pixels
        )
        if not ds:
            raise InvalidDicomError("empty data set")
        return ds


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def valid_uid(uid: str) -> bool:
    """A UID as PS3.5 9.1 allows it: digits and dots, at most 64 characters (leading
    zeros in a component are tolerated: senders get them wrong and they are harmless)."""
    return 0 < len(uid) <= 64 and _UID.fullmatch(uid) is not None

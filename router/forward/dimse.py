"""The DIMSE C-STORE destination kind: one association per session, proposing exactly
the presentation contexts the batch needs, each data set streamed from the spool as
received (no decoding) unless the destination takes none of the syntaxes it came in, or
the destination has a profile (then a rewritten header around the stored pixel data:
:mod:`router.forward.profiled`).

Implements :mod:`router.forward.kind`; everything about what an answer means (retry,
breaker, dead letter) is the forwarder's.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from router import syntaxes
from router.dicom import (
    Association,
    AssociationRejected,
    ConnectError,
    DicomError,
    DicomTimeout,
    NoPresentationContext,
    SourceError,
    StoreResponse,
    associate,
)
from router.dicom.uids import IMPLICIT_VR_LE, VERIFICATION
from router.forward.kind import (
    Answered,
    Conversion,
    Echo,
    ProfileApplied,
    SendResult,
    Session,
    TransportError,
    Unsendable,
)
from router.forward.outcome import TransportFailure
from router.forward.profiled import (
    Profiled,
    Refused,
    SendProfile,
    as_part10,
    rewrite_lease,
    rewrite_source,
)
from router.store.queue import Lease
from router.transcode import Transcoded, TranscodeError, transcode

__all__ = ["Connection", "DimseKind", "Transcoder", "contexts_for", "transport_failure"]

MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to associate; built from the config by
    :func:`router.forward.destination.connection`."""

    host: str
    port: int
    calling_ae: str
    called_ae: str
    max_pdu_length: int
    connect_timeout: float
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    ssl_context: ssl.SSLContext | None = None

    def associate(
        self, contexts: Sequence[tuple[str, Sequence[str]]]
    ) -> AbstractAsyncContextManager[Association]:
        return associate(
            self.host,
            self.port,
            calling_ae=self.calling_ae,
            called_ae=self.called_ae,
            contexts=contexts,
            max_pdu_length=self.max_pdu_length,
            connect_timeout=self.connect_timeout,
            acse_timeout=self.acse_timeout,
            dimse_timeout=self.dimse_timeout,
            network_timeout=self.network_timeout,
            ssl_context=self.ssl_context,
        )


def transport_failure(exc: BaseException) -> TransportFailure:
    """The network layer's exception as the pure layer's failure kind."""
    if isinstance(exc, AssociationRejected):
        return (
            TransportFailure.REJECTED_TRANSIENT
            if exc.transient
            else TransportFailure.REJECTED_PERMANENT
        )
    if isinstance(exc, ConnectError | OSError):
        return TransportFailure.CONNECT_REFUSED
    if isinstance(exc, DicomTimeout | TimeoutError):
        return TransportFailure.TIMEOUT
    if isinstance(exc, NoPresentationContext):
        return TransportFailure.NO_CONTEXT
    return TransportFailure.ABORTED


def _error(exc: DicomError | OSError) -> TransportError:
    return TransportError(transport_failure(exc), str(exc) or type(exc).__name__)


class Transcoder:
    """Converts instances off the event loop, bounded in concurrency and memory; shared
    by every destination (conversions are CPU-heavy)."""

    def __init__(
        self, tmp_dir: Path, *, max_concurrent: int = 1, max_decoded_bytes: int = 512 << 20
    ) -> None:
        self.tmp_dir = tmp_dir
        self.max_decoded_bytes = max_decoded_bytes
        self._limiter = anyio.CapacityLimiter(max_concurrent)

    def configure(self, max_concurrent: int, max_decoded_bytes: int) -> None:
        self._limiter.total_tokens = max_concurrent
        self.max_decoded_bytes = max_decoded_bytes

    async def convert(self, lease: Lease, target: str) -> Transcoded:
        """The instance converted to ``target`` in a temp file; raises TranscodeError."""
        return await anyio.to_thread.run_sync(
            functools.partial(
                transcode,
                lease.source,
                lease.transfer_syntax,
                target,
                data_offset=lease.data_offset,
                tmp_dir=self.tmp_dir,
                max_decoded_bytes=self.max_decoded_bytes,
            ),
            limiter=self._limiter,
        )


def contexts_for(leases: Sequence[Lease], transcode_to: str | None) -> list[tuple[str, list[str]]]:
    """For each (SOP class, received syntax) of the batch, one presentation context per
    syntax we could send it in (the original first, then the lossless fallbacks), so the
    destination's choice never forces a conversion it did not need; bounded by PS3.8's
    128 (leases beyond wait for the next association)."""
    seen: dict[tuple[str, str], None] = {}
    for lease in leases:
        seen.setdefault((lease.sop_class_uid, lease.transfer_syntax), None)
    out: list[tuple[str, list[str]]] = []
    for sop, ts in seen:
        more = syntaxes.contexts(sop, ts, transcode_to=transcode_to)
        if len(out) + len(more) > MAX_CONTEXTS:
            break
        out = syntaxes.merge_contexts([out, more])
    return out


class DimseSession:
    """One open association (a :class:`router.forward.kind.Session`)."""

    def __init__(
        self,
        assoc: Association,
        contexts: Sequence[tuple[str, Sequence[str]]],
        called_ae: str,
        transcode_to: str | None,
        transcoder: Transcoder | None,
        profile: SendProfile | None = None,
    ) -> None:
        self._assoc = assoc
        self._fitting = {(sop, ts) for sop, tss in contexts for ts in tss}
        self._called_ae = called_ae
        self._transcode_to = transcode_to
        self._transcoder = transcoder
        self._profile = profile
        # (SOP class, received syntax) -> the syntax to send in (None: none accepted);
        # the association's contexts never change, so planned once per pair
        self._targets: dict[tuple[str, str], str | None] = {}

    def fits(self, lease: Lease) -> bool:
        return (lease.sop_class_uid, lease.transfer_syntax) in self._fitting

    def _target(self, lease: Lease) -> str | None:
        key = (lease.sop_class_uid, lease.transfer_syntax)
        try:
            return self._targets[key]
        except KeyError:
            accepted = self._assoc.accepted_transfer_syntaxes(lease.sop_class_uid)
            target = syntaxes.plan(lease.transfer_syntax, accepted, transcode_to=self._transcode_to)
            self._targets[key] = target
            return target

    async def send(self, lease: Lease, ahead: Sequence[Lease]) -> SendResult:
        target = self._target(lease)
        if target is None:
            accepted = self._assoc.accepted_transfer_syntaxes(lease.sop_class_uid)
            reason = syntaxes.refusal(lease.transfer_syntax, accepted)
            return Unsendable(f"{self._called_ae}: {reason}")
        try:
            if target != lease.transfer_syntax:
                return await self._store_converted(lease, target)
            if self._profile is not None:
                return await self._store_profiled(lease, self._profile)
            return _answered(await self._store_as_received(lease))
        except SourceError as e:
            # the stored data is shorter than its row says: no retry can send it whole
            return Unsendable(f"stored data damaged: {e}")
        except (DicomError, OSError) as e:
            raise _error(e) from e

    async def _store_as_received(self, lease: Lease) -> StoreResponse:
        return await self._assoc.c_store(
            lease.sop_class_uid,
            lease.sop_instance_uid,
            lease.transfer_syntax,
            lease.source,
            offset=lease.data_offset,
            length=lease.length,
        )

    async def _store_profiled(self, lease: Lease, profile: SendProfile) -> SendResult:
        """The profile's copy: a rewritten header around the stored pixel data."""
        try:
            rewritten = await rewrite_lease(profile, lease)
        except Refused as e:
            return Unsendable(str(e))
        return await self._send_profiled(lease, profile, rewritten)

    async def _send_profiled(
        self,
        lease: Lease,
        profile: SendProfile,
        p: Profiled,
        conversion: Conversion | None = None,
    ) -> SendResult:
        resp = await self._assoc.c_store(
            lease.sop_class_uid, p.sop_instance_uid, p.transfer_syntax, p.segments
        )
        applied = ProfileApplied(profile.name, profile.deidentifies, p.sop_instance_uid)
        return _answered(resp, conversion, applied)

    async def _store_converted(self, lease: Lease, target: str) -> SendResult:
        if self._transcoder is None:
            return Unsendable("no converter available", conversion_failed=True)
        try:
            converted = await self._transcoder.convert(lease, target)
        except TranscodeError as e:
            return Unsendable(
                f"cannot convert {syntaxes.name(lease.transfer_syntax)} to "
                f"{syntaxes.name(target)}: {e.reason}",
                conversion_failed=True,
            )
        conv = Conversion(lease.transfer_syntax, converted.transfer_syntax, converted.changes)
        try:
            if self._profile is not None:
                return await self._store_converted_profiled(lease, self._profile, converted, conv)
            resp = await self._assoc.c_store(
                lease.sop_class_uid,
                lease.sop_instance_uid,
                converted.transfer_syntax,
                converted.path,
            )
        finally:
            converted.discard()
        return _answered(resp, conv)

    async def _store_converted_profiled(
        self, lease: Lease, profile: SendProfile, converted: Transcoded, conv: Conversion
    ) -> SendResult:
        """Convert first, then rewrite the converted copy (docs/deidentification.md)."""
        part10 = await anyio.to_thread.run_sync(
            as_part10,
            converted.path,
            lease.sop_class_uid,
            lease.sop_instance_uid,
            converted.transfer_syntax,
        )
        try:
            try:
                rewritten = await anyio.to_thread.run_sync(rewrite_source, profile, part10)
            except Refused as e:
                return Unsendable(str(e))
            return await self._send_profiled(lease, profile, rewritten, conv)
        finally:
            part10.unlink(missing_ok=True)


def _answered(
    resp: StoreResponse,
    conversion: Conversion | None = None,
    profile: ProfileApplied | None = None,
) -> Answered:
    return Answered(resp.status, resp.error_comment, conversion, profile)


class DimseKind:
    """A C-STORE SCP as a :class:`router.forward.kind.Kind`."""

    def __init__(
        self,
        connection: Connection,
        *,
        transcode_to: str | None = None,
        transcoder: Transcoder | None = None,
        profile: SendProfile | None = None,
    ) -> None:
        self.connection = connection
        self.transcode_to = transcode_to
        self.transcoder = transcoder
        self.profile = profile

    def open(self, leases: Sequence[Lease]) -> AbstractAsyncContextManager[Session]:
        return self._open(leases)

    @asynccontextmanager
    async def _open(self, leases: Sequence[Lease]) -> AsyncIterator[Session]:
        contexts = contexts_for(leases, self.transcode_to)
        try:
            async with self.connection.associate(contexts) as assoc:
                yield DimseSession(
                    assoc,
                    contexts,
                    self.connection.called_ae,
                    self.transcode_to,
                    self.transcoder,
                    self.profile,
                )
        except (DicomError, OSError) as e:
            raise _error(e) from e

    async def echo(self) -> Echo:
        try:
            async with self.connection.associate([(VERIFICATION, [IMPLICIT_VR_LE])]) as assoc:
                status = await assoc.c_echo()
        except (DicomError, OSError) as e:
            raise _error(e) from e
        return Echo(status == 0, f"status {status:04x}")

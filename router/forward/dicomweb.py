"""The DICOMweb (STOW-RS) destination kind: each request is one multipart/related POST of
up to ``max_instances_per_request`` instances of one study, each its Part-10 file as
received, streamed from the spool.

Implements :mod:`router.forward.kind`. A session is one HTTP client with one keep-alive
connection, so ``max_associations`` sessions are that many requests in parallel. HTTP
has no association to open: entering a session sends the batch's first request, because
that is where a destination that is down, or refuses our credentials, shows; the
forwarder then retries the whole batch with backoff as it does for an association that
cannot be opened. Each request's per-instance results are remembered and answer the
:meth:`DicomWebSession.send` calls of the instances it carried.

With a profile, each part is the profile's copy (:mod:`router.forward.profiled`: a
rewritten file meta and header around the stored pixel data, converted first when a
conversion is needed) under its new SOP Instance UID, which is what the response names.

What each outcome becomes (the README's "DICOMweb destinations" says it for operators):

- referenced: 0x0000; with a WarningReason: that warning status;
- a FailureReason: that status (classified like a C-STORE status by the forwarder);
- a refused transfer syntax (FailureReason 0xC122 or 0x0122, HTTP 415): converted
  losslessly (``transcode_to``, else Explicit VR Little Endian) and sent again at once,
  alone; the conversion is logged and counted like a DIMSE one;
- HTTP 5xx, 429, 408, 401, 403, connection errors and timeouts (the request failed as
  a whole): :class:`TransportError`, retried with backoff, counted by the breaker;
- 400, 404, 413 without per-instance results: 0xC000 (dead letter) with the HTTP status
  and the response's text; any other result without a status: 0xA700 (retried).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from router import syntaxes
from router.config import ClientTLS, DicomWeb
from router.forward.dimse import Transcoder
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
from router.forward.outcome import Outcome, TransportFailure
from router.forward.profiled import (
    Profiled,
    Refused,
    SendProfile,
    as_part10,
    rewrite_lease,
    rewrite_source,
)
from router.forward.stow import (
    BasicAuth,
    BearerAuth,
    InstanceResult,
    Part,
    StowClient,
    StowConfig,
    StowConfigError,
    StowOutcome,
    part_of,
    part_of_segments,
)
from router.store.queue import Lease
from router.store.spool import part10_header
from router.tls import client_context
from router.transcode import TranscodeError

__all__ = ["DicomWebKind", "DicomWebSession", "stow_config"]

#: the statuses a result without one is answered with (classified by the forwarder)
RETRY_STATUS = 0xA700  # out of resources: retried
DEAD_LETTER_STATUS = 0xC000  # cannot understand: dead letter
WARNING_STATUS = 0x0001  # a warning without its reason
#: an HTTP status that refused the request as a whole: our credentials (like an
#: association rejected for our AE title), else the destination being busy or down
_REFUSED_CREDENTIALS = frozenset({401, 403})


def stow_config(web: DicomWeb) -> StowConfig:
    """A destination's ``dicomweb`` section as the client's settings; one connection per
    client (a session holds one client)."""
    auth: BearerAuth | BasicAuth | None = None
    if web.auth is not None:
        if web.auth.bearer_token_file is not None:
            auth = BearerAuth(web.auth.bearer_token_file)
        elif web.auth.username is not None and web.auth.password_file is not None:
            auth = BasicAuth(web.auth.username, web.auth.password_file)
    return StowConfig(
        url=web.url,
        auth=auth,
        tls=web.tls,
        timeout=web.timeout,
        max_instances_per_request=web.max_instances_per_request,
        max_connections=1,
    )


def _failure(out: StowOutcome) -> TransportFailure:
    if out.failure is not None:
        return out.failure
    if out.http_status in _REFUSED_CREDENTIALS:
        return TransportFailure.REJECTED_PERMANENT
    return TransportFailure.REJECTED_TRANSIENT


def _status(result: InstanceResult) -> int:
    """The C-STORE status an instance's result is answered with."""
    if result.outcome is Outcome.DELIVERED:
        return 0x0000
    if result.status is not None:
        return result.status
    if result.outcome is Outcome.WARNING:
        return WARNING_STATUS
    if result.outcome is Outcome.PERMANENT:
        return DEAD_LETTER_STATUS
    return RETRY_STATUS


@dataclass
class _Copy:
    """What goes in the request for one lease: its part, how it was made, and the
    temporary files to remove once the request is done."""

    part: Part
    conversion: Conversion | None = None
    profile: ProfileApplied | None = None
    temporary: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        for path in self.temporary:
            path.unlink(missing_ok=True)


class DicomWebSession:
    """One HTTP client on one connection (a :class:`router.forward.kind.Session`)."""

    def __init__(
        self,
        client: StowClient,
        max_per_request: int,
        transcode_to: str | None,
        transcoder: Transcoder | None,
        profile: SendProfile | None = None,
    ) -> None:
        self._client = client
        self._max = max_per_request
        self._transcode_to = transcode_to
        self._transcoder = transcoder
        self._profile = profile
        # delivery id -> its result from a request already made, and what was sent
        self._answers: dict[int, tuple[InstanceResult, _Copy]] = {}
        self._unsendable: dict[int, Unsendable] = {}
        self.requests = 0

    def fits(self, lease: Lease) -> bool:
        """Every lease fits: nothing is negotiated, and each request is cut to one study
        by :meth:`send` itself."""
        return True

    async def send(self, lease: Lease, ahead: Sequence[Lease]) -> SendResult:
        if lease.delivery_id not in self._answers and lease.delivery_id not in self._unsendable:
            await self.request(lease, ahead)
        unsendable = self._unsendable.pop(lease.delivery_id, None)
        if unsendable is not None:
            return unsendable
        result, copy = self._answers.pop(lease.delivery_id)
        if result.syntax_refused and copy.conversion is None:
            return await self._send_converted(lease, result)
        return Answered(_status(result), result.reason, copy.conversion, copy.profile)

    def _pending(self, lease: Lease) -> bool:
        return lease.delivery_id not in self._answers and lease.delivery_id not in self._unsendable

    def together(self, lease: Lease, ahead: Sequence[Lease]) -> list[Lease]:
        """``lease`` and the leases ahead that go in its request: same study, not sent
        yet, at most ``max_instances_per_request``; alone when its study is unknown."""
        group = [lease]
        if not lease.study_uid:
            return group
        for other in ahead:
            if len(group) >= self._max:
                break
            if other.study_uid == lease.study_uid and self._pending(other):
                group.append(other)
        return group

    async def request(self, lease: Lease, ahead: Sequence[Lease]) -> None:
        """POST ``lease`` with the leases ahead that go with it and remember each one's
        result (or why its copy could not be made). Raises TransportError when the
        request failed as a whole."""
        copies: list[tuple[Lease, _Copy]] = []
        try:
            for item in self.together(lease, ahead):
                copy = await self._copy(item, self._preferred(item))
                if isinstance(copy, Unsendable):
                    self._unsendable[item.delivery_id] = copy
                else:
                    copies.append((item, copy))
            if not copies:
                return
            out = await self._store([c.part for _, c in copies])
        finally:
            for _, c in copies:
                c.discard()
        for (item, copy), result in zip(copies, out.results, strict=True):
            self._answers[item.delivery_id] = (result, copy)

    async def _store(self, parts: Sequence[Part]) -> StowOutcome:
        out = await self._client.store(parts)
        self.requests += 1
        if out.destination_down:
            raise TransportError(_failure(out), out.reason)
        return out

    def _preferred(self, lease: Lease) -> str | None:
        """The syntax ``transcode_to`` asks this instance to be sent in, when it is not
        that already and can be converted; None: as received."""
        to = self._transcode_to
        if to is None or to == lease.transfer_syntax:
            return None
        target = syntaxes.plan(lease.transfer_syntax, {to, lease.transfer_syntax}, transcode_to=to)
        return target if target != lease.transfer_syntax else None

    async def _copy(self, lease: Lease, target: str | None) -> _Copy | Unsendable:
        """The part to send for ``lease``: as received, converted to ``target``, and/or
        rewritten by the destination's profile (convert first, then rewrite)."""
        if target is None:
            if self._profile is None:
                return _Copy(part_of(lease))
            try:
                rewritten = await rewrite_lease(self._profile, lease)
            except Refused as e:
                return Unsendable(str(e))
            return self._profiled(rewritten, None)
        if self._transcoder is None:
            return Unsendable("no converter available", conversion_failed=True)
        try:
            out = await self._transcoder.convert(lease, target)
        except TranscodeError as e:
            return Unsendable(
                f"cannot convert {syntaxes.name(lease.transfer_syntax)} to "
                f"{syntaxes.name(target)}: {e.reason}",
                conversion_failed=True,
            )
        conversion = Conversion(lease.transfer_syntax, out.transfer_syntax, out.changes)
        if self._profile is None:
            header = part10_header(lease.sop_class_uid, lease.sop_instance_uid, target)
            part = Part(lease.sop_instance_uid, out.path, 0, out.length, header=header)
            return _Copy(part, conversion, temporary=[out.path])
        try:
            part10 = await anyio.to_thread.run_sync(
                as_part10, out.path, lease.sop_class_uid, lease.sop_instance_uid, target
            )
        finally:
            out.discard()
        try:
            rewritten = await anyio.to_thread.run_sync(rewrite_source, self._profile, part10)
        except Refused as e:
            part10.unlink(missing_ok=True)
            return Unsendable(str(e))
        copy = self._profiled(rewritten, conversion)
        copy.temporary.append(part10)
        return copy

    def _profiled(self, rewritten: Profiled, conversion: Conversion | None) -> _Copy:
        assert self._profile is not None
        applied = ProfileApplied(
            self._profile.name, self._profile.deidentifies, rewritten.sop_instance_uid
        )
        part = part_of_segments(rewritten.sop_instance_uid, rewritten.part10)
        return _Copy(part, conversion, applied)

    async def _send_converted(self, lease: Lease, refused: InstanceResult) -> SendResult:
        """The destination refused the syntax: a lossless copy, sent alone now."""
        choices = [ts for ts in syntaxes.TARGET_ORDER if ts != lease.transfer_syntax]
        found = syntaxes.candidates(lease.transfer_syntax, choices, transcode_to=self._transcode_to)
        if not found:
            return Unsendable(
                f"{refused.reason}; no installed decoder converts from "
                f"{syntaxes.name(lease.transfer_syntax)}",
                conversion_failed=True,
            )
        copy = await self._copy(lease, found[0])
        if isinstance(copy, Unsendable):
            return Unsendable(f"{refused.reason}; {copy.reason}", copy.conversion_failed)
        try:
            out = await self._store([copy.part])
        finally:
            copy.discard()
        (result,) = out.results
        return Answered(_status(result), result.reason, copy.conversion, copy.profile)


class DicomWebKind:
    """A DICOMweb server as a :class:`router.forward.kind.Kind`."""

    def __init__(
        self,
        config: StowConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transcode_to: str | None = None,
        transcoder: Transcoder | None = None,
        profile: SendProfile | None = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.transcode_to = transcode_to
        self.transcoder = transcoder
        self.profile = profile

    @classmethod
    def from_config(
        cls,
        web: DicomWeb,
        *,
        transcode_to: str | None,
        transcoder: Transcoder | None,
        profile: SendProfile | None = None,
    ) -> DicomWebKind:
        """Built once per config: the TLS context is made here (files read once)."""
        context = None
        if web.url.startswith("https:"):
            context = client_context(web.tls or ClientTLS())
        return cls(
            stow_config(web),
            ssl_context=context,
            transcode_to=transcode_to,
            transcoder=transcoder,
            profile=profile,
        )

    def _client(self) -> StowClient:
        try:
            return StowClient(self.config, ssl_context=self.ssl_context)
        except StowConfigError as e:  # a secret file gone or emptied since the check
            raise TransportError(TransportFailure.REJECTED_PERMANENT, str(e)) from e

    def open(self, leases: Sequence[Lease]) -> AbstractAsyncContextManager[Session]:
        return self._open(leases)

    @asynccontextmanager
    async def _open(self, leases: Sequence[Lease]) -> AsyncIterator[Session]:
        async with self._client() as client:
            session = DicomWebSession(
                client,
                self.config.max_instances_per_request,
                self.transcode_to,
                self.transcoder,
                self.profile,
            )
            if leases:
                await session.request(leases[0], leases[1:])
            yield session

    async def echo(self) -> Echo:
        """``GET {url}/studies?limit=1``."""
        async with self._client() as client:
            result = await client.echo()
        if result.http_status is None:
            raise TransportError(TransportFailure.CONNECT_REFUSED, result.reason)
        return Echo(result.ok, result.reason)

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
from dataclasses import dataclass

from router import syntaxes
from router.config import ClientTLS, DicomWeb
from router.forward.dimse import Transcoder
from router.forward.kind import (
    Answered,
    Conversion,
    Echo,
    SendResult,
    Session,
    TransportError,
    Unsendable,
)
from router.forward.outcome import Outcome, TransportFailure
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
)
from router.store.queue import Lease
from router.store.spool import part10_header
from router.tls import client_context
from router.transcode import Transcoded, TranscodeError

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


@dataclass(frozen=True, slots=True)
class _Converted:
    """A converted copy being sent: its part and what was done."""

    part: Part
    conversion: Conversion
    file: Transcoded


class DicomWebSession:
    """One HTTP client on one connection (a :class:`router.forward.kind.Session`)."""

    def __init__(
        self,
        client: StowClient,
        max_per_request: int,
        transcode_to: str | None,
        transcoder: Transcoder | None,
    ) -> None:
        self._client = client
        self._max = max_per_request
        self._transcode_to = transcode_to
        self._transcoder = transcoder
        # delivery id -> its result from a request already made, and the conversion sent
        self._answers: dict[int, tuple[InstanceResult, Conversion | None]] = {}
        self._unsendable: dict[int, Unsendable] = {}
        self.requests = 0

    def fits(self, lease: Lease) -> bool:
        """Every lease fits: nothing is negotiated, and each request is cut to one study
        by :meth:`send` itself."""
        return True

    async def send(self, lease: Lease, ahead: Sequence[Lease]) -> SendResult:
        unsendable = self._unsendable.pop(lease.delivery_id, None)
        if unsendable is not None:
            return unsendable
        answer = self._answers.pop(lease.delivery_id, None)
        if answer is None:
            await self.request(lease, ahead)
            unsendable = self._unsendable.pop(lease.delivery_id, None)
            if unsendable is not None:
                return unsendable
            answer = self._answers.pop(lease.delivery_id)
        result, conversion = answer
        if result.syntax_refused and conversion is None:
            return await self._send_converted(lease, result)
        return Answered(_status(result), result.reason, conversion)

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
        result (or why it could not be converted for ``transcode_to``). Raises
        TransportError when the request failed as a whole."""
        parts: list[Part] = []
        sent: list[Lease] = []
        converted: dict[int, _Converted] = {}
        try:
            for item in self.together(lease, ahead):
                target = self._preferred(item)
                if target is None:
                    parts.append(part_of(item))
                    sent.append(item)
                    continue
                done = await self._convert(item, target)
                if isinstance(done, Unsendable):
                    self._unsendable[item.delivery_id] = done
                    continue
                converted[item.delivery_id] = done
                parts.append(done.part)
                sent.append(item)
            if not parts:
                return
            out = await self._store(parts)
        finally:
            for c in converted.values():
                c.file.discard()
        for item, result in zip(sent, out.results, strict=True):
            copy = converted.get(item.delivery_id)
            self._answers[item.delivery_id] = (result, copy.conversion if copy else None)

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

    async def _convert(self, lease: Lease, target: str) -> _Converted | Unsendable:
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
        header = part10_header(lease.sop_class_uid, lease.sop_instance_uid, out.transfer_syntax)
        part = Part(lease.sop_instance_uid, out.path, 0, out.length, header=header)
        conversion = Conversion(lease.transfer_syntax, out.transfer_syntax, out.changes)
        return _Converted(part, conversion, out)

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
        done = await self._convert(lease, found[0])
        if isinstance(done, Unsendable):
            return Unsendable(f"{refused.reason}; {done.reason}", conversion_failed=True)
        try:
            out = await self._store([done.part])
        finally:
            done.file.discard()
        (result,) = out.results
        return Answered(_status(result), result.reason, done.conversion)


class DicomWebKind:
    """A DICOMweb server as a :class:`router.forward.kind.Kind`."""

    def __init__(
        self,
        config: StowConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transcode_to: str | None = None,
        transcoder: Transcoder | None = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.transcode_to = transcode_to
        self.transcoder = transcoder

    @classmethod
    def from_config(
        cls, web: DicomWeb, *, transcode_to: str | None, transcoder: Transcoder | None
    ) -> DicomWebKind:
        """Built once per config: the TLS context is made here (files read once)."""
        context = None
        if web.url.startswith("https:"):
            context = client_context(web.tls or ClientTLS())
        return cls(
            stow_config(web), ssl_context=context, transcode_to=transcode_to, transcoder=transcoder
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
                client, self.config.max_instances_per_request, self.transcode_to, self.transcoder
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

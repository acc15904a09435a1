"""The requestor (SCU): a thin anyio adapter over the sans-I/O core.

    async with associate(host, port, calling_ae="ROUTER", called_ae="PACS",
                         contexts=[(CTImageStorage, [ExplicitVRLittleEndian])]) as assoc:
        rsp = await assoc.c_store(sop_class, sop_instance, ts, Path("x.dcm"), offset=...)

`associate(...)` may also be awaited (`assoc = await associate(...)`); the
Association is itself an async context manager (release on normal exit, abort on
exception).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.streams.tls import TLSStream

from router.dicom import dimse
from router.dicom._stream import PduStream, PeerClosed
from router.dicom._stream import kv as _kv
from router.dicom.association import (
    Action,
    Machine,
    State,
    requestor_contexts,
    requestor_results,
)
from router.dicom.dimse import PDataReader, StoreResponse
from router.dicom.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectError,
    DicomError,
    DicomTimeout,
    NoPresentationContext,
    ProtocolError,
    SourceError,
)
from router.dicom.framing import PDataFramer, SlotWriter, copy_into, read_into
from router.dicom.pdu import (
    COMMAND,
    DEFAULT_MAX_PDU,
    MAX_ASSOCIATE_PDU,
    RELEASE_RP,
    RELEASE_RQ,
    UNLIMITED_SEND_PDU,
    decode_abort,
    decode_associate_ac,
    decode_associate_rj,
    encode_abort,
    encode_associate_rq,
    pdata_pdus,
)
from router.dicom.uids import VERIFICATION

log = logging.getLogger("router.dicom.requestor")

#: a piece of a data set sent by :meth:`Association.c_store`: bytes, or a file range
Segment = bytes | bytearray | memoryview | tuple[Path, int, int]


class ConnectTimeout(ConnectError, DicomTimeout):
    """The TCP connect (or TLS handshake) did not complete in time."""


class Association:
    """An established association (requestor side). Not safe for concurrent use:
    one DIMSE operation at a time."""

    def __init__(
        self,
        ps: PduStream,
        contexts: dict[int, tuple[str, str]],
        peer_max_pdu: int,
        our_max_pdu: int,
        dimse_timeout: float | None,
        acse_timeout: float | None,
        label: str,
    ) -> None:
        self._ps = ps
        self._contexts = contexts
        self._by_key = {v: k for k, v in contexts.items()}
        self._peer_max = peer_max_pdu or UNLIMITED_SEND_PDU
        self._our_max = our_max_pdu
        self._dimse_timeout = dimse_timeout
        self._acse_timeout = acse_timeout
        self._machine = Machine(State.ESTABLISHED)
        self._reader = PDataReader(frozenset(contexts))
        self._message_id = 0
        self._dirty = False
        self._label = label
        self._framer: PDataFramer | None = None  # made at the first C-STORE
        self.peer_max_pdu = peer_max_pdu

    # -- introspection ---------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._machine.established

    def accepted_transfer_syntaxes(self, sop_class: str) -> list[str]:
        return [ts for (ab, ts) in self._contexts.values() if ab == sop_class]

    @property
    def accepted_contexts(self) -> list[tuple[int, str, str]]:
        return [(cid, ab, ts) for cid, (ab, ts) in sorted(self._contexts.items())]

    # -- context manager ---------------------------------------------------------

    async def __aenter__(self) -> Association:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.is_established:
            await self._ps.close()
            return
        if exc_type is None:
            await self.release()
        else:
            with anyio.CancelScope(shield=True):
                await self.abort()

    # -- DIMSE ---------------------------------------------------------------------

    def _next_id(self) -> int:
        self._message_id = (self._message_id % 0xFFFF) + 1
        return self._message_id

    def _context(self, sop_class: str, transfer_syntax: str | None) -> int:
        if transfer_syntax is not None:
            cid = self._by_key.get((sop_class, transfer_syntax))
            if cid is not None:
                return cid
        else:
            for cid, (ab, _ts) in self._contexts.items():
                if ab == sop_class:
                    return cid
        raise NoPresentationContext(
            f"no accepted presentation context for {sop_class} in {transfer_syntax}"
        )

    def _check(self) -> None:
        if not self.is_established:
            raise (
                AssociationAborted(0, 0)
                if self._machine.state is State.CLOSED
                else DicomError(f"association is {self._machine.state.value}")
            )

    async def _fail(self, exc: BaseException) -> None:
        """Abort after a failure inside an operation: the association is unusable."""
        if self._machine.state is not State.CLOSED:
            self._machine.aborted()
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.move_on_after(1):
                        await self._ps.send(encode_abort(0, 0))
                except Exception:
                    pass
                await self._ps.close()

    async def _response(self) -> Any:
        """Read PDUs until a complete command set arrives; return it decoded."""
        reader = self._reader
        while True:
            pdu_type, pdu = await self._ps.read_pdu(self._our_max, self._dimse_timeout)
            action = self._machine.receive(pdu_type)
            if action is Action.P_DATA:
                reader.feed(memoryview(pdu)[6:])
                event = reader.next_event()
                if event == PDataReader.COMMAND_DONE:
                    _ctx, raw = reader.take_command()
                    if reader.next_event() != PDataReader.NEED_DATA:
                        raise ProtocolError("data after a response", "unexpected_pdv")
                    return dimse.decode_command(raw)
                if event != PDataReader.NEED_DATA:
                    raise ProtocolError("unexpected data set in response", "unexpected_pdv")
            elif action is Action.ABORTED:
                source, reason = decode_abort(pdu)
                await self._ps.close()
                raise AssociationAborted(source, reason)
            else:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}", "unexpected_pdu")

    async def _operation(self, coro: Any) -> Any:
        """Run one DIMSE exchange. A failure after the first byte went out leaves the
        association in an unknown state: it is aborted. A failure before (no context,
        bad range) leaves it usable."""
        try:
            self._check()
        except BaseException:
            coro.close()
            raise
        self._dirty = False
        try:
            return await coro
        except (DicomError, TimeoutError) as exc:
            if self._dirty or not isinstance(exc, NoPresentationContext):
                await self._fail(exc)
            if isinstance(exc, TimeoutError):
                raise DicomTimeout(str(exc) or "timed out") from exc
            raise
        except BaseException as exc:
            if self._dirty:
                await self._fail(exc)
            raise

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        self._dirty = True
        await self._ps.send(data)

    async def c_echo(self) -> int:
        return int(await self._operation(self._c_echo()))

    async def _c_echo(self) -> int:
        cid = self._context(VERIFICATION, None)
        mid = self._next_id()
        await self._send(pdata_pdus(cid, dimse.echo_rq(mid), self._peer_max, COMMAND, True))
        rsp = await self._response()
        return int(rsp.get("Status", 0xC000))

    async def c_store(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        source: bytes | bytearray | memoryview | Path | Sequence[Segment],
        offset: int = 0,
        length: int | None = None,
        priority: int = 2,
    ) -> StoreResponse:
        """Send one data set, streamed without decoding: the bytes of ``source`` from
        ``offset`` for ``length`` bytes (to the end when None).

        ``source`` may also be a list or tuple of segments sent one after the other as one
        data set: bytes, or ``(path, offset, length)`` ranges of files (a rewritten header
        around pixel data read from the spool); ``offset`` and ``length`` are then unused.
        Every range is checked before the first byte goes out (ValueError: the
        association stays usable)."""
        segments = not isinstance(source, bytes | bytearray | memoryview | Path)
        if segments and (offset or length is not None):
            raise ValueError("offset and length do not apply to a list of segments")
        result: StoreResponse = await self._operation(
            self._c_store(
                sop_class_uid, sop_instance_uid, transfer_syntax, source, offset, length, priority
            )
        )
        return result

    async def _c_store(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        source: bytes | bytearray | memoryview | Path | Sequence[Segment],
        offset: int,
        length: int | None,
        priority: int,
    ) -> StoreResponse:
        cid = self._context(sop_class_uid, transfer_syntax)
        fds: list[int] = []
        try:
            if isinstance(source, bytes | bytearray | memoryview | Path):
                parts = [_part(source, offset, length, fds)]
            else:
                parts = [_segment_part(seg, fds) for seg in source]
            mid = self._next_id()
            command = dimse.store_rq(mid, sop_class_uid, sop_instance_uid, priority)
            await self._send_data_set(cid, command, [p for p in parts if p[2]])
        finally:
            for fd in fds:
                os.close(fd)
        rsp = await self._response()
        comment = rsp.get("ErrorComment")
        return StoreResponse(int(rsp.get("Status", 0xC000)), str(comment) if comment else None)

    async def _send_data_set(self, cid: int, command: bytes, parts: list[_Part]) -> None:
        """The command set, then the data set's ``parts`` (none empty) as P-DATA-TF
        PDUs, in writes of about READ_CHUNK bytes, each byte copied once: read from its
        file (or copied from memory) straight into the write buffer."""
        framer = self._framer
        if framer is None:
            framer = self._framer = PDataFramer(self._peer_max)
        total = sum(p[2] for p in parts)
        head = framer.command(cid, command)
        if len(parts) == 1 and total <= framer.frag:
            src, start, size, _label = parts[0]
            if not isinstance(src, int):
                await self._send(framer.whole(head, cid, src[start : start + size]))
                return
        sent = index = consumed = 0
        while True:
            n = min(framer.chunk_size, total - sent)
            sent += n
            run, slots = framer.layout(head, cid, n, sent == total)
            writer = SlotWriter(slots)
            while n:
                src, start, size, label = parts[index]
                take = min(size - consumed, n)
                spans = writer.spans(take)
                if isinstance(src, int):
                    if read_into(src, spans, start + consumed) != take:
                        raise SourceError(f"{label}: file shrank while sending")
                else:
                    copy_into(spans, src[start + consumed : start + consumed + take])
                consumed += take
                n -= take
                if consumed == size:
                    index += 1
                    consumed = 0
            await self._send(run)
            if sent == total:
                return
            head = b""

    # -- release / abort -------------------------------------------------------------

    async def release(self) -> None:
        if not self.is_established:
            await self._ps.close()
            return
        self._machine.release_requested()
        try:
            await self._ps.send(RELEASE_RQ)
            while True:
                pdu_type, pdu = await self._ps.read_pdu(self._our_max, self._acse_timeout)
                action = self._machine.receive(pdu_type)
                if action is Action.RELEASE_RP:
                    break
                if action is Action.RELEASE_RQ:  # collision: answer and stop
                    await self._ps.send(RELEASE_RP)
                    break
                if action is Action.ABORTED:
                    source, reason = decode_abort(pdu)
                    raise AssociationAborted(source, reason)
                if action is Action.P_DATA:
                    continue
                raise ProtocolError(f"unexpected PDU 0x{pdu_type:02x} in release", "unexpected_pdu")
        except (DicomError, TimeoutError) as exc:
            await self._fail(exc)
            if isinstance(exc, TimeoutError | DicomTimeout):
                raise DicomTimeout("no A-RELEASE-RP in time") from exc
            if not isinstance(exc, PeerClosed):
                raise
        finally:
            self._machine.aborted()
            await self._ps.close()
        log.info("association_released", extra=_kv(peer=self._label))

    async def abort(self) -> None:
        if self._machine.state is State.CLOSED:
            await self._ps.close()
            return
        await self._fail(AssociationAborted(0, 0))
        log.info("association_aborted_by_us", extra=_kv(peer=self._label))


#: one piece of a data set to send: (a memoryview, or an open file's descriptor), where
#: it starts in it, how many bytes, and what to name in errors
_Part = tuple[memoryview | int, int, int, str]


def _part(
    source: bytes | bytearray | memoryview | Path, offset: int, length: int | None, fds: list[int]
) -> _Part:
    if isinstance(source, Path):
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        fds.append(fd)
        size = os.fstat(fd).st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise SourceError(f"{source}: range {offset}+{length} outside {size} bytes")
        return fd, offset, length, str(source)
    view = memoryview(source)
    if length is None:
        length = len(view) - offset
    if offset < 0 or length < 0 or offset + length > len(view):
        raise SourceError(f"range {offset}+{length} outside {len(view)} bytes")
    return view, offset, length, "data"


def _segment_part(seg: Segment, fds: list[int]) -> _Part:
    if isinstance(seg, tuple):
        path, start, n = seg
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        fds.append(fd)
        if start < 0 or n < 0 or start + n > os.fstat(fd).st_size:
            raise SourceError(f"{path}: range {start}+{n} outside the file")
        return fd, start, n, str(path)
    view = memoryview(seg)
    return view, 0, len(view), "data"


async def _associate(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    max_pdu_length: int = DEFAULT_MAX_PDU,
    connect_timeout: float | None = 10.0,
    acse_timeout: float | None = 30.0,
    dimse_timeout: float | None = 60.0,
    network_timeout: float | None = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Association:
    proposed = requestor_contexts(contexts)
    label = f"{host}:{port}"
    phase = "connect to"
    try:
        with anyio.fail_after(connect_timeout):
            if ssl_context is None:
                ps = await PduStream.connect(host, port, network_timeout)
            else:
                tcp = await anyio.connect_tcp(host, port)
                # the handshake apart from the connect, so a failure names TLS
                phase = "TLS handshake with"
                try:
                    stream = await TLSStream.wrap(
                        tcp, hostname=host, ssl_context=ssl_context, standard_compatible=False
                    )
                except BaseException:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                        await tcp.aclose()
                    raise
                ps = PduStream(stream, network_timeout)
    except TimeoutError:
        raise ConnectTimeout(f"{phase} {label} timed out") from None
    except (OSError, ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        if phase == "connect to":
            raise ConnectError(f"cannot connect to {label}: {exc}") from exc
        raise ConnectError(
            f"TLS handshake with {label} failed: {exc or type(exc).__name__}"
        ) from exc
    machine = Machine(State.AWAIT_AC)
    try:
        await ps.send(encode_associate_rq(calling_ae, called_ae, proposed, max_pdu_length))
        pdu_type, pdu = await ps.read_pdu(MAX_ASSOCIATE_PDU, acse_timeout)
        action = machine.receive(pdu_type)
        if action is Action.ASSOCIATE_RJ:
            result, source, reason = decode_associate_rj(bytes(pdu))
            log.info(
                "association_rejected_by_peer",
                extra=_kv(
                    peer=label,
                    called_ae=called_ae,
                    result=result,
                    source=source,
                    reason=reason,
                ),
            )
            raise AssociationRejected(result, source, reason)
        if action is Action.ABORTED:
            source, reason = decode_abort(pdu)
            raise AssociationAborted(source, reason)
        if action is not Action.ASSOCIATE_AC:
            raise ProtocolError(f"unexpected PDU 0x{pdu_type:02x} to A-ASSOCIATE-RQ")
        ac = decode_associate_ac(bytes(pdu))
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            if isinstance(exc, ProtocolError):
                try:
                    with anyio.move_on_after(1):
                        await ps.send(encode_abort(0, 0))
                except Exception:
                    pass
            await ps.close()
        if isinstance(exc, PeerClosed):
            raise AssociationAborted(2, 0) from exc
        raise
    results = requestor_results(proposed, ac.contexts)
    accepted = {
        int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in results
        if cx.result == 0 and cx.context_id is not None and cx.transfer_syntax
    }
    log.info(
        "association_established",
        extra=_kv(
            peer=label,
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=len(accepted),
            peer_max_pdu=ac.max_pdu_length,
        ),
    )
    return Association(
        ps, accepted, ac.max_pdu_length, max_pdu_length, dimse_timeout, acse_timeout, label
    )


class _AssociateCall:
    """What `associate` returns: awaitable, or an async context manager."""

    def __init__(self, host: str, port: int, kwargs: dict[str, Any]) -> None:
        self._args = (host, port)
        self._kwargs = kwargs
        self._assoc: Association | None = None

    def __await__(self) -> Generator[Any, None, Association]:
        return _associate(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> Association:
        self._assoc = await _associate(*self._args, **self._kwargs)
        return self._assoc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._assoc is not None
        await self._assoc.__aexit__(exc_type, exc, tb)


def associate(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    max_pdu_length: int = DEFAULT_MAX_PDU,
    connect_timeout: float | None = 10.0,
    acse_timeout: float | None = 30.0,
    dimse_timeout: float | None = 60.0,
    network_timeout: float | None = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> _AssociateCall:
    """Open an association. Use as ``async with associate(...) as assoc`` or
    ``assoc = await associate(...)``."""
    return _AssociateCall(
        host,
        port,
        dict(
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=contexts,
            max_pdu_length=max_pdu_length,
            connect_timeout=connect_timeout,
            acse_timeout=acse_timeout,
            dimse_timeout=dimse_timeout,
            network_timeout=network_timeout,
            ssl_context=ssl_context,
        ),
    )

"""The acceptor (SCP): a thin anyio adapter over the sans-I/O core, one task per
association, no threads."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup, TaskStatus
from anyio.streams.tls import TLSStream

from router.dicom import dimse
from router.dicom._stream import PduStream, PeerClosed, set_nodelay
from router.dicom._stream import kv as _kv
from router.dicom.association import (
    Action,
    AssociationInfo,
    Machine,
    Rejection,
    State,
    check_ae_titles,
    negotiate,
)
from router.dicom.dimse import PDataReader, Sink, Status, StoreRequest
from router.dicom.errors import AssociationAborted, DicomTimeout, ProtocolError
from router.dicom.handler import StoreHandler, StoreRefused
from router.dicom.pdu import (
    COMMAND,
    DEFAULT_MAX_PDU,
    MAX_ASSOCIATE_PDU,
    RELEASE_RP,
    AssociateRequest,
    decode_abort,
    decode_associate_rq,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    pdata_pdus,
)

log = logging.getLogger("router.dicom.acceptor")

#: connections allowed to be negotiating (TLS handshake, waiting for their
#: A-ASSOCIATE-RQ, being rejected) beyond max_associations before new ones are shed
MAX_EXTRA_NEGOTIATING = 64
#: the listen(2) backlog (the kernel caps it at net.core.somaxconn), as anyio's default
LISTEN_BACKLOG = 65536
#: accept(2) errors that concern one connection only (it was reset before we took it)
_ACCEPT_RETRY = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
#: accept(2) errors for want of file descriptors or memory: wait ACCEPT_BACKOFF, go on
_ACCEPT_BACKOFF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF = 0.1


@dataclass(frozen=True, slots=True)
class AcceptorConfig:
    ae_title: str = "ROUTER"
    host: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 16
    max_pdu_length: int = DEFAULT_MAX_PDU
    calling_ae_titles: frozenset[str] | None = None
    check_called_ae: bool = True
    accept_unknown_sop_classes: bool = True
    acse_timeout: float = 30.0
    network_timeout: float = 60.0
    dimse_timeout: float = 60.0
    ssl_context: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 10.0


def _peer(addr: Any) -> tuple[str, int]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return str(addr), 0


async def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host`` (as anyio.create_tcp_listener
    binds them: SO_REUSEADDR, IPv6 sockets IPv6-only, a port chosen by the first when
    ``port`` is 0), non-blocking, for ``loop.sock_accept``."""
    infos = await anyio.getaddrinfo(
        host or None,
        port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, _type, proto, _name, sockaddr in infos:
            key = (int(family), str(sockaddr[0]))
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            if port == 0:
                port = int(sock.getsockname()[1])
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no address to listen on for {host!r}")
    return sockets


class Acceptor:
    def __init__(self, config: AcceptorConfig, handler: StoreHandler) -> None:
        self.config = config
        self.handler = handler
        self._active: dict[str, anyio.CancelScope] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._accept_scope: anyio.CancelScope | None = None
        self._accepting = True
        self._negotiating = 0

    @property
    def active(self) -> int:
        """Associations established and not yet ended."""
        return len(self._active)

    @property
    def negotiating(self) -> int:
        """Connections accepted and not yet associated (TLS handshake, waiting for their
        A-ASSOCIATE-RQ, being rejected)."""
        return self._negotiating

    def update(self, config: AcceptorConfig) -> None:
        """Hot reload: AE checks, limits and timeouts apply to new associations. The
        listening address and TLS context are those of the running server."""
        self.config = replace(
            config,
            host=self.config.host,
            port=self.config.port,
            ssl_context=self.config.ssl_context,
        )

    def stop_accepting(self) -> None:
        self._accepting = False
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight associations to end; after ``timeout`` abort the rest.
        Returns True when they all ended by themselves."""
        with anyio.move_on_after(timeout):
            while self._active:
                await self._idle.wait()
            return True
        for scope in list(self._active.values()):
            scope.cancel()
        return False

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        sockets = await listen_sockets(cfg.host, cfg.port)
        port = int(sockets[0].getsockname()[1])
        log.info("listening", extra=_kv(host=cfg.host, port=port, ae_title=cfg.ae_title))
        try:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as self._accept_scope:
                    task_status.started(port)
                    if self._accepting:
                        async with anyio.create_task_group() as accepting:
                            for sock in sockets:
                                accepting.start_soon(self._accept, sock, tg)
                for sock in sockets:
                    sock.close()
                log.info("stopped_accepting", extra=_kv(port=port))
                await anyio.sleep_forever()
        finally:
            for sock in sockets:
                sock.close()

    async def _accept(self, listening: socket.socket, tg: TaskGroup) -> None:
        """Accept connections on one listening socket, each in its own task of ``tg``."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(listening)
            except asyncio.CancelledError:
                # a cancelled sock_accept can leave its reader registered with the
                # selector on some Python versions: remove it before the socket closes
                with contextlib.suppress(ValueError, NotImplementedError):
                    loop.remove_reader(listening)
                raise
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:  # the connection went away before accept
                    continue
                if exc.errno not in _ACCEPT_BACKOFF:
                    raise
                # out of file descriptors or memory: wait for some to come back
                log.warning("accept_failed", extra=_kv(error=exc))
                await anyio.sleep(ACCEPT_BACKOFF)
                continue
            tg.start_soon(self._connection, sock, addr)

    # -- one association ---------------------------------------------------------

    async def _connection(self, sock: socket.socket, addr: Any) -> None:
        aid = secrets.token_hex(4)
        host, port = _peer(addr)
        if self._negotiating >= self.config.max_associations + MAX_EXTRA_NEGOTIATING:
            # a flood of connections that do not (yet) associate: shed them at once
            log.warning("connection_shed", extra=_kv(assoc=aid, peer=f"{host}:{port}"))
            self._protocol_error("connection_flood")
            sock.close()
            return
        try:
            await self._association(aid, sock, host, port)
        except Exception as exc:  # a peer must never take the server down
            log.exception("association_crashed", extra=_kv(assoc=aid, peer=f"{host}:{port}"))
            self._protocol_error("internal:" + type(exc).__name__)

    def _protocol_error(self, kind: str) -> None:
        try:
            self.handler.protocol_error(kind)
        except Exception:
            log.exception("handler_error", extra=_kv(hook="protocol_error"))

    def _hook(self, name: str, *args: Any) -> None:
        try:
            getattr(self.handler, name)(*args)
        except Exception:
            log.exception("handler_error", extra=_kv(hook=name))

    async def _association(self, aid: str, sock: socket.socket, host: str, port: int) -> None:
        self._negotiating += 1
        negotiating = True

        def done_negotiating() -> None:
            nonlocal negotiating
            if negotiating:
                negotiating = False
                self._negotiating -= 1

        try:
            ps = await self._open(aid, sock, f"{host}:{port}")
            if ps is None:
                return
            try:
                await self._negotiate_and_run(aid, ps, host, port, done_negotiating)
            finally:
                await ps.close()
        finally:
            done_negotiating()

    async def _open(self, aid: str, sock: socket.socket, peer: str) -> PduStream | None:
        """The connection's PduStream: our buffered protocol on plain TCP, anyio's
        TLSStream with TLS. None (logged, the socket closed) when the peer went away
        before the TLS handshake or the handshake failed (then counted too)."""
        cfg = self.config
        if cfg.ssl_context is None:
            return await PduStream.accepted(sock, cfg.network_timeout)  # sets TCP_NODELAY
        set_nodelay(sock)  # before the handshake, whose flights are small
        try:
            tcp = await SocketStream.from_socket(sock)
        except (OSError, ValueError):  # reset before we got to it (ValueError: "not connected")
            sock.close()
            log.info("closed_before_associate", extra=_kv(assoc=aid, peer=peer))
            return None
        except BaseException:
            sock.close()
            raise
        try:
            with anyio.fail_after(cfg.tls_handshake_timeout):
                stream = await TLSStream.wrap(
                    tcp, server_side=True, ssl_context=cfg.ssl_context, standard_compatible=False
                )
        except TimeoutError:
            log.warning("tls_handshake_timeout", extra=_kv(assoc=aid, peer=peer))
            self._protocol_error("tls_timeout")
        except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            log.warning("tls_handshake_failed", extra=_kv(assoc=aid, peer=peer, error=exc))
            self._protocol_error("tls_handshake")
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await tcp.aclose()
            raise
        else:
            return PduStream(stream, cfg.network_timeout)
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await tcp.aclose()
        return None

    async def _negotiate_and_run(
        self, aid: str, ps: PduStream, host: str, port: int, done_negotiating: Any
    ) -> None:
        cfg = self.config
        machine = Machine(State.AWAIT_RQ)
        peer = f"{host}:{port}"
        # 1. the A-ASSOCIATE-RQ, within the ARTIM time
        try:
            pdu_type, pdu = await ps.read_pdu(MAX_ASSOCIATE_PDU, cfg.acse_timeout)
            action = machine.receive(pdu_type)
            if action is Action.ABORTED:
                log.info("aborted_before_associate", extra=_kv(assoc=aid, peer=peer))
                return
            if action is not Action.ASSOCIATE_RQ:
                raise ProtocolError(
                    f"PDU type 0x{pdu_type:02x} before A-ASSOCIATE-RQ", "unexpected_pdu"
                )
            rq = decode_associate_rq(bytes(pdu))
        except DicomTimeout:
            log.info("acse_timeout", extra=_kv(assoc=aid, peer=peer))
            self._protocol_error("acse_timeout")
            return
        except PeerClosed:
            log.info("closed_before_associate", extra=_kv(assoc=aid, peer=peer))
            return
        except ProtocolError as exc:
            log.warning("protocol_error", extra=_kv(assoc=aid, peer=peer, kind=exc.kind, error=exc))
            self._protocol_error(exc.kind)
            await self._abort(ps)
            return

        info = AssociationInfo(aid, rq.calling_ae, rq.called_ae, host, port)
        # 2. decide
        rejection = check_ae_titles(rq, cfg.ae_title, cfg.check_called_ae, cfg.calling_ae_titles)
        if rejection is None and not self._accepting:
            rejection = Rejection.shutting_down()
        if rejection is None and len(self._active) >= cfg.max_associations:
            rejection = Rejection.too_many_associations()
        if rejection is None:
            try:
                rejection = self.handler.check_association(info)
            except Exception:
                log.exception("handler_error", extra=_kv(hook="check_association", assoc=aid))
                rejection = Rejection.internal_error()
        if rejection is not None:
            log.warning(
                "association_rejected",
                extra=_kv(
                    assoc=aid,
                    calling_ae=rq.calling_ae,
                    called_ae=rq.called_ae,
                    peer=peer,
                    reason=rejection.cause,
                    result=rejection.result,
                    source=rejection.source,
                    code=rejection.reason,
                ),
            )
            machine.rejected()
            self._hook("association_rejected", rejection)
            try:
                with anyio.fail_after(cfg.network_timeout):
                    await ps.send(
                        encode_associate_rj(rejection.result, rejection.source, rejection.reason)
                    )
                    # give the peer the chance to close first (PS3.8 ARTIM on Sta13)
                    await ps.read_pdu(MAX_ASSOCIATE_PDU, min(cfg.acse_timeout, 1.0))
            except Exception:
                pass
            return

        # 3. accept: take the slot before any further await
        done_negotiating()
        scope = anyio.CancelScope()
        self._active[aid] = scope
        self._idle = anyio.Event()
        try:
            with scope:
                await self._established(ps, machine, rq, info, cfg)
        finally:
            del self._active[aid]
            if not self._active:
                self._idle.set()

    async def _abort(self, ps: PduStream, reason: int = 0) -> None:
        with anyio.move_on_after(1, shield=True):
            with contextlib.suppress(Exception):
                await ps.send(encode_abort(2, reason))

    async def _established(
        self,
        ps: PduStream,
        machine: Machine,
        rq: AssociateRequest,
        info: AssociationInfo,
        cfg: AcceptorConfig,
    ) -> None:
        results = negotiate(rq.contexts, cfg.accept_unknown_sop_classes)
        accepted = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results
            if cx.result == 0 and cx.context_id is not None
        }
        peer_max = rq.max_pdu_length
        peer = f"{info.peer_host}:{info.peer_port}"
        await ps.send(encode_associate_ac(rq, results, cfg.max_pdu_length))
        log.info(
            "association_opened",
            extra=_kv(
                assoc=info.id,
                calling_ae=info.calling_ae,
                called_ae=info.called_ae,
                peer=peer,
                contexts=len(accepted),
                proposed=len(rq.contexts),
                peer_max_pdu=peer_max,
            ),
        )
        self._hook("association_opened", info)

        reader = PDataReader(frozenset(accepted))
        req: StoreRequest | None = None
        sink: Sink | None = None
        refused: StoreRefused | None = None
        how = "error"
        stored = 0
        limit = cfg.max_pdu_length
        try:
            while True:
                timeout = cfg.dimse_timeout if reader.in_message else cfg.network_timeout
                pdu_type, pdu = await ps.read_pdu(limit, timeout)
                action = machine.receive(pdu_type)
                if action is Action.P_DATA:
                    reader.feed(memoryview(pdu)[6:])
                    while True:
                        event = reader.next_event()
                        if event == PDataReader.NEED_DATA:
                            break
                        if event == PDataReader.COMMAND_DONE:
                            ctx, raw = reader.take_command()
                            command = dimse.decode_command(raw)
                            field = int(command.get("CommandField", 0) or 0)
                            abstract, ts = accepted[ctx]
                            if field == dimse.C_ECHO_RQ:
                                mid = int(command.get("MessageID", 0) or 0)
                                await ps.send(
                                    pdata_pdus(ctx, dimse.echo_rsp(mid), peer_max, COMMAND, True)
                                )
                                log.debug("echo", extra=_kv(assoc=info.id, message_id=mid))
                                continue
                            if field != dimse.C_STORE_RQ or not dimse.has_data_set(command):
                                raise ProtocolError(
                                    f"unsupported command 0x{field:04x}", "unsupported_command"
                                )
                            req = dimse.store_request(command, ts)
                            refused = None
                            sink = None
                            if req.sop_class_uid != abstract:
                                # a failure, not B007: B007 is a warning and means
                                # "stored", and nothing is stored here
                                refused = StoreRefused(
                                    Status.DATASET_MISMATCH,
                                    "SOP Class UID differs from the presentation context",
                                )
                            else:
                                try:
                                    sink = self.handler.open_store(info, req)
                                except StoreRefused as exc:
                                    refused = exc
                                except Exception:
                                    log.exception(
                                        "handler_error", extra=_kv(hook="open_store", assoc=info.id)
                                    )
                                    refused = StoreRefused(Status.CANNOT_UNDERSTAND)
                            reader.start_data(ctx, sink)
                        else:  # DATA_DONE
                            assert req is not None
                            finished = sink if refused is None else None
                            status, comment = await self._finish(info, req, sink, refused)
                            sink = None
                            stored += 1
                            try:
                                await ps.send(
                                    pdata_pdus(
                                        reader.data_context,
                                        dimse.store_rsp(
                                            req.message_id,
                                            req.sop_class_uid,
                                            req.sop_instance_uid,
                                            status,
                                            comment,
                                        ),
                                        peer_max,
                                        COMMAND,
                                        True,
                                    )
                                )
                            finally:
                                if finished is not None:
                                    self._hook("store_answered", info, req, finished)
                            if log.isEnabledFor(logging.DEBUG):  # per instance: skip the cost
                                log.debug(
                                    "c_store",
                                    extra=_kv(
                                        assoc=info.id,
                                        message_id=req.message_id,
                                        sop_instance_uid=req.sop_instance_uid,
                                        status=f"0x{status:04X}",
                                        bytes=reader.data_bytes,
                                    ),
                                )
                            req = None
                elif action is Action.RELEASE_RQ:
                    if reader.in_message:
                        raise ProtocolError("A-RELEASE-RQ inside a message", "unexpected_pdu")
                    await ps.send(RELEASE_RP)
                    how = "released"
                    return
                elif action is Action.ABORTED:
                    source, reason = decode_abort(pdu)
                    log.info("peer_aborted", extra=_kv(assoc=info.id, source=source, reason=reason))
                    how = "aborted"
                    return
                else:
                    raise ProtocolError(
                        f"unexpected PDU type 0x{pdu_type:02x} in association", "unexpected_pdu"
                    )
        except DicomTimeout as exc:
            how = "timeout"
            log.warning("association_timeout", extra=_kv(assoc=info.id, peer=peer, error=exc))
            await self._abort(ps)
        except PeerClosed:
            how = "aborted"
            log.info("connection_lost", extra=_kv(assoc=info.id, peer=peer))
        except ProtocolError as exc:
            how = "error"
            log.warning(
                "protocol_error", extra=_kv(assoc=info.id, peer=peer, kind=exc.kind, error=exc)
            )
            self._protocol_error(exc.kind)
            await self._abort(ps, 2 if exc.kind == "unexpected_pdu" else 0)
        except AssociationAborted:
            how = "aborted"
        except BaseException:
            how = "aborted"
            with anyio.CancelScope(shield=True):
                await self._abort(ps)
            raise
        finally:
            if sink is not None:
                try:
                    sink.abort()
                except Exception:
                    log.exception("handler_error", extra=_kv(hook="sink.abort", assoc=info.id))
            log.info(
                "association_closed", extra=_kv(assoc=info.id, how=how, stored=stored, peer=peer)
            )
            self._hook("association_closed", info, how)

    async def _finish(
        self,
        info: AssociationInfo,
        req: StoreRequest,
        sink: Sink | None,
        refused: StoreRefused | None,
    ) -> tuple[int, str | None]:
        if refused is not None or sink is None:
            if refused is None:
                refused = StoreRefused(Status.CANNOT_UNDERSTAND)
            return refused.status, refused.comment
        try:
            # not bounded by a timeout: the handler's durable commit must not be cut short
            return int(await self.handler.finish_store(info, req, sink)), None
        except Exception as exc:
            log.exception(
                "finish_store_failed",
                extra=_kv(
                    assoc=info.id,
                    sop_instance_uid=req.sop_instance_uid,
                    error=type(exc).__name__,
                ),
            )
            with contextlib.suppress(Exception):
                sink.abort()
            return Status.CANNOT_UNDERSTAND, None

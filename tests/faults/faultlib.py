"""Helpers for the fault matrix (docs/architecture.md): a raw DICOM peer on a blocking
socket, hand-built data sets (so hostile values reach the wire unvalidated), /proc
readings of the router process, a pynetdicom destination answering chosen statuses, and
queue inspection.

The router always runs as a real process (tests.integration.peers.RouterProcess).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.dicom import dimse, pdu
from router.dicom.association import requestor_contexts
from tests.integration.peers import RouterProcess, wait_for, write_config
from tests.ports import bound_port, reserve_port

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"

A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RP = 0x06
A_ABORT = 0x07


class PeerGone(Exception):
    """The router closed the connection."""


class RawPeer:
    """A DICOM requestor on a blocking socket that sends exactly the bytes it is told."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.max_pdu = 16384

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0): the connection drops, no goodbye."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise PeerGone(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def recv_pdu(self, timeout: float | None = None) -> tuple[int, bytes]:
        """(type, whole PDU with its header)."""
        self.sock.settimeout(timeout or self.timeout)
        head = self._recv_exact(6)
        pdu_type, length = struct.unpack(">BxL", head)
        return pdu_type, head + self._recv_exact(length)

    def until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the router sends until it closes; fails after ``timeout``."""
        self.sock.settimeout(timeout)
        out = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk

    def associate(
        self,
        calling: str = "FAULT",
        called: str = "ROUTER",
        contexts: Sequence[tuple[str, Sequence[str]]] = ((CT, (EXPLICIT,)),),
    ) -> tuple[int, bytes]:
        cx = requestor_contexts([(a, list(t)) for a, t in contexts])
        self.send(pdu.encode_associate_rq(calling, called, cx, self.max_pdu))
        return self.recv_pdu()

    def established(self, **kw: Any) -> RawPeer:
        kind, body = self.associate(**kw)
        assert kind == A_ASSOCIATE_AC, (kind, body)
        return self

    def command(self, sop_class: str, sop_instance: str, ctx: int = 1, mid: int = 1) -> None:
        cmd = dimse.store_rq(mid, sop_class, sop_instance)
        self.send(bytes(pdu.pdata_pdus(ctx, cmd, self.max_pdu, pdu.COMMAND, True)))

    def data(self, data: bytes, ctx: int = 1, last: bool = True) -> None:
        self.send(bytes(pdu.pdata_pdus(ctx, data, self.max_pdu, 0, last)))

    def response(self, timeout: float | None = None) -> dimse.Command:
        """The next C-STORE/C-ECHO response's command set."""
        raw = b""
        while True:
            kind, whole = self.recv_pdu(timeout)
            if kind != P_DATA_TF:
                raise PeerGone(f"PDU type 0x{kind:02x} instead of a response: {whole[:16]!r}")
            body = memoryview(whole)[6:]
            pos = 0
            while pos < len(body):
                length, _ctx, control = pdu.unpack_pdv_header(body, pos)
                raw += bytes(body[pos + 6 : pos + 4 + length])
                pos += 4 + length
                if control & 0x02:
                    return dimse.decode_command(raw)

    def store(
        self,
        sop_class: str,
        sop_instance: str,
        data: bytes,
        ctx: int = 1,
        mid: int = 1,
    ) -> tuple[int, str]:
        """One C-STORE: (status, error comment)."""
        self.command(sop_class, sop_instance, ctx, mid)
        self.data(data, ctx)
        rsp = self.response()
        return int(rsp.get("Status")), str(rsp.get("ErrorComment", "") or "")

    def echo(self, ctx: int = 1) -> int:
        self.send(bytes(pdu.pdata_pdus(ctx, dimse.echo_rq(7), self.max_pdu, pdu.COMMAND, True)))
        return int(self.response().get("Status"))

    def release(self) -> None:
        self.send(pdu.RELEASE_RQ)
        kind, _ = self.recv_pdu()
        assert kind == A_RELEASE_RP, kind
        self.close()


def rejection(whole: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ PDU."""
    assert whole[0] == A_ASSOCIATE_RJ, whole[:10]
    return whole[7], whole[8], whole[9]


def context_results(whole: bytes) -> dict[int, int]:
    """context id -> result of an A-ASSOCIATE-AC PDU."""
    return {int(c.context_id): int(c.result) for c in pdu.decode_associate_ac(whole).contexts}


def echo_ok(port: int, calling: str = "PROBE") -> bool:
    with RawPeer(port) as p:
        kind, _ = p.associate(calling=calling, contexts=((VERIFICATION, (IMPLICIT,)),))
        if kind != A_ASSOCIATE_AC:
            return False
        ok = p.echo() == 0
        p.release()
        return ok


# -- data sets written by hand (explicit VR little endian) --------------------------------


def element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    tag = struct.pack("<HH", group, elem)
    if vr in ("OB", "OW", "UN", "SQ", "UT"):
        return tag + vr.encode() + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr.encode() + struct.pack("<H", len(value)) + value


_PATTERN = bytes(range(256))


def dataset(
    sop_class: str | bytes,
    sop_instance: str | bytes,
    pixels: int = 4096,
    patient_id: str = "FAULT1",
) -> bytes:
    """A small explicit VR little endian image data set; UIDs go in unvalidated."""

    def b(v: str | bytes) -> bytes:
        return v if isinstance(v, bytes) else v.encode("latin-1")

    return b"".join(
        (
            element(0x0008, 0x0016, "UI", b(sop_class)),
            element(0x0008, 0x0018, "UI", b(sop_instance)),
            element(0x0008, 0x0060, "CS", b"CT"),
            element(0x0010, 0x0020, "LO", patient_id.encode()),
            element(0x0020, 0x000D, "UI", b"1.2.826.0.1.3680043.8.498.1"),
            element(0x0028, 0x0010, "US", struct.pack("<H", max(1, pixels // 1024))),
            element(0x0028, 0x0011, "US", struct.pack("<H", 512)),
            element(0x0028, 0x0100, "US", struct.pack("<H", 16)),
            element(0x7FE0, 0x0010, "OW", _PATTERN * (pixels // 256) + bytes(pixels % 256)),
        )
    )


# -- the router process ----------------------------------------------------------------


def proc_kib(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in KiB (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_of(router: RouterProcess) -> int:
    assert router.proc is not None
    return router.proc.pid


def make_router(
    tmp_path: Path,
    destinations: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> RouterProcess:
    """A router config with one destination per (name -> port) and quick timeouts."""
    dests = destinations if destinations is not None else {}
    rules = overrides.pop("rules", None)
    return write_config(tmp_path, dests, rules, **overrides)


def dest(ae: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"ae_title": ae, "host": "127.0.0.1", "port": port, **kw}


def down_port() -> int:
    """A port nobody listens on (connections refused), held for the test: a server
    started on it later (same port, the destination back up) can still bind it."""
    return reserve_port()


def partials(router: RouterProcess) -> list[Path]:
    d = router.storage / "tmp"
    return sorted(d.iterdir()) if d.exists() else []


def spool_files(router: RouterProcess) -> list[Path]:
    return sorted((router.storage / "spool").rglob("*.dcm"))


def rows(router: RouterProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(router.storage / "queue.db")
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def instance_count(router: RouterProcess) -> int:
    return int(rows(router, "SELECT count(*) FROM instance")[0][0])


def wait_metric(
    router: RouterProcess, name: str, value: float, timeout: float = 30, **labels: str
) -> None:
    wait_for(
        lambda: router.metric(name, **labels) >= value,
        timeout,
        f"{name}{labels} >= {value}",
    )


# -- a pynetdicom destination answering chosen statuses ----------------------------------


@dataclass
class StatusSCP:
    """pynetdicom's AE as a destination: answers ``status`` (mutable) and records every
    (SOP Instance UID, data set bytes, status answered) in order of receipt."""

    ae_title: str = "PACS"
    status: int = 0x0000
    port: int = 0  # 0: the kernel picks one; `start` sets the bound port
    received: list[tuple[str, bytes, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def _store(self, event: Any) -> int:
        with self.lock:
            status = self.status
            self.received.append(
                (
                    str(event.request.AffectedSOPInstanceUID),
                    bytes(event.request.DataSet.getvalue()),
                    status,
                )
            )
        return status

    @staticmethod
    def _nodelay(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, sop_classes: Sequence[str] = (CT, MR)) -> StatusSCP:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        for sop in sop_classes:
            ae.add_supported_context(sop, [EXPLICIT, IMPLICIT])
        ae.add_supported_context(VERIFICATION)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._nodelay)],
        )
        self.port = bound_port(self.server)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def ok_uids(self) -> list[str]:
        with self.lock:
            return [uid for uid, _data, status in self.received if status == 0]

    def answered(self) -> list[int]:
        with self.lock:
            return [status for _uid, _data, status in self.received]


@contextlib.contextmanager
def status_scp(**kw: Any) -> Iterator[StatusSCP]:
    scp = StatusSCP(**kw).start()
    try:
        yield scp
    finally:
        scp.stop()


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- A-ASSOCIATE-RQ built byte by byte (for malformed ones) -------------------------------


def _item(kind: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BxH", kind, len(body) if length is None else length) + body


def context_item(
    ctx_id: int, abstract: str, syntaxes: Sequence[str], length: int | None = None
) -> bytes:
    body = struct.pack(">BBBB", ctx_id & 0xFF, 0, 0, 0) + _item(0x30, abstract.encode())
    body += b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
    return _item(0x20, body, length)


def associate_rq(
    called: bytes = b"ROUTER",
    calling: bytes = b"FAULT",
    contexts: Sequence[bytes] | None = None,
    *,
    app_context: bytes = b"1.2.840.10008.3.1.1.1",
    user_info: bytes | None = None,
    version: int = 1,
    length: int | None = None,
) -> bytes:
    """A-ASSOCIATE-RQ from parts; every length can be wrong on purpose."""
    if contexts is None:
        contexts = [context_item(1, CT, [EXPLICIT])]
    if user_info is None:
        user_info = _item(0x50, _item(0x51, struct.pack(">L", 16384)))
    body = (
        struct.pack(">HH", version, 0)
        + called.ljust(16, b" ")[:16]
        + calling.ljust(16, b" ")[:16]
        + bytes(32)
        + _item(0x10, app_context)
        + b"".join(contexts)
        + user_info
    )
    return struct.pack(">BxL", 0x01, len(body) if length is None else length) + body

"""Laying out P-DATA-TF PDUs for sending a data set, sans-I/O.

A data set leaves in writes of about ``READ_CHUNK`` bytes, each a run of P-DATA-TF PDUs
of at most the peer's maximum length, one PDV each. :class:`PDataFramer` writes the
headers of such a run into one buffer reused by every write of the association and
hands out the gaps between them (``slots``), so the data set's bytes are copied exactly
once, into their final place: read from the spool straight into the slots with one
``preadv`` (:func:`read_into`), or copied into them from memory (:func:`copy_into`).
The bytes produced are the same as :func:`router.dicom.pdu.pdata_pdus` gives
(tests/dicom/test_framing.py checks it).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from router.dicom.pdu import COMMAND, LAST, P_DATA_TF_TYPE, UNLIMITED_SEND_PDU, pdata_pdus

__all__ = ["MAX_SLOTS", "READ_CHUNK", "PDataFramer", "SlotWriter", "copy_into", "read_into"]

READ_CHUNK = 256 * 1024  # measured: 1 MiB buffers fall out of cache and send slower
#: at most this many PDUs per write: below IOV_MAX (1024) for one preadv per write
MAX_SLOTS = 512

_HEADERS = struct.Struct(">BxLLBB")  # PDU type, PDU length, PDV length, context, control
_OVERHEAD = _HEADERS.size  # 12 bytes in front of every fragment
_preadv = getattr(os, "preadv", None)  # not on every platform


class PDataFramer:
    """The write buffer of one association. A run laid out by :meth:`layout` stays
    valid until the next call: send it (``PduStream.send`` returns once the kernel
    has every byte) before laying out the next."""

    __slots__ = ("_buf", "chunk_size", "frag")

    def __init__(self, peer_max_pdu: int) -> None:
        self.frag = (peer_max_pdu or UNLIMITED_SEND_PDU) - 6
        if self.frag <= 0:
            raise ValueError("max PDU length too small")
        #: data bytes per write: whole fragments, about READ_CHUNK
        self.chunk_size = self.frag * max(1, min(READ_CHUNK // self.frag, MAX_SLOTS))
        self._buf = bytearray()

    def layout(
        self, head: bytes | bytearray, context_id: int, length: int, last: bool
    ) -> tuple[memoryview, list[memoryview]]:
        """``head`` (already encoded PDUs, e.g. the command set's) followed by the PDUs
        of ``length`` data set bytes (at most :attr:`chunk_size`), LAST on the final
        fragment when ``last``: the whole run, and the slots its data goes into, in
        order. ``length`` 0 gives one empty PDV (the end of an empty data set)."""
        frag = self.frag
        count = max(1, -(-length // frag))
        start = len(head)
        total = start + length + _OVERHEAD * count
        if len(self._buf) < total:
            self._buf = bytearray(total)
        buf = self._buf
        view = memoryview(buf)
        view[:start] = head
        pack = _HEADERS.pack_into
        slots = []
        pos = start
        left = length
        for i in range(count):
            size = frag if left > frag else left
            left -= size
            control = LAST if last and i == count - 1 else 0
            pack(buf, pos, P_DATA_TF_TYPE, size + 6, size + 2, context_id, control)
            pos += _OVERHEAD
            slots.append(view[pos : pos + size])
            pos += size
        return view[:total], slots

    def command(self, context_id: int, command: bytes) -> bytes | bytearray:
        """The PDUs of a command set (one, unless the peer's PDUs are tiny)."""
        n = len(command)
        if n > self.frag:
            return pdata_pdus(context_id, command, self.frag + 6, COMMAND, True)
        return _HEADERS.pack(P_DATA_TF_TYPE, n + 6, n + 2, context_id, COMMAND | LAST) + command

    def whole(self, head: bytes | bytearray, context_id: int, data: memoryview) -> bytes:
        """``head`` and all of a data set that fits one fragment, as one PDU: the usual
        small instance, in one copy and no buffer kept."""
        n = len(data)
        if n > self.frag:
            raise ValueError("the data set does not fit one fragment")
        return b"".join((head, _HEADERS.pack(P_DATA_TF_TYPE, n + 6, n + 2, context_id, LAST), data))


class SlotWriter:
    """Hands out the slots of one run in order, ``n`` bytes at a time."""

    __slots__ = ("_index", "_offset", "_slots")

    def __init__(self, slots: Sequence[memoryview]) -> None:
        self._slots = slots
        self._index = 0
        self._offset = 0

    def spans(self, n: int) -> list[memoryview]:
        """The views covering the next ``n`` bytes of the slots (more than are left
        raises IndexError)."""
        slots = self._slots
        index, offset = self._index, self._offset
        out = []
        while n:
            slot = slots[index]
            take = min(len(slot) - offset, n)
            out.append(slot[offset : offset + take])
            n -= take
            offset += take
            if offset == len(slot):
                index += 1
                offset = 0
        self._index, self._offset = index, offset
        return out


def read_into(fd: int, spans: list[memoryview], offset: int) -> int:
    """Read the file ``fd`` from ``offset`` into ``spans`` (one preadv where the
    platform has it); the number of bytes read (less at the end of the file)."""
    if _preadv is not None:
        return int(_preadv(fd, spans, offset))
    got = 0
    for span in spans:
        data = os.pread(fd, len(span), offset + got)
        span[: len(data)] = data
        got += len(data)
        if len(data) < len(span):
            break
    return got


def copy_into(spans: list[memoryview], data: memoryview) -> None:
    """Copy ``data`` (as long as the spans together) into ``spans``."""
    pos = 0
    for span in spans:
        n = len(span)
        span[:] = data[pos : pos + n]
        pos += n

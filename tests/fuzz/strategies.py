"""Hypothesis strategies for DICOM upper-layer bytes: structured PDUs built by hand at
the byte level (so lengths, counts and contents can be anything), and mutations of
valid streams (byte flips, insertions, deletions, truncation, length fields lied
about)."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from router.dicom import dimse, pdu

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"

KNOWN_UIDS = [VERIFICATION, CT, MR, IMPLICIT, EXPLICIT, JPEG, APP_CONTEXT, "1.2.3.4"]

uid_text = st.one_of(
    st.sampled_from(KNOWN_UIDS),
    st.text(alphabet="0123456789.", max_size=70),
    st.text(max_size=20),  # anything, non-ASCII included
)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


uid_bytes = st.one_of(
    uid_text.map(_enc),
    uid_text.map(lambda u: _enc(u) + b"\0"),
    st.binary(max_size=70),
)

_valid_ae = st.one_of(
    st.sampled_from([b"ROUTER", b"ROUTER          ", b"ANY", b"CT_1"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ -", min_size=1, max_size=16).map(_enc),
)
ae_bytes = st.one_of(
    *[_valid_ae] * 8,
    st.sampled_from([b"", b"A\\B", b"\0" * 16]),
    st.text(min_size=1, max_size=18).map(_enc),  # non-ASCII, backslashes, control chars
    st.binary(min_size=1, max_size=18),
)


@st.composite
def item(draw: st.DrawFn, item_type: int, body: bytes, chaos: bool = True) -> bytes:
    """A TLV item; in chaos, its length field sometimes lies."""
    length = len(body)
    if chaos and draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, 0xFFFF))
    return bytes([item_type, 0]) + struct.pack(">H", length) + body


@st.composite
def presentation_context(draw: st.DrawFn, ac: bool = False, chaos: bool = True) -> bytes:
    odd = st.integers(0, 127).map(lambda i: 2 * i + 1)
    ctx_id = draw(st.one_of(odd, st.integers(0, 255)) if chaos else odd)
    uids = uid_bytes if chaos else st.sampled_from(KNOWN_UIDS).map(_enc)
    sub = [draw(item(0x30, draw(uids), chaos))] if not ac or draw(st.booleans()) else []
    for ts in draw(st.lists(uids, min_size=0 if chaos else 1, max_size=4)):
        sub.append(draw(item(0x40, ts, chaos)))
    if chaos and draw(st.integers(0, 9)) == 0:
        sub.append(draw(item(draw(st.integers(0, 255)), draw(st.binary(max_size=8)))))
    result = draw(st.integers(0, 5)) if ac else 0
    head = bytes([ctx_id, 0, result, 0])
    return draw(item(0x21 if ac else 0x20, head + b"".join(sub), chaos))


@st.composite
def user_information(draw: st.DrawFn, chaos: bool = True) -> bytes:
    subs = []
    if draw(st.booleans()) or not chaos:
        subs.append(draw(item(0x51, struct.pack(">L", draw(st.integers(0, 2**32 - 1))), chaos)))
    if not chaos:
        subs.append(draw(item(0x52, draw(st.sampled_from(KNOWN_UIDS)).encode(), chaos)))
        return draw(item(0x50, b"".join(subs), chaos))
    if draw(st.booleans()):
        subs.append(draw(item(0x51, draw(st.binary(max_size=6)))))  # wrong size
    if draw(st.booleans()):
        subs.append(draw(item(0x52, draw(uid_bytes))))
    if draw(st.booleans()):
        subs.append(draw(item(0x55, draw(ae_bytes))))
    if draw(st.booleans()):  # async ops window
        subs.append(draw(item(0x53, draw(st.binary(max_size=6)))))
    if draw(st.booleans()):  # SCP/SCU role selection
        uid = draw(uid_bytes)
        body = struct.pack(">H", len(uid)) + uid + draw(st.binary(min_size=0, max_size=3))
        subs.append(draw(item(0x54, body)))
    for _ in range(draw(st.integers(0, 2))):  # extended/common ext. negotiation, identity, ...
        t = draw(st.sampled_from([0x56, 0x57, 0x58, 0x59, 0x00, 0xFF]))
        subs.append(draw(item(t, draw(st.binary(max_size=40)))))
    return draw(item(0x50, b"".join(subs)))


@st.composite
def associate_pdu(draw: st.DrawFn, ac: bool = False) -> bytes:
    """An A-ASSOCIATE-RQ (or -AC): half of them well formed with random contents (so
    they get past the decoder into negotiation), half in chaos (random items, lying
    lengths, odd AE titles, 0 or over 128 contexts)."""
    chaos = draw(st.booleans())
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 0xFFFF])) if chaos else 1
    aes = ae_bytes if chaos else _valid_ae
    called = draw(aes).ljust(16, b" ")[:16]
    calling = draw(aes).ljust(16, b" ")[:16]
    items = []
    if not chaos or draw(st.integers(0, 9)):
        app = st.sampled_from([_enc(APP_CONTEXT)])
        items.append(draw(item(0x10, draw(app | uid_bytes if chaos else app), chaos)))
    n = draw(st.one_of(st.integers(0, 4), st.sampled_from([0, 127, 128, 129, 130])))
    if n > 4:
        one = draw(presentation_context(ac, chaos))
        items += [one] * n
    else:
        items += [draw(presentation_context(ac, chaos)) for _ in range(n)]
    if not chaos or draw(st.integers(0, 9)):
        items.append(draw(user_information(chaos)))
    if chaos and draw(st.integers(0, 9)) == 0:
        items.append(draw(item(draw(st.integers(0, 255)), draw(st.binary(max_size=16)))))
    if chaos and draw(st.integers(0, 4)) == 0:
        items = draw(st.permutations(items))
    body = struct.pack(">H", version) + b"\0\0" + called + calling + b"\0" * 32 + b"".join(items)
    pdu_type = pdu.A_ASSOCIATE_AC_TYPE if ac else pdu.A_ASSOCIATE_RQ_TYPE
    length = len(body)
    if chaos and draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, len(body) + 10))
    return struct.pack(">BxL", pdu_type, length) + body


# -- DIMSE ------------------------------------------------------------------------------

_KEYWORDS = sorted(dimse.COMMAND_ELEMENTS)


@st.composite
def command_set(draw: st.DrawFn) -> bytes:
    """A command set: a real one with random values, or random group-0000 elements."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return dimse.echo_rq(draw(st.integers(0, 0xFFFF)))
    if kind == 1:
        return dimse.store_rq(
            draw(st.integers(0, 0xFFFF)),
            draw(st.sampled_from([CT, MR, "1.2.3"])),
            draw(st.text(alphabet="0123456789./", max_size=70)) or "1.2",
            priority=draw(st.integers(0, 3)),
            move_originator_ae=draw(st.none() | st.text(alphabet="ABC ", max_size=16)),
        )
    elements = []
    for _ in range(draw(st.integers(0, 8))):
        group = 0 if draw(st.integers(0, 9)) else draw(st.integers(0, 0xFFFF))
        elem = draw(
            st.one_of(
                st.sampled_from([dimse.COMMAND_ELEMENTS[k][0] for k in _KEYWORDS]),
                st.integers(0, 0xFFFF),
            )
        )
        value = draw(st.one_of(st.binary(max_size=70), uid_bytes, st.sampled_from([b"\x01\x00"])))
        length = len(value)
        if draw(st.integers(0, 9)) == 0:
            length = draw(st.integers(0, 2**32 - 1))
        elements.append(struct.pack("<HHL", group, elem, length) + value)
    if kind == 2:  # make sure a CommandField is there, with a real or random value
        field = draw(st.sampled_from([0x0001, 0x0030, 0x8001, 0x0020, 0x0FFF, 0]))
        elements.append(struct.pack("<HHL", 0, 0x0100, 2) + struct.pack("<H", field))
    return b"".join(elements)


@st.composite
def pdv(draw: st.DrawFn, contexts: list[int]) -> bytes:
    ctx = draw(st.sampled_from(contexts) | st.integers(0, 255))
    control = draw(st.sampled_from([0, 1, 2, 3]) | st.integers(0, 255))
    command = control & 1 and draw(st.booleans())
    data = draw(command_set()) if command else draw(st.binary(max_size=300))
    length = len(data) + 2
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.integers(0, 2**32 - 1))
    return struct.pack(">LBB", length, ctx, control) + data


def pdata_body(contexts: list[int]) -> st.SearchStrategy[bytes]:
    return st.lists(pdv(contexts), min_size=0, max_size=4).map(b"".join)


# -- mutations --------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_mutations: int = 4) -> bytes:
    """``data`` with a few random edits (or none)."""
    buf = bytearray(data)
    if draw(st.integers(0, 2)) == 0:
        return data  # a third intact: the structure alone is random enough
    for _ in range(draw(st.integers(1, max_mutations))):
        op = draw(st.integers(0, 5))
        n = len(buf)
        if op == 0 and n:  # flip bits
            i = draw(st.integers(0, n - 1))
            buf[i] ^= draw(st.integers(1, 255))
        elif op == 1 and n:  # set a byte to an interesting value
            i = draw(st.integers(0, n - 1))
            buf[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == 2:  # insert bytes
            i = draw(st.integers(0, n))
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3 and n:  # delete a range
            i = draw(st.integers(0, n - 1))
            del buf[i : i + draw(st.integers(1, 16))]
        elif op == 4:  # truncate
            del buf[draw(st.integers(0, n)) :]
        elif op == 5 and n >= 4:  # overwrite a 32-bit big-endian length somewhere
            i = draw(st.integers(0, n - 4))
            buf[i : i + 4] = struct.pack(
                ">L", draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, n, n + 1]))
            )
    return bytes(buf)


def _fragments(draw: st.DrawFn, ctx: int, data: bytes, command: bool) -> list[bytes]:
    """``data`` as PDVs cut at random points, LAST on the final one."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=4)))
    cuts = [c for c in cuts if c < len(data)]
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out = []
    for i, piece in enumerate(pieces):
        control = (pdu.COMMAND if command else 0) | (pdu.LAST if i == len(pieces) - 1 else 0)
        out.append(struct.pack(">LBB", len(piece) + 2, ctx, control) + piece)
    return out


@st.composite
def dimse_stream(
    draw: st.DrawFn, contexts: list[int]
) -> tuple[list[bytes], list[tuple[int, bytes, bytes | None]]]:
    """A valid P-DATA stream: C-ECHO and C-STORE requests (with their data sets) on the
    given contexts, each cut into fragments, the PDVs split into PDU bodies at random.
    Returns (bodies, the messages they carry)."""
    messages: list[tuple[int, bytes, bytes | None]] = []
    pdvs: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        ctx = draw(st.sampled_from(contexts))
        mid = draw(st.integers(0, 0xFFFF))
        if draw(st.booleans()):
            command, data = dimse.echo_rq(mid), None
        else:
            uid = draw(st.text(alphabet="0123456789.", min_size=1, max_size=64))
            command, data = dimse.store_rq(mid, CT, uid), draw(st.binary(max_size=400))
        messages.append((ctx, command, data))
        pdvs += _fragments(draw, ctx, command, True)
        if data is not None:
            pdvs += _fragments(draw, ctx, data, False)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(pdvs) - 1)), max_size=len(pdvs))))
    cuts = [c for c in cuts if c < len(pdvs)]
    bodies = [b"".join(pdvs[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pdvs)], strict=True)]
    return [b for b in bodies if b], messages

"""Transfer syntaxes: what to propose to a destination and which one to send in.

Pure policy (no I/O); the codec capabilities are passed in, with defaults taken from the
pydicom plugins installed (:data:`DECODABLE`, :data:`ENCODABLE`).

Policy (bytes go out as received unless the destination refuses them):

1. the instance's own transfer syntax, whenever the destination accepts it;
2. else a lossless target the destination accepted, in :data:`TARGET_ORDER`: Explicit VR
   Little Endian, Implicit VR Little Endian, then the lossless compressed syntaxes we can
   encode (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless), then Deflated Explicit VR
   Little Endian and Explicit VR Big Endian (retired, last resort).

Never a lossy target: a lossless source is never made lossy, and a lossy source is never
re-encoded lossily (decoding it to a lossless syntax keeps Lossy Image Compression "01").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from pydicom.uid import UID

from router.dicom import uids
from router.dicom.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
)

#: pixel data stored as is (no pixel coding): converting between these never decodes pixels
NATIVE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE})

#: syntaxes whose coding may lose information (the pixels are not those that were coded)
LOSSY = uids.LOSSY_TRANSFER_SYNTAXES

#: the DCT JPEG processes: every image coded with one of them has lost information
#: (PS3.3 C.7.6.1.1.5: such an image keeps Lossy Image Compression "01" for good)
ALWAYS_LOSSY = uids.JPEG_DCT_SYNTAXES

#: what we convert to, best first; every entry is lossless
TARGET_ORDER: tuple[str, ...] = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    RLE_LOSSLESS,
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
)

#: what a destination gets proposed besides the original unless configured otherwise
DEFAULT_FALLBACKS: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


def _decodable() -> frozenset[str]:
    from pydicom.pixels.decoders.base import get_decoder

    found = set(NATIVE)
    for ts in LOSSY | {RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS} | _OTHER_LOSSLESS:
        try:
            if get_decoder(UID(ts)).is_available:
                found.add(ts)
        except (NotImplementedError, ValueError):
            pass
    return frozenset(found)


def _encodable() -> frozenset[str]:
    from pydicom.pixels.encoders.base import get_encoder

    found = set(NATIVE)
    for ts in (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS):
        try:
            if get_encoder(UID(ts)).is_available:
                found.add(ts)
        except (NotImplementedError, ValueError):
            pass
    return frozenset(found)


_OTHER_LOSSLESS = uids.OTHER_LOSSLESS_SYNTAXES

#: source syntaxes the installed plugins can decode (native ones need no decoder)
DECODABLE: frozenset[str] = _decodable()
#: target syntaxes the installed plugins can encode (of :data:`TARGET_ORDER`)
ENCODABLE: frozenset[str] = _encodable()


def name(ts: str) -> str:
    """The standard name of a transfer syntax, else the UID itself."""
    known = uids.name(ts)
    return known if known is not None and UID(ts).is_transfer_syntax else ts


def is_lossy(ts: str) -> bool:
    """True for syntaxes that may carry lossy coded pixels."""
    return ts in LOSSY


def propose(
    source_ts: str, fallbacks: Sequence[str] | None = None, *, transcode_to: str | None = None
) -> list[str]:
    """The transfer syntaxes to propose for an instance received in ``source_ts``: the
    original first, then ``transcode_to`` (when configured), then the lossless
    ``fallbacks`` (default :data:`DEFAULT_FALLBACKS`) that we can encode, no duplicates.

    Propose each in a presentation context of its own (see :func:`contexts`): an acceptor
    picks one syntax per context by its own preference, so a single context holding the
    original and the fallbacks could come back with a fallback although the original would
    have been accepted, and the bytes would be converted for nothing.
    """
    out = [source_ts]
    wanted = [transcode_to] if transcode_to else []
    wanted += list(DEFAULT_FALLBACKS if fallbacks is None else fallbacks)
    for ts in wanted:
        if ts not in out and ts in TARGET_ORDER:
            out.append(ts)
    return out


def contexts(
    sop_class_uid: str,
    source_ts: str,
    fallbacks: Sequence[str] | None = None,
    *,
    transcode_to: str | None = None,
) -> list[tuple[str, list[str]]]:
    """Presentation contexts for one (SOP class, received syntax): one context per syntax of
    :func:`propose`, so the association says exactly which of them the destination takes.
    Merge across a batch with :func:`merge_contexts` (the limit is 128 contexts)."""
    return [
        (sop_class_uid, [ts]) for ts in propose(source_ts, fallbacks, transcode_to=transcode_to)
    ]


def merge_contexts(
    many: Iterable[Sequence[tuple[str, Sequence[str]]]],
) -> list[tuple[str, list[str]]]:
    """The union of several :func:`contexts` lists, first occurrence first, no duplicate."""
    seen: dict[tuple[str, tuple[str, ...]], None] = {}
    for cs in many:
        for sop, tss in cs:
            seen.setdefault((sop, tuple(tss)), None)
    return [(sop, list(tss)) for sop, tss in seen]


def candidates(
    source_ts: str,
    accepted: Collection[str],
    *,
    transcode_to: str | None = None,
    decodable: Collection[str] = DECODABLE,
    encodable: Collection[str] = ENCODABLE,
) -> list[str]:
    """Every syntax we could send in, best first (see :func:`plan`); empty when none."""
    out: list[str] = []
    convertible = source_ts in decodable
    if (
        transcode_to
        and transcode_to != source_ts
        and transcode_to in accepted
        and transcode_to in TARGET_ORDER
        and transcode_to in encodable
        and convertible
    ):
        out.append(transcode_to)
    if source_ts in accepted and source_ts not in out:
        out.append(source_ts)
    if convertible:
        for ts in TARGET_ORDER:
            if ts in accepted and ts in encodable and ts not in out:
                out.append(ts)
    return out


def plan(
    source_ts: str,
    accepted: Collection[str],
    *,
    transcode_to: str | None = None,
    decodable: Collection[str] = DECODABLE,
    encodable: Collection[str] = ENCODABLE,
) -> str | None:
    """The syntax to send an instance received in ``source_ts`` in, given the syntaxes the
    destination ``accepted`` for its SOP class (``assoc.accepted_transfer_syntaxes(sop)``).

    - ``source_ts``: the original is accepted: send the stored bytes untouched;
    - another UID: convert with :func:`router.transcode.transcode` to it first;
    - None: nothing we can produce is accepted (dead letter, with :func:`refusal`).

    ``transcode_to`` (a destination's configured syntax) wins over the original when the
    destination accepted it and we can convert to it; else the policy above applies.
    """
    found = candidates(
        source_ts, accepted, transcode_to=transcode_to, decodable=decodable, encodable=encodable
    )
    return found[0] if found else None


def refusal(
    source_ts: str, accepted: Collection[str], decodable: Collection[str] = DECODABLE
) -> str:
    """Why :func:`plan` returned None, for the dead letter."""
    got = ", ".join(name(ts) for ts in accepted) or "nothing"
    if source_ts not in decodable:
        return (
            f"destination refuses {name(source_ts)} (accepts {got}) and no installed "
            f"decoder converts from it"
        )
    return (
        f"destination refuses {name(source_ts)} and accepts no syntax we can convert to "
        f"(accepts {got})"
    )

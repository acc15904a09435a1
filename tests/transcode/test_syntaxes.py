"""The choice of transfer syntax: a table of (received, accepted) -> what is sent."""

from __future__ import annotations

import pytest

from router import syntaxes
from router.syntaxes import (
    DEFLATED_EXPLICIT_VR_LE as DEFL,
)
from router.syntaxes import (
    EXPLICIT_VR_BE as BE,
)
from router.syntaxes import (
    EXPLICIT_VR_LE as ELE,
)
from router.syntaxes import (
    IMPLICIT_VR_LE as ILE,
)
from router.syntaxes import (
    JPEG_2000_LOSSLESS as J2KL,
)
from router.syntaxes import (
    JPEG_LS_LOSSLESS as JLSL,
)
from router.syntaxes import (
    RLE_LOSSLESS as RLE,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
J2K = "1.2.840.10008.1.2.4.91"
JLS_NEAR = "1.2.840.10008.1.2.4.81"
MPEG2 = "1.2.840.10008.1.2.4.100"
PRIVATE = "1.2.3.4.5.6.7"

ALL_CODECS = dict(
    decodable=syntaxes.NATIVE | {JPEG_BASELINE, JPEG_LOSSLESS_SV1, J2K, JLS_NEAR, RLE, JLSL, J2KL},
    encodable=syntaxes.NATIVE | {RLE, JLSL, J2KL},
)
NO_PIXEL_CODECS = dict(decodable=syntaxes.NATIVE, encodable=syntaxes.NATIVE)

# (received, accepted, transcode_to, codecs, expected)
PLAN = [
    # the original whenever accepted: bytes untouched
    (JPEG_BASELINE, [JPEG_BASELINE, ELE], None, ALL_CODECS, JPEG_BASELINE),
    (ELE, [ILE, ELE], None, ALL_CODECS, ELE),
    (BE, [BE, ELE], None, ALL_CODECS, BE),
    (PRIVATE, [PRIVATE], None, ALL_CODECS, PRIVATE),  # unknown but accepted: pass through
    (MPEG2, [MPEG2, ELE], None, NO_PIXEL_CODECS, MPEG2),  # very large video: as is
    # not accepted: explicit LE first, then implicit LE
    (JPEG_BASELINE, [ILE, ELE], None, ALL_CODECS, ELE),
    (JPEG_BASELINE, [ILE], None, ALL_CODECS, ILE),
    (J2K, [ELE], None, ALL_CODECS, ELE),
    (RLE, [ILE], None, ALL_CODECS, ILE),
    (BE, [ILE, ELE], None, ALL_CODECS, ELE),
    (DEFL, [ILE], None, ALL_CODECS, ILE),
    (ELE, [ILE], None, NO_PIXEL_CODECS, ILE),  # native to native needs no pixel codec
    # then lossless compressed ones we can encode, never a lossy one
    (JPEG_BASELINE, [J2KL, RLE], None, ALL_CODECS, RLE),
    (ELE, [J2KL, JLSL], None, ALL_CODECS, JLSL),
    (ELE, [J2KL], None, ALL_CODECS, J2KL),
    (ELE, [J2K, JPEG_BASELINE], None, ALL_CODECS, None),  # lossless -> lossy: never
    (JPEG_BASELINE, [J2K], None, ALL_CODECS, None),  # lossy -> lossy: never
    (JLS_NEAR, [JPEG_BASELINE, JLS_NEAR + ".9"], None, ALL_CODECS, None),
    (ELE, [RLE], None, NO_PIXEL_CODECS, None),  # no encoder installed
    (ELE, [JPEG_LOSSLESS_SV1], None, ALL_CODECS, None),  # decodable, not encodable
    # deflated and big endian last
    (ELE, [BE, DEFL], None, ALL_CODECS, DEFL),
    (RLE, [BE], None, ALL_CODECS, BE),
    (ILE, [RLE, DEFL], None, ALL_CODECS, RLE),
    # nothing we can decode
    (MPEG2, [ELE, ILE], None, ALL_CODECS, None),
    (PRIVATE, [ELE], None, ALL_CODECS, None),
    (JPEG_BASELINE, [ELE], None, NO_PIXEL_CODECS, None),
    (ELE, [], None, ALL_CODECS, None),
    # transcode_to wins when accepted and possible, else the policy applies
    (JPEG_BASELINE, [JPEG_BASELINE, ELE], ELE, ALL_CODECS, ELE),
    (ILE, [ILE, ELE], ELE, ALL_CODECS, ELE),
    (ELE, [ELE, ILE], ELE, ALL_CODECS, ELE),
    (JPEG_BASELINE, [JPEG_BASELINE, ILE], ELE, ALL_CODECS, JPEG_BASELINE),
    (JPEG_BASELINE, [JPEG_BASELINE, J2K], J2K, ALL_CODECS, JPEG_BASELINE),  # not a target
    (MPEG2, [MPEG2, ELE], ELE, ALL_CODECS, MPEG2),  # cannot convert: original
    (J2K, [J2K, RLE], RLE, NO_PIXEL_CODECS, J2K),
]


@pytest.mark.parametrize(("received", "accepted", "transcode_to", "codecs", "expected"), PLAN)
def test_plan(
    received: str,
    accepted: list[str],
    transcode_to: str | None,
    codecs: dict[str, frozenset[str]],
    expected: str | None,
) -> None:
    assert syntaxes.plan(received, accepted, transcode_to=transcode_to, **codecs) == expected
    found = syntaxes.candidates(received, accepted, transcode_to=transcode_to, **codecs)
    assert (found[0] if found else None) == expected
    assert all(ts in accepted for ts in found)
    if received not in found:  # whatever we convert to is lossless
        assert not any(syntaxes.is_lossy(ts) for ts in found)
    if expected is None:
        assert syntaxes.refusal(received, accepted, codecs["decodable"])


def test_candidates_are_ordered_and_complete() -> None:
    accepted = [BE, J2KL, DEFL, RLE, ILE, ELE, JLSL, JPEG_BASELINE]
    got = syntaxes.candidates(JPEG_BASELINE, accepted, **ALL_CODECS)
    assert got == [JPEG_BASELINE, ELE, ILE, RLE, JLSL, J2KL, DEFL, BE]


# (received, fallbacks, transcode_to, expected proposal)
PROPOSE = [
    (JPEG_BASELINE, None, None, [JPEG_BASELINE, ELE, ILE]),
    (ELE, None, None, [ELE, ILE]),
    (ILE, None, None, [ILE, ELE]),
    (RLE, [ILE], None, [RLE, ILE]),
    (J2K, [RLE, ELE, J2K], None, [J2K, RLE, ELE]),  # a lossy fallback is never proposed
    (J2K, [], None, [J2K]),
    (JPEG_BASELINE, None, RLE, [JPEG_BASELINE, RLE, ELE, ILE]),
    (JPEG_BASELINE, [ELE, ELE], ELE, [JPEG_BASELINE, ELE]),
]


@pytest.mark.parametrize(("received", "fallbacks", "transcode_to", "expected"), PROPOSE)
def test_propose(
    received: str, fallbacks: list[str] | None, transcode_to: str | None, expected: list[str]
) -> None:
    assert syntaxes.propose(received, fallbacks, transcode_to=transcode_to) == expected


def test_contexts_one_syntax_each_and_merged_without_duplicates() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    mr = "1.2.840.10008.5.1.4.1.1.4"
    a = syntaxes.contexts(ct, JPEG_BASELINE)
    assert a == [(ct, [JPEG_BASELINE]), (ct, [ELE]), (ct, [ILE])]
    merged = syntaxes.merge_contexts([a, syntaxes.contexts(ct, ELE), syntaxes.contexts(mr, RLE)])
    assert merged == [
        (ct, [JPEG_BASELINE]),
        (ct, [ELE]),
        (ct, [ILE]),
        (mr, [RLE]),
        (mr, [ELE]),
        (mr, [ILE]),
    ]


def test_installed_codecs() -> None:
    """What pyproject's dependencies give us (a missing wheel shows up here first)."""
    for ts in (JPEG_BASELINE, JPEG_LOSSLESS_SV1, J2K, J2KL, JLS_NEAR, JLSL, RLE):
        assert ts in syntaxes.DECODABLE, syntaxes.name(ts)
    for ts in (RLE, JLSL, J2KL, ELE, ILE, DEFL, BE):
        assert ts in syntaxes.ENCODABLE, syntaxes.name(ts)


def test_refusal_names_the_syntaxes() -> None:
    assert "MPEG2" in syntaxes.refusal(MPEG2, [ELE])
    assert "no installed decoder" in syntaxes.refusal(MPEG2, [ELE])
    reason = syntaxes.refusal(ELE, [J2K])
    assert "Explicit VR Little Endian" in reason and "JPEG 2000" in reason

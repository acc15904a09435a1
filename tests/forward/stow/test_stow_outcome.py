"""STOW-RS responses -> per-instance outcomes: tables over the rules of
router/forward/stow/outcome.py, with bodies shaped like Orthanc's and PS3.18's."""

from __future__ import annotations

import pytest

from router.forward.outcome import Outcome
from router.forward.stow.outcome import classify_response, parse_response, response_text
from tests.forward.stow.bodies import dicom_json, dicom_xml

A, B, C = "1.2.3.1", "1.2.3.2", "1.2.3.3"


T, P, D, W = Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.DELIVERED, Outcome.WARNING

# (case, http status, body, expected outcome per A, B, C)
PER_INSTANCE = [
    ("all referenced", 200, dicom_json([(A, None), (B, None), (C, None)]), [D, D, D]),
    ("warning", 200, dicom_json([(A, None), (B, 0xB000), (C, None)]), [D, W, D]),
    ("partial 202", 202, dicom_json([(A, None)], [(B, 0xA700), (C, 0xA900)]), [D, T, P]),
    ("orthanc's 400 mix", 400, dicom_json([(A, None)], [(B, 0xC000)]), [D, P, T]),
    ("409 uses results", 409, dicom_json([(A, None), (C, None)], [(B, 0x0122)]), [D, P, D]),
    ("0110 processing failure", 200, dicom_json([(A, None), (B, None)], [(C, 0x0110)]), [D, D, T]),
    ("no FailureReason", 202, dicom_json([(A, None), (B, None)], [(C, None)]), [D, D, T]),
    ("reason as hex string", 202, dicom_json([(A, None), (B, None)], [(C, "0xC000")]), [D, D, P]),
    ("missing from both", 200, dicom_json([(A, None)]), [D, T, T]),
    ("xml", 202, dicom_xml([(A, None), (B, 0xB007)], [(C, 0xC122)]), [D, W, P]),
    ("xml 400 mix", 400, dicom_xml([(A, None)], [(B, 49152)]), [D, P, T]),
]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [c[1:] for c in PER_INSTANCE],
    ids=[c[0] for c in PER_INSTANCE],
)
def test_per_instance_results(status: int, body: bytes, expected: list[Outcome]) -> None:
    out = classify_response(status, body, [A, B, C])
    assert [r.sop_instance_uid for r in out.results] == [A, B, C]
    assert [r.outcome for r in out.results] == expected
    assert out.http_status == status
    assert not out.destination_down


# (case, http status, body, outcome of every instance, destination_down, syntax_refused)
WHOLE_REQUEST = [
    ("503", 503, b"busy", T, True, False),
    ("500 even with results", 500, dicom_json([(A, None), (B, None), (C, None)]), T, True, False),
    ("429", 429, b"slow down", T, True, False),
    ("401", 401, b"", T, True, False),
    ("403", 403, b"forbidden", T, True, False),
    ("408", 408, b"", T, True, False),
    ("400 no results", 400, b"bad multipart", P, False, False),
    ("400 empty sequences", 400, dicom_json(), P, False, False),
    ("404", 404, b"<html>no such path</html>", P, False, False),
    ("413", 413, b"too large", P, False, False),
    ("415", 415, b'{"Message": "Unsupported media type"}', P, False, True),
    ("200 empty body", 200, b"", T, False, False),
    ("200 not json", 200, b"ok", T, False, False),
    ("409 no results", 409, b"conflict", T, False, False),
    ("302", 302, b"", T, False, False),
    ("truncated json", 200, dicom_json([(A, None)])[:40], T, False, False),
]


@pytest.mark.parametrize(
    ("status", "body", "outcome", "down", "refused"),
    [c[1:] for c in WHOLE_REQUEST],
    ids=[c[0] for c in WHOLE_REQUEST],
)
def test_whole_request_outcomes(
    status: int, body: bytes, outcome: Outcome, down: bool, refused: bool
) -> None:
    out = classify_response(status, body, [A, B, C])
    assert [r.outcome for r in out.results] == [outcome] * 3
    assert out.destination_down is down
    assert all(r.syntax_refused is refused for r in out.results)
    assert all(f"HTTP {status}" in r.reason for r in out.results)


def test_dead_letter_reason_names_status_and_trimmed_text() -> None:
    body = b"Payload\n\n   Too\tLarge: " + b"x" * 1000
    (r,) = classify_response(413, body, [A]).results
    assert r.outcome is Outcome.PERMANENT
    assert r.reason.startswith("HTTP 413: Payload Too Large: xxx")
    assert len(r.reason) <= len("HTTP 413: ") + 200
    assert r.reason.endswith("...")


def test_syntax_refused_is_flagged_for_c122_and_0122_only() -> None:
    body = dicom_json([], [(A, 0xC122), (B, 0x0122), (C, 0xC000)])
    out = classify_response(202, body, [A, B, C])
    assert [r.syntax_refused for r in out.results] == [True, True, False]
    assert "transfer syntax not accepted" in out.results[0].reason
    assert [r.status for r in out.results] == [0xC122, 0x0122, 0xC000]


def test_warning_reason_is_kept() -> None:
    (r,) = classify_response(200, dicom_json([(A, 0xB006)]), [A]).results
    assert (r.outcome, r.status) == (Outcome.WARNING, 0xB006)
    assert "0xB006" in r.reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"null",
        b"[]",
        b"[1, 2]",
        b'{"Message": "x"}',
        b"<html/>",
        b"<a><b></a>",
        b"\xff",
    ],
)
def test_not_a_stow_response(body: bytes) -> None:
    assert parse_response(body) is None


def test_parse_json_and_xml_agree() -> None:
    j = parse_response(dicom_json([(A, None), (B, 0xB000)], [(C, 0xA700)]))
    x = parse_response(dicom_xml([(A, None), (B, 0xB000)], [(C, 0xA700)]))
    assert j is not None and x is not None
    assert dict(j.referenced) == dict(x.referenced) == {A: None, B: 0xB000}
    assert dict(j.failed) == dict(x.failed) == {C: 0xA700}


def test_response_text_is_one_printable_line() -> None:
    assert response_text(b"a\r\n\x00b\tc  ") == "a b c"
    assert response_text(b"\xff\xfe ok") == "\ufffd\ufffd ok"

"""Table tests for status and transport classification."""

from __future__ import annotations

import pytest

from router.forward.outcome import (
    Outcome,
    TransportFailure,
    classify_status,
    classify_transport,
    counts_against_destination,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x0000, Outcome.DELIVERED),
        (0x0001, Outcome.WARNING),
        (0x0107, Outcome.WARNING),
        (0x0116, Outcome.WARNING),
        (0xB000, Outcome.WARNING),
        (0xB006, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0xBFFF, Outcome.WARNING),
        (0xA700, Outcome.TRANSIENT),
        (0xA7FF, Outcome.TRANSIENT),
        (0x0213, Outcome.TRANSIENT),
        (0x0210, Outcome.TRANSIENT),
        (0x0110, Outcome.TRANSIENT),
        (0xFE00, Outcome.TRANSIENT),
        (0xA900, Outcome.PERMANENT),
        (0xA9FF, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0xC123, Outcome.PERMANENT),
        (0xCFFF, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0124, Outcome.PERMANENT),
        (0x0111, Outcome.PERMANENT),
        (0x0117, Outcome.PERMANENT),
        (0x0211, Outcome.PERMANENT),
        (0x0212, Outcome.PERMANENT),
        # unknown codes: transient (documented: retrying is bounded, dead-lettering is not)
        (0xA800, Outcome.TRANSIENT),
        (0xD000, Outcome.TRANSIENT),
        (0xFF00, Outcome.TRANSIENT),
        (0x0002, Outcome.TRANSIENT),
        (0xFFFF, Outcome.TRANSIENT),
    ],
)
def test_classify_status(status: int, expected: Outcome) -> None:
    assert classify_status(status) is expected


def test_outcome_properties() -> None:
    assert Outcome.DELIVERED.delivered and Outcome.WARNING.delivered
    assert not Outcome.TRANSIENT.delivered and not Outcome.PERMANENT.delivered
    assert Outcome.TRANSIENT.retryable and not Outcome.PERMANENT.retryable


@pytest.mark.parametrize(
    ("failure", "expected", "destination_fault"),
    [
        (TransportFailure.CONNECT_REFUSED, Outcome.TRANSIENT, True),
        (TransportFailure.TIMEOUT, Outcome.TRANSIENT, True),
        (TransportFailure.ABORTED, Outcome.TRANSIENT, True),
        (TransportFailure.REJECTED_TRANSIENT, Outcome.TRANSIENT, True),
        (TransportFailure.REJECTED_PERMANENT, Outcome.TRANSIENT, True),
        (TransportFailure.NO_CONTEXT, Outcome.PERMANENT, False),
    ],
)
def test_classify_transport(
    failure: TransportFailure, expected: Outcome, destination_fault: bool
) -> None:
    assert classify_transport(failure) is expected
    assert counts_against_destination(failure) is destination_fault

"""Fixtures for router.dicom tests (helpers live in dicom_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_helpers import RecordingHandler


@pytest.fixture
def handler(storage: Path) -> RecordingHandler:
    return RecordingHandler(storage)

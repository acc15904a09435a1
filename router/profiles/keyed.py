"""Keyed replacements: UIDs, patient pseudonyms and date shifts derived from the secret.

Derived, never stored: the same secret gives the same replacement on every node and after
every restart, which keeps studies, series and references together without any shared
state. Each kind of value is hashed under its own label, so a PatientID that happens to
look like a UID does not map to the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

_PATIENT: Final = b"dicom-router patient\x00"
_DATE_SHIFT: Final = b"dicom-router date shift\x00"
#: dates move back by 1 .. MAX_SHIFT_DAYS days (about ten years)
MAX_SHIFT_DAYS: Final = 3650


@dataclass(frozen=True, slots=True)
class Keyed:
    """The replacements one secret gives."""

    secret: bytes

    def _digest(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.`` and the decimal of the first 128 bits of HMAC-SHA256(secret, UID)."""
        clean = original.strip("\x00 ")
        return "2.25." + str(int.from_bytes(self._digest(clean.encode("ascii", "replace"))[:16]))

    def pseudonym(self, patient_id: str) -> str:
        """The PatientID and PatientName that replace a patient's own."""
        clean = patient_id.strip()
        return "ANON" + self._digest(_PATIENT + clean.encode("utf-8")).hex()[:16].upper()

    def shift_days(self, patient_id: str) -> int:
        """How many days this patient's dates move back under the modified-dates option."""
        digest = self._digest(_DATE_SHIFT + patient_id.strip().encode("utf-8"))
        return int.from_bytes(digest[:4]) % MAX_SHIFT_DAYS + 1

"""Applying a profile to a data set's header: pure, in place, at every depth of sequences.

The Basic Profile's action for each attribute comes from :mod:`router.profiles.table`;
what each action writes:

- ``X`` removes the element, ``Z`` leaves it with no value (an empty sequence for SQ).
- ``D`` writes a valid dummy of the element's VR (``19000101`` for DA, ``ANONYMIZED`` for
  text, 0 for numbers). A sequence under ``D`` keeps its items, with the table applied
  inside them and every other text, name and date value inside replaced by a dummy.
- ``C`` (clean) keeps a sequence and applies the table inside it; moves a date or
  date-time back by the patient's keyed shift (the modified-dates option); keeps a time;
  writes a dummy into other text; removes binary values (overlay bitmaps cannot be
  cleaned here).
- Removing an overlay's data (60xx,3000) removes its whole group (60xx,eeee): an overlay
  plane without its data is not valid.
- ``U`` replaces every UID value with its keyed replacement; a sequence under ``U`` (the
  ``X/Z/U*`` rows) is kept with the UIDs inside replaced.
- ``K`` keeps the element (and applies the table inside a sequence).

Private attributes are removed. ``retain_safe_private`` keeps none of them either: the
router has no machine-readable copy of the safe private attributes of PS3.15 Table
E.3.10-1, and keeping a private attribute that is not known to be safe would defeat the
profile. Pixel data is never touched.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from router.profiles.keyed import Keyed
from router.profiles.model import Profile, SetValue, attribute_label
from router.profiles.table import Action, effective_action, table

_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_PATIENT_ID: Final = 0x00100020
_PATIENT_NAME: Final = 0x00100010
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: VRs a dummied sequence replaces inside its items (names, text, dates: not codes, UIDs
#: or numbers, which the table governs)
_FREE_TEXT_VRS: Final = frozenset(
    {"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)

_DUMMY_TEXT: Final = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "UR": "urn:anonymized",
}
_DUMMY_BYTES: Final = {"OD": 8, "OV": 8, "OF": 4, "OL": 4}


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (code value, scheme, meaning), as the code sequences carry it."""

    value: str
    scheme_designator: str
    meaning: str


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


#: CID 7050 codes, by option name. Written out: any import of pydicom.sr loads its SR code
#: dictionary, about 15 MiB of memory in every router process, for these 11 codes.
OPTION_CODES: Final = {
    "retain_safe_private": _dcm("113111", "Retain Safe Private Option"),
    "retain_uids": _dcm("113110", "Retain UIDs Option"),
    "retain_device_identity": _dcm("113109", "Retain Device Identity Option"),
    "retain_institution_identity": _dcm("113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": _dcm("113108", "Retain Patient Characteristics Option"),
    "retain_longitudinal_full_dates": _dcm(
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    "retain_longitudinal_modified_dates": _dcm(
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    "clean_descriptors": _dcm("113105", "Clean Descriptors Option"),
    "clean_structured_content": _dcm("113104", "Clean Structured Content Option"),
    "clean_graphics": _dcm("113103", "Clean Graphics Option"),
}
BASIC_PROFILE_CODE: Final = _dcm("113100", "Basic Application Confidentiality Profile")
#: describe() reports actions only, so any key will do
_DESCRIBE_KEY: Final = b"placeholder key: describe() shows no values"


class BurnedInAnnotationError(Exception):
    """The instance says its pixels carry burned-in text, which the profile cannot remove."""

    def __init__(self) -> None:
        super().__init__(
            "BurnedInAnnotation is YES: the pixel data may show patient information that "
            "de-identification cannot remove (set allow_burned_in: true to send it anyway)"
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One change a profile makes: where, and what (never the original value)."""

    attribute: str  #: e.g. ``ReferencedImageSequence[0] > ReferencedSOPInstanceUID (0008,1155)``
    action: str  #: e.g. ``removed``, ``UID replaced``, ``set to 'SITE-A'``


Record = Callable[[str, str], None]


def _ignore(_attribute: str, _action: str) -> None:
    return None


def dummy_value(vr: str) -> Any:
    """A valid, non-empty dummy value of ``vr`` (for SQ: not defined, raises KeyError)."""
    if vr in _DUMMY_TEXT:
        return _DUMMY_TEXT[vr]
    if vr in {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}:
        return "ANONYMIZED"
    if vr in {"OB", "OW", "UN"}:
        return b"\x00\x00"
    if vr in _DUMMY_BYTES:
        return b"\x00" * _DUMMY_BYTES[vr]
    if vr in {"FL", "FD"}:
        return 0.0
    if vr in {"SL", "SS", "UL", "US", "SV", "UV", "AT"}:
        return 0
    raise KeyError(vr)


def _shift(text: str, days: int) -> str | None:
    """``text`` (DA, or the date part of a DT) moved back ``days``; None if unparseable."""
    try:
        day = dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


class _Walker:
    def __init__(self, profile: Profile, keyed: Keyed, patient_id: str, record: Record) -> None:
        self.options = profile.options
        self.keyed = keyed
        self.patient_id = patient_id
        self.record = record
        self.table = table()

    def walk(self, ds: Dataset, prefix: str, dummy_rest: bool) -> None:
        for elem in list(ds):
            tag = int(elem.tag)
            if tag in _PIXEL_TAGS or tag not in ds:  # not in: went with its overlay group
                continue
            where = prefix + attribute_label(tag)
            if tag & 0xFFFF == 0 or tag == 0x00080001:  # group lengths go stale on rewrite
                del ds[tag]
                continue
            if elem.tag.is_private:
                del ds[tag]
                self.record(where, "removed (private)")
                continue
            if tag == _PATIENT_ID:
                elem.value = self.keyed.pseudonym(str(elem.value or ""))
                self.record(where, "pseudonym")
                continue
            if tag == _PATIENT_NAME:
                elem.value = self.keyed.pseudonym(self.patient_id)
                self.record(where, "pseudonym")
                continue
            row = self.table.row_for(tag)
            sequence = elem.VR == "SQ"
            if row is None:
                if sequence:
                    self._items(elem, where, dummy_rest)
                elif dummy_rest and elem.VR in _FREE_TEXT_VRS and not elem.is_empty:
                    elem.value = dummy_value(elem.VR)
                    self.record(where, "replaced with a dummy value")
                continue
            action = effective_action(row, self.options, sequence=sequence)
            self._apply(ds, elem, action, where, dummy_rest)

    def _items(self, elem: DataElement, where: str, dummy_rest: bool) -> None:
        for i, item in enumerate(elem.value):
            self.walk(item, f"{where}[{i}] > ", dummy_rest)

    def _apply(
        self, ds: Dataset, elem: DataElement, action: Action, where: str, dummy_rest: bool
    ) -> None:
        vr = elem.VR
        if action is Action.REMOVE or (action is Action.CLEAN and vr in _BINARY_VRS):
            if int(elem.tag) >> 16 & 0xFF01 == 0x6000 and int(elem.tag) & 0xFFFF == 0x3000:
                self._remove_overlay(ds, int(elem.tag) >> 16, where)
                return
            del ds[elem.tag]
            self.record(where, "removed")
        elif action is Action.ZERO:
            if vr == "SQ":
                elem.value = Sequence()
            elif not elem.is_empty:
                elem.value = None
            self.record(where, "emptied")
        elif vr == "SQ":
            self._items(elem, where, dummy_rest or action is Action.DUMMY)
        elif action is Action.KEEP:
            return
        elif action is Action.UID or (action is Action.DUMMY and vr == "UI"):
            self._uid(elem, where)
        elif action is Action.DUMMY:
            elem.value = dummy_value(vr)
            self.record(where, "replaced with a dummy value")
        else:
            self._clean(ds, elem, where)

    def _remove_overlay(self, ds: Dataset, group: int, where: str) -> None:
        """Without its data an overlay plane is invalid (Rows, Columns, Origin are Type 1
        for data that is not there): the whole group goes."""
        for elem in list(ds):
            if int(elem.tag) >> 16 == group:
                del ds[elem.tag]
        self.record(where, f"removed, with the rest of overlay group {group:04X}")

    def _uid(self, elem: DataElement, where: str) -> None:
        if elem.VR != "UI":
            elem.value = dummy_value(elem.VR)
            self.record(where, "replaced with a dummy value")
        elif not elem.is_empty:
            if elem.VM > 1:
                elem.value = [self.keyed.uid(str(v)) for v in elem.value]
            else:
                elem.value = self.keyed.uid(str(elem.value))
            self.record(where, "UID replaced")

    def _clean(self, ds: Dataset, elem: DataElement, where: str) -> None:
        vr = elem.VR
        if elem.is_empty:
            return
        if vr in {"DA", "DT"}:
            days = self.keyed.shift_days(self.patient_id)
            values = elem.value if elem.VM > 1 else [elem.value]
            shifted = [_shift(str(v), days) for v in values]
            if all(s is not None for s in shifted):
                elem.value = shifted if elem.VM > 1 else shifted[0]
                self.record(where, "date shifted")
            else:
                elem.value = dummy_value(vr)
                self.record(where, "replaced with a dummy value")
        elif vr == "TM":
            return
        else:
            elem.value = dummy_value(vr)
            self.record(where, "cleaned (dummy value)")


def check_burned_in(profile: Profile, ds: Dataset) -> None:
    """Raise :class:`BurnedInAnnotationError` if a de-identifying ``profile`` must not
    send ``ds``."""
    if profile.deidentify is None or profile.allow_burned_in:
        return
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise BurnedInAnnotationError()


def _mark(ds: Dataset, options: frozenset[str], record: Record) -> None:
    chosen = [o for o in OPTION_CODES if o in options]
    used = [BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in chosen)]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [c.meaning[:64] for c in used]
    items = []
    for code in used:
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    record(attribute_label(0x00120062), "set to 'YES'")
    record(attribute_label(0x00120063), "set (Basic Profile and the options)")
    record(attribute_label(0x00120064), "set (Basic Profile and one code per option)")
    if "retain_longitudinal_modified_dates" in options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        record(attribute_label(0x00280303), "set to 'MODIFIED'")
    elif "retain_longitudinal_full_dates" in options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        record(attribute_label(0x00280303), "set to 'UNMODIFIED'")


def _remove_everywhere(ds: Dataset, tags: frozenset[int], prefix: str, record: Record) -> None:
    for elem in list(ds):
        where = prefix + attribute_label(int(elem.tag))
        if int(elem.tag) in tags:
            del ds[elem.tag]
            record(where, "removed (profile)")
        elif elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                _remove_everywhere(item, tags, f"{where}[{i}] > ", record)


def _set(ds: Dataset, tag: int, value: SetValue) -> None:
    ds.add(DataElement(tag, dictionary_VR(tag), value))


def apply_profile(
    profile: Profile,
    secret: bytes | None,
    ds: Dataset,
    record: Record = _ignore,
    *,
    top_level: bool = True,
) -> str:
    """Change ``ds`` (a header: pixel data, if present, is left alone) as ``profile`` says,
    in place, and return its SOP Instance UID afterwards (the one the C-STORE carries).

    ``secret`` keys the replacements; it is needed only when the profile de-identifies.
    ``record(attribute, action)`` is told of each change. Raises
    :class:`BurnedInAnnotationError` before changing anything when the instance must not be
    sent to this profile's destinations.

    ``top_level=False`` is for a part of a data set (the elements after the pixel data): the
    table, private and ``remove`` rules apply, but nothing is added or ``set``."""
    if top_level:
        check_burned_in(profile, ds)
    if profile.deidentify is not None:
        if not secret:
            raise ValueError("a de-identifying profile needs its secret")
        patient_id = str(ds.get("PatientID", "") or "")
        walker = _Walker(profile, Keyed(secret), patient_id, record)
        walker.walk(ds, "", dummy_rest=False)
        if not top_level:
            _remove_everywhere(ds, profile.remove_tags, "", record)
            return ""
        if _PATIENT_ID not in ds:
            ds.PatientID = walker.keyed.pseudonym(patient_id)
        if _PATIENT_NAME not in ds:
            ds.PatientName = walker.keyed.pseudonym(patient_id)
        _mark(ds, profile.options, record)
    if profile.remove:
        _remove_everywhere(ds, profile.remove_tags, "", record)
    if not top_level:
        return ""
    for tag, value in profile.set_tags.items():
        _set(ds, tag, value)
        record(attribute_label(tag), f"set to {value!r}")
    return str(ds.get("SOPInstanceUID", ""))


def describe(profile: Profile, ds: Dataset) -> list[Change]:
    """What ``profile`` would change in ``ds``, for ``dicom-router explain``: one entry per
    attribute changed, naming the action, never an original value. ``ds`` is not changed.

    A profile that refuses the instance (burned-in annotation) gives one entry saying so."""
    changes: list[Change] = []
    try:
        apply_profile(profile, _DESCRIBE_KEY, copy.deepcopy(ds), _collect(changes))
    except BurnedInAnnotationError as e:
        return [Change(attribute_label(0x00280301), f"instance refused: {e}")]
    return changes


def _collect(changes: list[Change]) -> Record:
    def record(attribute: str, action: str) -> None:
        changes.append(Change(attribute, action))

    return record

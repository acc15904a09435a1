"""Table tests generated from PS3.15 Table E.1-1 itself: every row, at the top level and
inside a sequence, with no option and with each option its row names."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from router.profiles import OPTIONS, apply_profile
from router.profiles.actions import dummy_value
from router.profiles.keyed import Keyed
from router.profiles.table import Action, Row, basic_action, effective_action, table
from tests.profiles.helpers import SAMPLE, SECRET, profile

ROWS = table().rows
PLAIN = [r for r in ROWS if r.value is not None]
#: written by the profile itself at the top level, whatever the table says
SPECIAL = {0x00100010, 0x00100020}
#: an attribute no row lists, to watch what happens inside a kept or dummied sequence
UNLISTED_TEXT = 0x00080104  # CodeMeaning (LO)
UNLISTED_NUMBER = 0x00280010  # Rows (US)


def test_the_table_is_complete_and_sourced() -> None:
    t = table()
    assert len(t.rows) == 621
    assert t.edition == "DICOM Standard 2024b"
    assert {r.basic for r in t.rows} == {
        "X",
        "Z",
        "D",
        "U",
        "X/Z",
        "X/D",
        "Z/D",
        "X/Z/D",
        "X/Z/U*",
    }
    assert {o for r in t.rows for o in r.options} == set(OPTIONS)
    assert {v for r in t.rows for v in r.options.values()} == {"K", "C"}
    assert len({r.tag for r in t.rows}) == len(t.rows)
    for r in PLAIN:
        assert r.value is not None
        dictionary_VR(r.value)  # every listed tag is a real attribute


def _sample(vr: str) -> Any:
    return SAMPLE[vr]


def _expected(row: Row, options: frozenset[str], vr: str) -> str:
    """What the element must look like afterwards, from the table alone."""
    entries = {row.options[o] for o in options if o in row.options}
    if "K" in entries:
        code = "K"
    elif "C" in entries:
        code = "C"
    else:
        code = str(basic_action(row.basic, sequence=vr == "SQ"))
    if vr == "SQ":
        return {"X": "absent", "Z": "empty", "D": "dummied items"}.get(code, "kept items")
    if code == "C":
        if vr in {"DA", "DT"}:
            return "shifted"
        if vr == "TM":
            return "kept"
        if vr in {"OB", "OW", "UN"}:
            return "absent"
        return "dummy"
    if code == "D" and vr == "UI":
        return "uid"
    return {"X": "absent", "Z": "empty", "D": "dummy", "U": "uid", "K": "kept"}[code]


def _observed(ds: Dataset, tag: int, vr: str) -> str:
    if tag not in ds:
        return "absent"
    elem = ds[tag]
    if vr == "SQ":
        if len(elem.value) == 0:
            return "empty"
        item = elem.value[0]
        assert item[UNLISTED_NUMBER].value == 1
        return "kept items" if item[UNLISTED_TEXT].value == "code meaning" else "dummied items"
    original = _sample(vr)
    if elem.is_empty:
        return "empty"
    if elem.value == original:
        return "kept"
    if vr == "UI" and elem.value == Keyed(SECRET).uid(original):
        return "uid"
    if vr in {"DA", "DT"} and elem.value != dummy_value(vr):
        shift = Keyed(SECRET).shift_days("PID")
        assert 1 <= shift <= 3650
        assert re.fullmatch(r"\d{8}.*", str(elem.value))
        return "shifted"
    assert elem.value == dummy_value(vr), f"{elem} is neither kept nor a dummy"
    return "dummy"


def _element_value(vr: str) -> Any:
    if vr == "SQ":
        item = Dataset()
        item.add_new(UNLISTED_TEXT, "LO", "code meaning")
        item.add_new(UNLISTED_NUMBER, "US", 1)
        return [item]
    return _sample(vr)


def _check(row: Row, options: frozenset[str], nested: bool) -> None:
    assert row.value is not None
    tag = row.value
    vr = dictionary_VR(tag)
    ds = Dataset()
    ds.PatientID = "PID"
    target = ds
    if nested:
        holder = Dataset()
        ds.ReferencedSeriesSequence = [holder]  # listed by no row: kept, walked into
        target = holder
    target.add_new(tag, vr, _element_value(vr))
    apply_profile(profile(*options), SECRET, ds)
    where = ds.ReferencedSeriesSequence[0] if nested else ds
    got = _observed(where, tag, vr)
    want = _expected(row, options, vr)
    assert got == want, f"{row.tag} {row.name} ({vr}) with {sorted(options)}: {got}, not {want}"


@pytest.mark.parametrize("row", [r for r in PLAIN if r.value not in SPECIAL], ids=lambda r: r.tag)
def test_each_row_acts_as_the_table_says(row: Row) -> None:
    for nested in (False, True):
        _check(row, frozenset(), nested)
        for option in row.options:
            _check(row, frozenset({option}), nested)


@pytest.mark.parametrize("row", [r for r in PLAIN if r.value in SPECIAL], ids=lambda r: r.tag)
def test_patient_name_and_id_become_the_pseudonym_at_every_depth(row: Row) -> None:
    assert row.value is not None
    ds = Dataset()
    ds.PatientID = "PID"
    holder = Dataset()
    holder.add_new(row.value, dictionary_VR(row.value), "PID")
    ds.ReferencedSeriesSequence = [holder]
    apply_profile(profile(), SECRET, ds)
    pseudonym = Keyed(SECRET).pseudonym("PID")
    assert ds.PatientID == pseudonym and ds.PatientName == pseudonym
    assert ds.ReferencedSeriesSequence[0][row.value].value == pseudonym


@pytest.mark.parametrize(
    ("tag", "vr", "cleaned"),
    [
        (0x50003000, "OW", False),
        (0x501E0010, "US", True),
        (0x60003000, "OW", False),
        (0x60024000, "LT", True),
    ],
)
def test_repeating_groups_curves_and_overlays(tag: int, vr: str, cleaned: bool) -> None:
    for nested in (False, True):
        ds = Dataset()
        target = Dataset() if nested else ds
        if nested:
            ds.ReferencedSeriesSequence = [target]
        target.add_new(tag, vr, _sample(vr))
        apply_profile(profile(), SECRET, ds)
        assert tag not in target
        target.add_new(tag, vr, _sample(vr))
        apply_profile(profile("clean_graphics"), SECRET, ds)
        if cleaned:  # text and numbers: cleaned to a dummy
            assert target[tag].value == dummy_value(vr)
        else:  # bitmaps cannot be cleaned here: removed
            assert tag not in target


def test_private_attributes_go_at_every_depth_even_with_retain_safe_private() -> None:
    for options in ((), ("retain_safe_private",)):
        ds = Dataset()
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        ds.add_new(0x00291010, "OB", b"\x00\x01")
        item = Dataset()
        item.add_new(0x00090010, "LO", "ACME")
        item.add_new(0x00091001, "LO", "secret")
        ds.ReferencedSeriesSequence = [item]
        apply_profile(profile(*options), SECRET, ds)
        assert not any(e.tag.is_private for e in ds.iterall())
        assert len(ds.ReferencedSeriesSequence) == 1


@pytest.mark.parametrize(
    ("code", "sequence", "want"),
    [
        ("X/Z", False, Action.ZERO),
        ("X/D", False, Action.DUMMY),
        ("Z/D", False, Action.DUMMY),
        ("X/Z/D", False, Action.DUMMY),
        ("X/Z/U*", False, Action.UID),
        ("X/Z", True, Action.ZERO),
        ("X/D", True, Action.REMOVE),
        ("Z/D", True, Action.ZERO),
        ("X/Z/D", True, Action.ZERO),
        ("X/Z/U*", True, Action.UID),
        ("D", True, Action.DUMMY),
    ],
)
def test_compound_actions_resolve(code: str, sequence: bool, want: Action) -> None:
    assert basic_action(code, sequence=sequence) is want


def test_keep_wins_over_clean_when_two_options_apply() -> None:
    row = Row("(0000,0000)", "made up", "X", {"clean_descriptors": "C", "retain_uids": "K"})
    both = frozenset({"clean_descriptors", "retain_uids"})
    assert effective_action(row, both, sequence=False) is Action.KEEP
    assert effective_action(row, frozenset({"clean_descriptors"}), sequence=False) is Action.CLEAN
    assert effective_action(row, frozenset(), sequence=False) is Action.REMOVE

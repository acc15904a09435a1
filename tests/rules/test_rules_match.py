"""Rule semantics (README, "Rules"), table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom import AllStoragePresentationContexts

from router.rules import RouteResult, RuleEngine, compile_rules
from router.samples import write_dataset

CT = CTImageStorage  # 1.2.840.10008.5.1.4.1.1.2
MR = MRImageStorage  # 1.2.840.10008.5.1.4.1.1.4


def header(**attrs: Any) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


BASE: dict[str, Any] = {
    "SOPClassUID": CT,
    "Modality": "CT",
    "BodyPartExamined": "CHEST",
    "PatientID": "0012345",
    "PatientName": "Doe^John",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "InstanceNumber": "12",
    "SliceThickness": "1.25",
    "Rows": 512,
    "StudyDate": "20240315",
    "StudyDescription": "",
}


def matches(match_yaml: str, calling: str = "CT_1", called: str = "ROUTER", **over: Any) -> bool:
    engine = compile_rules(f"- name: r\n  match: {match_yaml}\n  forward: [d]\n")
    attrs = {**BASE, **over}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return engine.route(header(**attrs), calling, called).destinations == ("d",)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        # scalar equals
        ("{Modality: CT}", True),
        ("{Modality: MR}", False),
        ("{Modality: ct}", False),  # case-sensitive; use regex (?i) for insensitive
        ("{PatientID: 0012345}", True),  # text as written: not YAML octal
        ("{PatientID: '0012345'}", True),
        ("{PatientID: 12345}", False),  # PatientID is text: no numeric comparison
        ("{PatientName: Doe^John}", True),
        # numbers compare numerically where the element is numeric
        ("{InstanceNumber: 12}", True),
        ("{InstanceNumber: 12.0}", True),
        ("{InstanceNumber: '012'}", True),
        ("{InstanceNumber: 13}", False),
        ("{SliceThickness: 1.25}", True),
        ("{SliceThickness: 1.250}", True),
        ("{Rows: 512}", True),
        ("{Rows: 511}", False),
        # multi-valued: any value equals
        ("{ImageType: PRIMARY}", True),
        ("{ImageType: AXIAL}", True),
        ("{ImageType: LOCALIZER}", False),
        # list: any of
        ("{Modality: [MR, CT]}", True),
        ("{Modality: [MR, US]}", False),
        ("{ImageType: [LOCALIZER, ORIGINAL]}", True),
        ("{Modality: [MR, {regex: '^C'}]}", True),
        # regex (re.search)
        ("{BodyPartExamined: {regex: '(?i)chest|thorax'}}", True),
        ("{BodyPartExamined: {regex: 'HES'}}", True),  # search, not fullmatch
        ("{BodyPartExamined: {regex: '^HES'}}", False),
        ("{BodyPartExamined: {regex: '^CHEST$'}}", True),
        ("{ImageType: {regex: '^AX'}}", True),
        ("{InstanceNumber: {regex: '^1'}}", True),
        # glob: whole value, * and ? only
        ("{BodyPartExamined: {glob: 'CH*'}}", True),
        ("{BodyPartExamined: {glob: 'CH?ST'}}", True),
        ("{BodyPartExamined: {glob: 'HES*'}}", False),
        ("{BodyPartExamined: {glob: 'ch*'}}", False),
        ("{BodyPartExamined: {glob: '[C]HEST'}}", False),  # [ is literal
        ("{ImageType: {glob: 'PRIM*'}}", True),
        # present
        ("{BodyPartExamined: {present: true}}", True),
        ("{BodyPartExamined: {present: false}}", False),
        ("{StudyDescription: {present: true}}", False),  # exists but empty
        ("{StudyDescription: {present: false}}", True),
        ("{AccessionNumber: {present: false}}", True),  # absent
        ("{AccessionNumber: {present: true}}", False),
        ("{AccessionNumber: ''}", True),  # '' means absent or empty
        # comparisons
        ("{InstanceNumber: {gt: 11}}", True),
        ("{InstanceNumber: {gt: 12}}", False),
        ("{InstanceNumber: {ge: 12}}", True),
        ("{InstanceNumber: {lt: 12}}", False),
        ("{InstanceNumber: {le: 12}}", True),
        ("{SliceThickness: {le: 2.5}}", True),
        ("{SliceThickness: {lt: 1}}", False),
        ("{InstanceNumber: {ge: 10, lt: 20}}", True),  # several operators: all hold
        ("{InstanceNumber: {ge: 13, lt: 20}}", False),
        ("{StudyDate: {ge: 20240101}}", True),  # DA digits compare as numbers
        ("{StudyDate: {lt: 20240101}}", False),
        ("{Modality: {gt: 1}}", False),  # not a number: never greater
        ("{AccessionNumber: {lt: 5}}", False),  # absent
        # not: <value>
        ("{Modality: {not: MR}}", True),
        ("{Modality: {not: CT}}", False),
        ("{Modality: {not: [CT, MR]}}", False),
        ("{ImageType: {not: {regex: LOCALIZER}}}", True),
        ("{ImageType: {not: AXIAL}}", False),
        ("{AccessionNumber: {not: X}}", True),  # absent is not X
        ("{BodyPartExamined: {not: {present: false}}}", True),
        # calling_ae / called_ae
        ("{calling_ae: CT_1}", True),
        ("{calling_ae: CT_2}", False),
        ("{calling_ae: {glob: 'CT_*'}}", True),
        ("{called_ae: ROUTER}", True),
        ("{called_ae: [A, B]}", False),
        # several keys: AND
        ("{Modality: CT, BodyPartExamined: CHEST}", True),
        ("{Modality: CT, BodyPartExamined: HEAD}", False),
        ("{}", True),
    ],
)
def test_value_forms(match: str, expected: bool) -> None:
    assert matches(match) is expected


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{any: [{Modality: MR}, {Modality: CT}]}", True),
        ("{any: [{Modality: MR}, {Modality: US}]}", False),
        ("{all: [{Modality: CT}, {BodyPartExamined: CHEST}]}", True),
        ("{all: [{Modality: CT}, {BodyPartExamined: HEAD}]}", False),
        ("{not: {Modality: MR}}", True),
        ("{not: {Modality: CT}}", False),
        ("{not: {Modality: CT, BodyPartExamined: HEAD}}", True),  # not (a and b)
        ("{any: [{all: [{Modality: CT}, {calling_ae: CT_1}]}, {Modality: MR}]}", True),
        ("{Modality: CT, not: {calling_ae: CT_TEST}}", True),
        ("{Modality: CT, any: [{calling_ae: X}, {called_ae: Y}]}", False),
        ("{not: {any: [{Modality: MR}, {Modality: US}]}}", True),
    ],
)
def test_combinators(match: str, expected: bool) -> None:
    assert matches(match) is expected


@pytest.mark.parametrize(
    "value",
    [
        "CTImageStorage",
        "CT Image Storage",
        "ct image storage",
        "'1.2.840.10008.5.1.4.1.1.2'",
        "1.2.840.10008.5.1.4.1.1.2",
        "[MRImageStorage, CTImageStorage]",
        "[MR Image Storage, 1.2.840.10008.5.1.4.1.1.2]",
        "{not: MRImageStorage}",
        "{regex: '^1\\.2\\.840\\.10008\\.5\\.1\\.4\\.1\\.1\\.2$'}",
        "{glob: '1.2.840.10008.5.1.4.1.1.*'}",
    ],
)
def test_uid_forms_match_ct(value: str) -> None:
    assert matches(f"{{SOPClassUID: {value}}}")


@pytest.mark.parametrize(
    "value",
    [
        "CTImageStorage",
        "CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2",
        "[EnhancedCTImageStorage, CTImageStorage]",
        "{regex: '\\.1\\.2$'}",
        "{glob: '*.1.1.2'}",
    ],
)
def test_uid_forms_do_not_match_mr(value: str) -> None:
    assert not matches(f"{{SOPClassUID: {value}}}", SOPClassUID=MR)


# Every storage SOP class pynetdicom offers and every transfer syntax pydicom publishes,
# named the three ways a rule may name it (a name starting with a digit, such as
# "12-lead ECG Waveform Storage", reads as a dotted UID: write its keyword).
_NAMED_UIDS = sorted(
    {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    | {str(ts) for ts in AllTransferSyntaxes}
)


@pytest.mark.parametrize("uid", _NAMED_UIDS)
def test_every_storage_class_and_syntax_is_named_by_keyword_and_name(uid: str) -> None:
    u = UID(uid)
    forms = [u.keyword, u.name, u.name.lower()]
    for form in (f for f in forms if f and not f[0].isdigit()):
        assert matches(f"{{SOPClassUID: '{form}'}}", SOPClassUID=uid), form
        assert not matches(f"{{SOPClassUID: '{form}'}}", SOPClassUID="1.2.3.4"), form


@pytest.mark.parametrize(
    ("name", "current", "retired"),
    [
        ("Ultrasound Image Storage", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6"),
        (
            "Ultrasound Multi-frame Image Storage",
            "1.2.840.10008.5.1.4.1.1.3.1",
            "1.2.840.10008.5.1.4.1.1.3",
        ),
        (
            "Nuclear Medicine Image Storage",
            "1.2.840.10008.5.1.4.1.1.20",
            "1.2.840.10008.5.1.4.1.1.5",
        ),
    ],
)
def test_a_name_shared_with_a_retired_class_means_the_current_one(
    name: str, current: str, retired: str
) -> None:
    assert matches(f"{{SOPClassUID: {name}}}", SOPClassUID=current)
    assert not matches(f"{{SOPClassUID: {name}}}", SOPClassUID=retired)
    # the retired class is still named by its keyword
    keyword = UID(retired).keyword
    assert matches(f"{{SOPClassUID: {keyword}}}", SOPClassUID=retired)


def test_uid_read_from_a_padded_file_matches(tmp_path: Path) -> None:
    # odd-length UIDs are NUL-padded on disk
    path = write_dataset(tmp_path / "ct.dcm", size=2000, BodyPartExamined="CHEST")
    ds = dcmread(path, stop_before_pixels=True)
    engine = compile_rules(
        "- {name: r, match: {SOPClassUID: CTImageStorage, "
        "TransferSyntaxUID: ExplicitVRLittleEndian, BodyPartExamined: CHEST}, forward: [d]}"
    )
    assert engine.route(ds).destinations == ("d",)


@pytest.mark.parametrize(
    "key",
    [
        "Modality",
        "(0008,0060)",
        "(0008, 0060)",
        "00080060",
        "0x00080060",
        "0008,0060",
        "(0008,0060)",
    ],
)
def test_tag_forms(key: str) -> None:
    assert matches(f"{{'{key}': CT}}")
    assert not matches(f"{{'{key}': MR}}")


def test_private_tag_and_file_meta() -> None:
    ds = header(Modality="CT")
    ds.add_new(0x00190010, "LO", "ACME 1.0")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    engine = compile_rules(
        """
- name: private
  match: {'(0019,0010)': {glob: 'ACME*'}, TransferSyntaxUID: ExplicitVRLittleEndian}
  forward: [d]
"""
    )
    assert engine.route(ds).destinations == ("d",)
    assert engine.tags == frozenset({0x00190010, 0x00020010})


RULES = """
- name: ct-to-ai
  match: {Modality: CT}
  forward: [ai, pacs]
- name: chest-to-research
  match: {BodyPartExamined: CHEST}
  forward: [research, ai]
- name: sr-stops
  match: {Modality: SR}
  stop: true
- name: mr-only-to-mr
  match: {Modality: MR}
  forward: [mr]
  stop: true
- name: all-to-pacs
  forward: [pacs]
"""


@pytest.mark.parametrize(
    ("attrs", "dests", "names"),
    [
        (
            {"Modality": "CT", "BodyPartExamined": "CHEST"},
            ("ai", "pacs", "research"),  # union in file order, each once
            ("ct-to-ai", "chest-to-research", "all-to-pacs"),
        ),
        ({"Modality": "CT"}, ("ai", "pacs"), ("ct-to-ai", "all-to-pacs")),
        ({"Modality": "MR"}, ("mr",), ("mr-only-to-mr",)),  # stop ends evaluation
        (
            {"Modality": "MR", "BodyPartExamined": "CHEST"},
            ("research", "ai", "mr"),
            ("chest-to-research", "mr-only-to-mr"),
        ),
        ({"Modality": "SR"}, (), ("sr-stops",)),  # stop without forward: unrouted
        ({"Modality": "US"}, ("pacs",), ("all-to-pacs",)),
    ],
)
def test_union_order_and_stop(
    attrs: dict[str, str], dests: tuple[str, ...], names: tuple[str, ...]
) -> None:
    engine = compile_rules(RULES, destinations={"ai", "pacs", "research", "mr"})
    result = engine.route(header(**attrs), "CT_1", "ROUTER")
    assert result.destinations == dests
    assert tuple(m.name for m in result.matches) == names
    assert all(m.reasons == () for m in result.matches)


def test_no_match_is_unrouted() -> None:
    engine = compile_rules("- {name: ct, match: {Modality: CT}, forward: [pacs]}")
    result = engine.route(header(Modality="MR"))
    assert result == RouteResult((), ())
    assert result.unrouted
    assert RuleEngine().route(header()).unrouted


def test_explain_gives_reasons() -> None:
    engine = compile_rules(
        """
- name: ct-chest-to-ai
  match:
    SOPClassUID: CTImageStorage
    BodyPartExamined: {regex: "(?i)chest|thorax"}
  forward: [ai]
- name: everything-to-pacs
  forward: [pacs]
"""
    )
    result = engine.explain(header(SOPClassUID=CT, BodyPartExamined="CHEST"))
    assert result.destinations == ("ai", "pacs")
    first, second = result.matches
    assert first.reasons == (
        "SOPClassUID 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage) matched "
        "= 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)",
        "BodyPartExamined 'CHEST' matched regex '(?i)chest|thorax'",
    )
    assert second.reasons == ("no match: the rule applies to every instance",)


def test_explain_combinators_and_stop() -> None:
    engine = compile_rules(
        """
- name: r
  match:
    any: [{Modality: MR}, {ImageType: PRIMARY}]
    not: {calling_ae: CT_TEST}
  forward: [d]
  stop: true
"""
    )
    (m,) = engine.explain(header(Modality="CT", ImageType=["ORIGINAL", "PRIMARY"]), "CT_1").matches
    assert m.reasons == (
        "ImageType ['ORIGINAL', 'PRIMARY'] matched = 'PRIMARY'",
        "not (calling_ae = 'CT_TEST'): it does not hold",
        "stop: true ends evaluation",
    )


class _Exploding(Dataset):
    def get(self, key: Any, default: Any = None) -> Any:
        raise ValueError("cannot decode")


def test_undecodable_element_counts_as_absent() -> None:
    engine = compile_rules("- {name: r, match: {InstanceNumber: {present: false}}, forward: [d]}")
    assert engine.route(_Exploding()).destinations == ("d",)


def test_sequence_element_presence() -> None:
    inner = Dataset()
    inner.CodeValue = "X"
    ds = header(Modality="CT")
    ds.ProcedureCodeSequence = [inner]
    engine = compile_rules(
        "- {name: r, match: {ProcedureCodeSequence: {present: true}}, forward: [d]}"
    )
    assert engine.route(ds).destinations == ("d",)
    assert engine.route(header(Modality="CT")).destinations == ()

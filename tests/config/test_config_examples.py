"""The example config and every example rule set users copy load cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from router.config import check, load_config
from router.rules import compile_rules

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "rules").glob("*.yaml"))
ALL_DESTINATIONS = {"pacs", "ai", "cardio", "mammo", "research", "teaching"}


def test_example_config_loads() -> None:
    path = REPO / "router.example.yaml"
    assert check(path) == []
    c = load_config(path)
    assert (c.listen.host, c.listen.port) == ("0.0.0.0", 11112)
    assert c.storage.path == REPO / "var"
    assert (c.http.host, c.http.port) == ("127.0.0.1", 9108)
    assert {n: (d.host, d.port) for n, d in c.destinations.items()} == {
        "pacs": ("127.0.0.1", 11113),
        "ai": ("127.0.0.1", 11114),
    }
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.BodyPartExamined = "CHEST"
    assert c.rules.route(ds, "CT_1", "ROUTER").destinations == ("ai", "pacs")


def test_there_are_example_rule_sets() -> None:
    names = {p.name for p in RULE_FILES}
    assert {"ct-chest-to-ai.yaml", "everything-to-pacs.yaml", "by-modality.yaml"} <= names
    assert "by-calling-ae.yaml" in names


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_example_rule_file_compiles(path: Path) -> None:
    engine = compile_rules(path.read_text(), destinations=ALL_DESTINATIONS, file=str(path))
    assert len(engine) >= 1


def test_all_example_rules_together_via_glob(tmp_path: Path) -> None:
    dests = "".join(
        f"  {n}: {{ae_title: {n.upper()}, host: 127.0.0.1, port: {11113 + i}}}\n"
        for i, n in enumerate(sorted(ALL_DESTINATIONS))
    )
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        f"ae_title: ROUTER\nstorage: {{path: ./var}}\ndestinations:\n{dests}"
        f"rules: {REPO / 'rules'}/*.yaml\n"
    )
    assert [str(p) for p in check(cfg)] == []
    assert len(load_config(cfg).rules) == sum(
        len(compile_rules(p.read_text(), destinations=ALL_DESTINATIONS)) for p in RULE_FILES
    )


def _ds(**attrs: object) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("file", "attrs", "calling", "called", "dests"),
    [
        (
            "ct-chest-to-ai.yaml",
            {
                "SOPClassUID": CT,
                "BodyPartExamined": "LUNG",
                "ImageType": ["ORIGINAL", "PRIMARY"],
                "SliceThickness": "1.0",
            },
            "CT_1",
            "ROUTER",
            ("ai",),
        ),
        (
            "ct-chest-to-ai.yaml",
            {
                "SOPClassUID": CT,
                "BodyPartExamined": "CHEST",
                "ImageType": ["ORIGINAL", "LOCALIZER"],
                "SliceThickness": "1.0",
            },
            "CT_1",
            "ROUTER",
            (),
        ),
        ("by-modality.yaml", {"Modality": "SR"}, "X", "ROUTER", ()),
        ("by-modality.yaml", {"Modality": "MG"}, "X", "ROUTER", ("mammo", "pacs")),
        (
            "by-modality.yaml",
            {"Modality": "US", "StudyDescription": "Echo"},
            "X",
            "ROUTER",
            ("cardio", "pacs"),
        ),
        ("by-calling-ae.yaml", {}, "RESEARCH_MR", "ROUTER", ("research",)),
        ("by-calling-ae.yaml", {}, "CT_TEST", "ROUTER", ()),
        ("by-calling-ae.yaml", {}, "CT_2", "ROUTER_TEACH", ("teaching", "pacs")),
        ("exclude-and-anonymised.yaml", {"PatientID": "QA123"}, "X", "ROUTER", ()),
        (
            "exclude-and-anonymised.yaml",
            {"PatientID": "1", "StudyDate": "20250101", "PatientIdentityRemoved": "YES"},
            "X",
            "ROUTER",
            (),
        ),  # no private creator
    ],
)
def test_example_rule_behaviour(
    file: str, attrs: dict[str, object], calling: str, called: str, dests: tuple[str, ...]
) -> None:
    engine = compile_rules((REPO / "rules" / file).read_text(), destinations=ALL_DESTINATIONS)
    assert engine.route(_ds(**attrs), calling, called).destinations == dests

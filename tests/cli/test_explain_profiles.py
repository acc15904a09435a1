"""`dicom-router explain` lists what each matched destination's profile would change, and
never prints an original value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.cli import main
from tests.profiles.helpers import IDENTIFYING, ct_instance, new_uid, part10

CONFIG = """\
ae_title: ROUTER
storage: {path: ./storage}
profiles:
  research:
    deidentify: {secret_file: research.key, options: [retain_device_identity]}
    set: {ClinicalTrialSiteID: SITE-A}
    remove: [InstitutionName]
destinations:
  pacs: {ae_title: PACS, host: 10.1.2.3, port: 104}
  research: {ae_title: RESEARCH, host: 10.1.2.20, port: 104, profile: research}
  other: {ae_title: OTHER, host: 10.1.2.21, port: 104, profile: research}
rules:
  - {name: ct, match: {Modality: CT}, forward: [pacs, research]}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "research.key").write_bytes(b"0123456789abcdef0123")
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG)
    return path


def instance(tmp_path: Path, **attrs: str) -> Path:
    ds = ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x00" * 32)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return part10(ds, tmp_path / "ct.dcm")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["explain", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_json_lists_the_changes_of_each_matched_profiled_destination(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = run(capsys, "--config", str(config), "--json", str(instance(tmp_path)))
    assert rc == 0
    (result,) = json.loads(out)
    (profiled,) = result["profiles"]  # pacs has no profile; other did not match
    assert (profiled["destination"], profiled["profile"]) == ("research", "research")
    actions = {c["attribute"]: c["action"] for c in profiled["changes"]}
    assert actions["PatientID (0010,0020)"] == "pseudonym"
    assert actions["SOPInstanceUID (0008,0018)"] == "UID replaced"
    assert actions["StudyInstanceUID (0020,000D)"] == "UID replaced"
    assert actions["(0009,1001)"] == "removed (private)"
    assert actions["RequestAttributesSequence (0040,0275)"] == "removed"
    assert "StationName (0008,1010)" not in actions  # kept: retain_device_identity
    assert actions["ClinicalTrialSiteID (0012,0030)"] == "set to 'SITE-A'"
    assert actions["InstitutionName (0008,0080)"] == "removed (profile)"
    for value in IDENTIFYING:
        assert value not in out, value


def test_text_output_names_the_profile_and_each_change_without_values(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = run(capsys, "--config", str(config), str(instance(tmp_path)))
    assert rc == 0
    assert "  profile research for research: " in out
    assert "    PatientName (0010,0010): pseudonym" in out
    assert "    AccessionNumber (0008,0050): emptied" in out
    for value in IDENTIFYING:
        assert value not in out, value


def test_a_burned_in_instance_is_shown_as_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = instance(tmp_path, BurnedInAnnotation="YES")
    rc, out = run(capsys, "--config", str(config), str(path))
    assert rc == 0
    assert "profile research for research: 1 change\n" in out
    assert "BurnedInAnnotation (0028,0301): instance refused: BurnedInAnnotation is YES" in out

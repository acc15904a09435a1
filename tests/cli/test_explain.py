"""`dicom-router explain` on a set of files (synthetic and pydicom's) and rule files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.cli import main
from router.samples import write_dataset

CONFIG = """\
ae_title: ROUTER
storage: {path: ./storage}
destinations:
  pacs: {ae_title: PACS, host: 10.1.2.3, port: 104}
  ai: {ae_title: AI_NODE, host: 10.1.2.9, port: 11112}
  archive: {ae_title: ARCHIVE, host: 10.1.2.4, port: 104}
rules: rules/*.yaml
"""

RULES_10 = """\
- name: ct-chest-to-ai
  match:
    SOPClassUID: CTImageStorage
    BodyPartExamined: {regex: "(?i)chest|thorax"}
  forward: [ai]
- name: rtplan-archive-only
  match:
    SOPClassUID: [RT Plan Storage]
  forward: [archive]
  stop: true
"""

RULES_20 = """\
- name: from-ct1
  match: {calling_ae: CT_1, Modality: {not: MR}}
  forward: [archive]
- name: everything-to-pacs
  forward: [pacs]
"""


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10-clinical.yaml").write_text(RULES_10)
    (tmp_path / "rules" / "20-default.yaml").write_text(RULES_20)
    cfg = tmp_path / "router.yaml"
    cfg.write_text(CONFIG)
    return cfg


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["explain", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_explain_json_on_a_set_of_files(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chest = write_dataset(tmp_path / "chest.dcm", 2000)  # CT, BodyPartExamined CHEST
    head = write_dataset(tmp_path / "head.dcm", 2000, BodyPartExamined="HEAD")
    files = [chest, head, pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
    files.append(pydicom_file("rtplan.dcm"))
    rc, out, _ = explain(capsys, "--config", str(config), "--json", *map(str, files))
    assert rc == 0
    results = {Path(r["file"]).name: r for r in json.loads(out)}

    def rules(name: str) -> list[str]:
        return [m["rule"] for m in results[name]["matched"]]

    assert rules("chest.dcm") == ["ct-chest-to-ai", "everything-to-pacs"]
    assert results["chest.dcm"]["destinations"] == ["ai", "pacs"]
    assert results["chest.dcm"]["not_matched"] == ["rtplan-archive-only", "from-ct1"]
    why = results["chest.dcm"]["matched"][0]
    assert why["file"].endswith("10-clinical.yaml") and why["line"] == 1
    assert any("BodyPartExamined 'CHEST'" in r and "regex" in r for r in why["reasons"])
    assert any(r.startswith("SOPClassUID 1.2.840.10008.5.1.4.1.1.2") for r in why["reasons"])

    assert rules("head.dcm") == ["everything-to-pacs"]
    assert results["head.dcm"]["destinations"] == ["pacs"]
    # pydicom's CT has no BodyPartExamined: the regex cannot match
    assert results["CT_small.dcm"]["destinations"] == ["pacs"]
    assert results["MR_small.dcm"]["destinations"] == ["pacs"]
    # stop: true ends evaluation; the later rules are listed as not evaluated
    assert rules("rtplan.dcm") == ["rtplan-archive-only"]
    assert results["rtplan.dcm"]["destinations"] == ["archive"]
    assert results["rtplan.dcm"]["not_evaluated"] == ["from-ct1", "everything-to-pacs"]
    assert "RT Plan Storage" in results["rtplan.dcm"]["sop_class_uid"]
    for r in results.values():
        assert r["error"] is None and r["unrouted"] is False
        assert r["calling_ae"] == "" and r["called_ae"] == "ROUTER"


def test_explain_text_with_calling_ae(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chest = write_dataset(tmp_path / "chest.dcm", 2000)
    mr = pydicom_file("MR_small.dcm")
    rc, out, _ = explain(
        capsys, "--config", str(config), "--calling-ae", "CT_1", str(chest), str(mr)
    )
    assert rc == 0
    chest_part, mr_part = out.split(f"{mr}:\n")
    assert chest_part.startswith(f"{chest}:\n")
    assert "  calling AE: CT_1  called AE: ROUTER" in chest_part
    assert "10-clinical.yaml:1) matched -> ai" in chest_part
    assert "20-default.yaml:1) matched -> archive" in chest_part
    assert "    because calling_ae 'CT_1' matched = 'CT_1'" in chest_part
    assert "    because Modality 'CT' matched not (= 'MR')" in chest_part
    assert "    because no match: the rule applies to every instance" in chest_part
    # in rule file order, each once
    assert chest_part.rstrip().endswith(
        "destinations: ai (AI_NODE@10.1.2.9:11112), archive (ARCHIVE@10.1.2.4:104), "
        "pacs (PACS@10.1.2.3:104)"
    )
    # the MR from CT_1: not (Modality MR) fails, so only the default rule
    assert "rule from-ct1" not in mr_part
    assert "rules not matched: ct-chest-to-ai, rtplan-archive-only, from-ct1" in mr_part
    assert mr_part.rstrip().endswith("destinations: pacs (PACS@10.1.2.3:104)")


def test_explain_unrouted_and_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        "ae_title: ROUTER\nstorage: {path: ./s}\n"
        "destinations: {pacs: {ae_title: PACS, host: h, port: 104}}\n"
        "rules:\n  - name: mr-only\n    match: {Modality: MR}\n    forward: [pacs]\n"
    )
    ct = write_dataset(tmp_path / "ct.dcm", 2000)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    rc, out, _ = explain(capsys, "--config", str(cfg), str(ct))
    assert rc == 0
    assert "  no rule matched" in out
    assert "destinations: none (it would be kept as unrouted)" in out
    rc, out, _ = explain(capsys, "--config", str(cfg), "--json", str(ct), str(tmp_path / "nope"))
    assert rc == 1  # one file could not be read
    ok, missing = json.loads(out)
    assert ok["unrouted"] is True and ok["destinations"] == [] and ok["error"] is None
    assert missing["error"].startswith("cannot read DICOM file")


def test_explain_with_a_bad_config_prints_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        "ae_title: ROUTER\nstorage: {path: ./s}\nrules:\n"
        "  - name: r\n    match: {NoSuchKeyword: 1}\n    forward: [nowhere]\n"
    )
    rc, out, err = explain(capsys, "--config", str(cfg), str(write_dataset(tmp_path / "a.dcm")))
    assert rc == 1 and out == ""
    assert "NoSuchKeyword" in err and "nowhere" in err
    assert all(line.startswith(f"{cfg}:") for line in err.splitlines())

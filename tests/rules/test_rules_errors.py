"""Invalid rules: each gives one Problem naming file, line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import check
from router.rules import ConfigError, compile_rules

HEAD = """\
ae_title: ROUTER
storage: {path: ./var}
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 11113}
  ai: {ae_title: AI_NODE, host: 127.0.0.1, port: 11114}
rules:
  - name: r
"""
# The rule under test starts on line 7; its body lines follow from line 8.


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "    match: {BodyPartExamind: CHEST}\n    forward: [pacs]\n",
            8,
            "rules.r.match.BodyPartExamind: unknown DICOM keyword 'BodyPartExamind' "
            "(did you mean 'BodyPartExamined'?)",
        ),
        (
            "    match: {patientid: X}\n    forward: [pacs]\n",
            8,
            "(did you mean 'PatientID'? keywords are case-sensitive)",
        ),
        (
            "    match:\n      '(0010,002G)': X\n    forward: [pacs]\n",
            9,
            "'(0010,002G)' is not a tag: write (gggg,eeee) or ggggeeee in hexadecimal",
        ),
        (
            "    match:\n      regex: CT\n    forward: [pacs]\n",
            9,
            "'regex' is an operator: put it under a key",
        ),
        (
            "    match:\n      Modality: {regex: '(CT'}\n    forward: [pacs]\n",
            9,
            "rules.r.match.Modality.regex: bad regular expression '(CT': "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            "    match:\n      Modality: {regx: CT}\n    forward: [pacs]\n",
            9,
            "rules.r.match.Modality: unknown operator 'regx' (did you mean 'regex'?)",
        ),
        (
            "    match:\n      SOPClassUID: CTImageStorag\n    forward: [pacs]\n",
            9,
            "unknown UID keyword or name 'CTImageStorag' (did you mean 'CTImageStorage'?)",
        ),
        (
            "    match:\n      SOPClassUID: [CTImageStorage, 1.2.03]\n    forward: [pacs]\n",
            9,
            "'1.2.03' is not a valid UID (dot-separated numbers without leading zeros",
        ),
        (
            "    match:\n      SOPClassUID: Not A Real Storage\n    forward: [pacs]\n",
            9,
            "unknown UID keyword or name 'Not A Real Storage'",
        ),
        (
            "    match:\n      InstanceNumber: {gt: many}\n    forward: [pacs]\n",
            9,
            "rules.r.match.InstanceNumber.gt: expected a number, got 'many'",
        ),
        (
            "    match:\n      Modality: {present: maybe}\n    forward: [pacs]\n",
            9,
            "rules.r.match.Modality.present: expected true or false, got 'maybe'",
        ),
        (
            "    match:\n      Modality:\n    forward: [pacs]\n",
            9,
            "rules.r.match.Modality: no value: write a value, a list, or '{present: false}'",
        ),
        (
            "    match:\n      Modality: []\n    forward: [pacs]\n",
            9,
            "rules.r.match.Modality: an empty list matches nothing",
        ),
        (
            "    match:\n      any: {Modality: CT}\n    forward: [pacs]\n",
            9,
            "rules.r.match.any: expected a non-empty list of matches",
        ),
        (
            "    match: [Modality]\n    forward: [pacs]\n",
            8,
            "rules.r.match: expected a mapping of keys to values",
        ),
        (
            "    forward: [pacs, aii]\n",
            8,
            "rules.r.forward: unknown destination 'aii' (did you mean 'ai'?); "
            "destinations: ai, pacs",
        ),
        (
            "    match: {Modality: CT}\n",
            7,
            "rules.r: missing 'forward' (add e.g. 'forward: [pacs]'",
        ),
        ("    forward: []\n", 8, "rules.r.forward: empty: name at least one destination"),
        (
            "    destinations: [pacs]\n",
            8,
            "rules.r: unknown key 'destinations' (did you mean 'forward'?)",
        ),
        ("    forward: [pacs]\n    stopp: true\n", 9, "unknown key 'stopp' (did you mean 'stop'?)"),
        (
            "    forward: [pacs]\n    stop: yes please\n",
            9,
            "rules.r.stop: expected true or false",
        ),
        (
            "    forward: [pacs]\n  - name: r\n    forward: [ai]\n",
            9,
            "rules.r: duplicate rule name (also at ",
        ),
        (
            "    match:\n      Modality: CT\n      Modality: MR\n    forward: [pacs]\n",
            10,
            "duplicate key 'Modality' (first on line 9): remove one",
        ),
    ],
)
def test_rule_problem(tmp_path: Path, body: str, line: int, message: str) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD + body)
    problems = check(cfg)
    assert len(problems) == 1, problems
    (p,) = problems
    assert (p.file, p.line) == (str(cfg), line), str(p)
    assert message in p.message, str(p)
    assert str(p).startswith(f"{cfg}:{line}: ")


def test_missing_name(tmp_path: Path) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD.replace("  - name: r\n", "  - forward: [pacs]\n"))
    (p,) = check(cfg)
    assert p.line == 7
    assert p.message == "rules[0]: missing 'name' (add e.g. 'name: ct-to-pacs')"


def test_problems_in_a_rule_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text("- name: a\n  forward: [pacs]\n")
    (tmp_path / "rules" / "b.yaml").write_text(
        "# comment\n- name: b\n  match:\n    Modalty: CT\n  forward: [pacs]\n"
    )
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD.split("rules:")[0] + "rules: rules/*.yaml\n")
    (p,) = check(cfg)
    assert p.file == str(tmp_path / "rules" / "b.yaml")
    assert p.line == 4
    assert "unknown DICOM keyword 'Modalty' (did you mean 'Modality'?)" in p.message


@pytest.mark.parametrize(
    ("rules_value", "message"),
    [
        ("rules/*.yaml", "rules: 'rules/*.yaml' matches no file in "),
        ("rules/site.yaml", "rules: file 'rules/site.yaml' not found (looked for "),
        ("{a: 1}", "rules: expected a list of rules or a path/glob of rule files"),
    ],
)
def test_rule_sources(tmp_path: Path, rules_value: str, message: str) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD.split("rules:")[0] + f"rules: {rules_value}\n")
    (p,) = check(cfg)
    assert (p.file, p.line) == (str(cfg), 6)
    assert p.message.startswith(message), p.message
    if "/" in rules_value:
        assert "relative to the config file's directory" in p.message


def test_rule_file_with_wrong_shape(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("name: a\nforward: [pacs]\n")
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD.split("rules:")[0] + "rules: r.yaml\n")
    (p,) = check(cfg)
    assert (p.file, p.line) == (str(tmp_path / "r.yaml"), 1)
    assert "a rules file holds a list of rules" in p.message


def test_rule_file_yaml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("- name: a\n  forward: [pacs\n")
    cfg = tmp_path / "router.yaml"
    cfg.write_text(HEAD.split("rules:")[0] + "rules: [r.yaml]\n")
    (p,) = check(cfg)
    assert p.file == str(tmp_path / "r.yaml")
    assert p.line == 3
    assert p.message.startswith("YAML syntax error: ")


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as e:
        compile_rules(
            """
- name: a
  match: {Modalty: CT, SOPClassUID: Nope}
  forward: [x]
- name: b
""",
            destinations={"pacs"},
        )
    messages = [p.message for p in e.value.problems]
    assert len(messages) == 4, messages
    assert [p.line for p in e.value.problems] == [3, 3, 4, 5]

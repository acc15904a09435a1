"""``profiles:`` and a destination's ``profile:``: each mistake is one line naming the file,
the line and the fix; secret files are relative to the config file and read at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.config import Config, check, load_config

KEY = b"0123456789abcdef0123456789abcdef"

HEAD = """\
ae_title: ROUTER
storage: {path: ./var}
"""

EXAMPLE = (
    HEAD
    + """\
profiles:
  research:
    deidentify:
      secret_file: secrets/research.key
      options: [retain_device_identity, retain_patient_characteristics]
    set: {ClinicalTrialSiteID: SITE-A}
    remove: [InstitutionName, "(0009,1001)"]
destinations:
  research: {ae_title: RESEARCH, host: 10.1.2.20, port: 104, profile: research}
  pacs: {ae_title: PACS, host: 10.1.2.3, port: 104}
"""
)


def setup(tmp_path: Path, text: str, key: bytes | None = KEY) -> Path:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    if key is not None:
        (tmp_path / "secrets" / "research.key").write_bytes(key)
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_the_contract_example_loads_with_its_key_read_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = setup(tmp_path, EXAMPLE, KEY + b"\n")
    monkeypatch.chdir("/")
    cfg = load_config(path)
    profile = cfg.profiles["research"]
    assert profile.deidentify is not None
    assert profile.deidentify.secret_file == tmp_path / "secrets" / "research.key"
    assert profile.secret == KEY  # the trailing line break is not part of the key
    assert cfg.destinations["research"].profile == "research"
    assert cfg.destinations["pacs"].profile is None
    assert KEY.decode() not in repr(cfg)
    assert check(path) == []


def test_a_reload_reads_the_key_again(tmp_path: Path) -> None:
    path = setup(tmp_path, EXAMPLE)
    before = load_config(path)
    (tmp_path / "secrets" / "research.key").write_bytes(b"a rotated key, long enough")
    after = load_config(path)
    assert before.profiles["research"].secret == KEY
    assert after.profiles["research"].secret == b"a rotated key, long enough"
    assert before.profiles != after.profiles


def test_a_profile_without_deidentify_needs_no_key(tmp_path: Path) -> None:
    text = HEAD + "profiles:\n  tag: {set: {ClinicalTrialSiteID: S}, remove: [InstitutionName]}\n"
    cfg = load_config(setup(tmp_path, text, key=None))
    assert cfg.profiles["tag"].secret is None


def _profile(body: str) -> str:
    return HEAD + "profiles:\n  research:\n" + body  # the profile's body starts on line 5


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        (
            _profile("    deidentify: {secret_file: secrets/research.key, options: [keep_all]}\n"),
            KEY,
            5,
            "profiles.research.deidentify.options: unknown option 'keep_all': use one of "
            "retain_safe_private",
        ),
        (
            _profile("    remove: [InstitutionNmae]\n"),
            KEY,
            5,
            "profiles.research.remove: 'InstitutionNmae' is neither a DICOM keyword nor a tag",
        ),
        (
            _profile("    set: {PatientWeight: heavy}\n"),
            KEY,
            5,
            "profiles.research.set: PatientWeight (0010,1030): ",
        ),
        (
            _profile("    set: {'(0009,1001)': x}\n"),
            KEY,
            5,
            "is a private tag, whose VR the router cannot know",
        ),
        (
            _profile("    sett: {PatientWeight: 70}\n"),
            KEY,
            5,
            "profiles.research.sett: unknown key (did you mean 'set'?); valid here: "
            "deidentify, set, remove, allow_burned_in",
        ),
        (
            _profile("    deidentify:\n      secret_file: secrets/research.key\n      salt: x\n"),
            KEY,
            7,
            "profiles.research.deidentify.salt: unknown key; valid here: secret_file, options",
        ),
        (
            _profile("    deidentify: {secret_file: secrets/research.key}\n"),
            None,
            5,
            "research.key does not exist: write at least 16 random bytes to it, e.g. "
            "`head -c 32 /dev/urandom > ",
        ),
        (
            _profile("    deidentify: {secret_file: secrets/research.key}\n"),
            b"\n",
            5,
            "research.key is empty: write at least 16 random bytes",
        ),
        (
            _profile("    deidentify: {secret_file: secrets/research.key}\n"),
            b"short",
            5,
            "research.key holds only 5 bytes: write at least 16 random bytes",
        ),
        (
            _profile("    deidentify: {secret_file: secrets}\n"),
            KEY,
            5,
            "secrets is a directory: name a file",
        ),
        (
            _profile("    deidentify: {secret_file: ''}\n"),
            KEY,
            5,
            "secret_file is empty: name a file holding the secret key",
        ),
        (
            _profile("    allow_burned_in: sometimes\n"),
            KEY,
            5,
            "profiles.research.allow_burned_in: expected true or false, got 'sometimes'",
        ),
        (
            HEAD
            + "profiles:\n  research: {}\n"
            + "destinations:\n  r: {ae_title: R, host: h, port: 104, profile: reserch}\n",
            KEY,
            6,
            "destinations.r.profile: no profile 'reserch' under profiles: (defined: research); "
            "add it or fix the name",
        ),
        (
            HEAD + "destinations:\n  r: {ae_title: R, host: h, port: 104, profile: research}\n",
            KEY,
            4,
            "destinations.r.profile: no profile 'research' under profiles: (defined: none)",
        ),
        (
            HEAD + "profiles:\n  'research one': {}\n",
            KEY,
            4,
            "'research one' is not a profile name",
        ),
    ],
)
def test_profile_problem(
    tmp_path: Path, text: str, key: bytes | None, line: int, message: str
) -> None:
    path = setup(tmp_path, text, key)
    problems = check(path)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert (problem.file, problem.line) == (str(path), line), str(problem)
    assert message in problem.message, str(problem)
    assert "\n" not in str(problem) and "Traceback" not in str(problem)


def test_every_mistake_of_one_profile_is_reported(tmp_path: Path) -> None:
    text = _profile(
        "    deidentify: {secret_file: missing.key, options: [keep_all]}\n"
        "    remove: [Nonsense]\n"
        "    colour: red\n"
    )
    problems = check(setup(tmp_path, text))
    assert [p.line for p in problems] == [5, 5, 6, 7], [str(p) for p in problems]


def test_an_unknown_profile_is_refused_without_the_loader_too() -> None:
    with pytest.raises(ValidationError, match="no profile 'x'"):
        Config.model_validate(
            {
                "ae_title": "R",
                "storage": {"path": "/x"},
                "destinations": {"d": {"ae_title": "D", "host": "h", "port": 104, "profile": "x"}},
            }
        )

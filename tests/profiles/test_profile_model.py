"""The profile model's validation: each mistake gets a message that says how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from router.profiles import OPTIONS, Profile, SecretError, load_secret, parse_attribute


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        Profile.model_validate(data)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return f"{'.'.join(str(p) for p in errors[0]['loc'])}: {errors[0]['msg']}"


def test_the_contract_example_validates() -> None:
    p = Profile.model_validate(
        {
            "deidentify": {
                "secret_file": "secrets/research.key",
                "options": ["retain_device_identity", "retain_patient_characteristics"],
            },
            "set": {"ClinicalTrialSiteID": "SITE-A"},
            "remove": ["InstitutionName", "(0009,1001)"],
        }
    )
    assert p.deidentify is not None
    assert p.deidentify.secret_file == Path("secrets/research.key")
    assert p.options == {"retain_device_identity", "retain_patient_characteristics"}
    assert p.set_tags == {0x00120030: "SITE-A"}
    assert p.remove_tags == {0x00080080, 0x00091001}
    assert not p.allow_burned_in
    with pytest.raises(ValidationError):
        p.allow_burned_in = True  # type: ignore[misc]


def test_every_option_of_the_contract_is_accepted() -> None:
    dates = {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"}
    for option in OPTIONS:
        p = Profile.model_validate({"deidentify": {"secret_file": "k", "options": [option]}})
        assert p.options == {option}
    assert len(OPTIONS) == 10
    assert dates <= set(OPTIONS)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (
            {"deidentify": {"secret_file": "k", "options": ["retain_uid"]}},
            "unknown option 'retain_uid': use one of retain_safe_private, retain_uids",
        ),
        (
            {"deidentify": {"secret_file": "k", "options": "retain_uids"}},
            "options must be a list, such as [retain_uids]",
        ),
        ({"deidentify": {"secret_file": ""}}, "secret_file is empty: name a file"),
        ({"deidentify": {}}, "deidentify.secret_file: Field required"),
        (
            {"deidentify": {"secret_file": "k", "secret": "x"}},
            "deidentify: unknown key 'secret': deidentify has only secret_file, options",
        ),
        (
            {"allow_burned": True},
            ": unknown key 'allow_burned': a profile has only deidentify, set, remove, "
            "allow_burned_in",
        ),
        ({"set_": {}}, "unknown key 'set_'"),
        ({"remove": ["InstitutionNam"]}, "'InstitutionNam' is neither a DICOM keyword nor"),
        ({"remove": ["(0009,10x1)"]}, "write a keyword such as InstitutionName or a tag"),
        ({"set": {"Foo": "x"}}, "'Foo' is neither a DICOM keyword nor a tag"),
        ({"set": {"(0009,1001)": "x"}}, "set: (0009,1001) is a private tag"),
        ({"set": {"StationName": "x" * 17}}, "exceeds the maximum length of 16"),
        ({"set": {"StudyDate": "2020-01-02"}}, "Give a valid DA value"),
        ({"set": {"Rows": "many"}}, "set: Rows (0028,0010) has VR US: give it a number"),
        ({"set": {"ReferencedImageSequence": "x"}}, "VR SQ, which a profile cannot set"),
        (
            {
                "deidentify": {
                    "secret_file": "k",
                    "options": [
                        "retain_longitudinal_full_dates",
                        "retain_longitudinal_modified_dates",
                    ],
                }
            },
            "exclude each other: keep one",
        ),
    ],
)
def test_mistakes_say_what_to_fix(data: dict[str, Any], says: str) -> None:
    assert says in error_of(data)


def test_parse_attribute_takes_keywords_and_tags() -> None:
    assert parse_attribute("PatientName") == 0x00100010
    assert parse_attribute("(0009,1001)") == 0x00091001
    assert parse_attribute("(7fe0,0010)") == 0x7FE00010
    with pytest.raises(ValueError, match="neither a DICOM keyword"):
        parse_attribute("0009,1001")


def test_load_secret(tmp_path: Path) -> None:
    key = tmp_path / "research.key"
    with pytest.raises(SecretError, match=r"research.key does not exist: write at least 16"):
        load_secret(key)
    key.write_bytes(b"")
    with pytest.raises(SecretError, match="is empty"):
        load_secret(key)
    key.write_bytes(b"short\n")
    with pytest.raises(SecretError, match="holds only 5 bytes"):
        load_secret(key)
    with pytest.raises(SecretError, match="is a directory"):
        load_secret(tmp_path)
    key.write_bytes(b"0123456789abcdef-secret\n")
    assert load_secret(key) == b"0123456789abcdef-secret"
    key.write_bytes(b"\x00\xff" * 16)
    assert load_secret(key) == b"\x00\xff" * 16

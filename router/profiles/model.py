"""A destination profile as validated data: ``deidentify``, ``set``, ``remove``,
``allow_burned_in``.

Pure (no file is opened here: :func:`router.profiles.secret.load_secret` reads the secret
file). Every validation error says what is wrong and how to fix it in one sentence, so the
config loader can print one line per mistake.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pydicom.config
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.valuerep import validate_value

from router.profiles.table import OPTIONS

#: a value a profile may ``set``: a string or number, or a list of them for VM > 1
SetValue = str | int | float | list[str | int | float]

_TAG: Final = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
_TEXT_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UI", "UR", "UT"}
)
_NUMBER_VRS: Final = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_FORMATS: Final = {"DA": " (YYYYMMDD)", "TM": " (HHMMSS)", "DT": " (YYYYMMDDHHMMSS)"}


def _attribute(text: str) -> int:
    """:func:`parse_attribute` inside a validator: the error's message is the text alone
    (no "Value error," prefix), ready for a one-line config error."""
    try:
        return parse_attribute(text)
    except ValueError as e:
        raise PydanticCustomError("profile", str(e)) from None


def _known_keys(data: Any, what: str, keys: tuple[str, ...]) -> Any:
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise PydanticCustomError(
                "profile",
                f"unknown key {unknown[0]!r}: {what} has only {', '.join(keys)}",
            )
    return data


def parse_attribute(text: str) -> int:
    """The tag that ``text`` names: a keyword (``InstitutionName``) or a tag written
    ``(gggg,eeee)``. Raises ValueError with the fix."""
    m = _TAG.fullmatch(text.strip())
    if m:
        return int(m[1] + m[2], 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(
            f"{text!r} is neither a DICOM keyword nor a tag: write a keyword such as "
            "InstitutionName or a tag such as (0009,1001)"
        )
    return int(tag)


def attribute_label(tag: int) -> str:
    """``InstitutionName (0008,0080)``, or the tag alone for private or unknown tags."""
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    kw = keyword_for_tag(tag) if tag >> 16 & 1 == 0 else ""
    return f"{kw} {text}" if kw else text


def _check_set_value(tag: int, value: SetValue) -> None:
    label = attribute_label(tag)
    if tag >> 16 & 1:
        raise ValueError(
            f"{label} is a private tag, whose VR the router cannot know: set a "
            "standard attribute by keyword or tag"
        )
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ValueError(
            f"{label} is not in the DICOM dictionary: set a standard attribute"
        ) from None
    values = value if isinstance(value, list) else [value]
    if vr in _NUMBER_VRS:
        if not all(isinstance(v, int | float) for v in values):
            raise ValueError(f"{label} has VR {vr}: give it a number")
    elif vr in _TEXT_VRS:
        for v in values:
            try:
                validate_value(vr, str(v), pydicom.config.RAISE)
            except ValueError as e:
                hint = _FORMATS.get(vr, "")
                raise ValueError(f"{label}: {e} Give a valid {vr} value{hint}") from None
    else:
        raise ValueError(
            f"{label} has VR {vr}, which a profile cannot set: set text or number attributes only"
        )


class Deidentify(BaseModel):
    """``deidentify: {secret_file, options}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret_file: Path = Field(description="keys every replacement UID and pseudonym")
    options: frozenset[str] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _known_keys(data, "deidentify", ("secret_file", "options"))

    @field_validator("secret_file")
    @classmethod
    def _secret_named(cls, v: Path) -> Path:
        if not str(v).strip() or str(v) == ".":
            raise PydanticCustomError(
                "profile", "secret_file is empty: name a file holding the secret key"
            )
        return v

    @field_validator("options", mode="before")
    @classmethod
    def _known_options(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise PydanticCustomError("profile", f"options must be a list, such as [{v}]")
        if isinstance(v, list | tuple | set | frozenset):
            unknown = [o for o in v if o not in OPTIONS]
            if unknown:
                raise PydanticCustomError(
                    "profile", f"unknown option {unknown[0]!r}: use one of {', '.join(OPTIONS)}"
                )
        return v

    @model_validator(mode="after")
    def _one_date_option(self) -> Deidentify:
        both = {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"}
        if both <= self.options:
            raise PydanticCustomError(
                "profile",
                "retain_longitudinal_full_dates and retain_longitudinal_modified_dates "
                "exclude each other: keep one",
            )
        return self


class Profile(BaseModel):
    """One entry of ``profiles:``: what changes in the copy sent to a destination."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    deidentify: Deidentify | None = None
    set_: Mapping[str, SetValue] = Field(default_factory=dict, alias="set")
    remove: tuple[str, ...] = ()
    allow_burned_in: bool = False

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _known_keys(data, "a profile", ("deidentify", "set", "remove", "allow_burned_in"))

    @field_validator("set_")
    @classmethod
    def _valid_set(cls, v: Mapping[str, SetValue]) -> Mapping[str, SetValue]:
        for key, value in v.items():
            tag = _attribute(key)
            try:
                _check_set_value(tag, value)
            except ValueError as e:
                raise PydanticCustomError("profile", str(e)) from None
        return v

    @field_validator("remove")
    @classmethod
    def _valid_remove(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for key in v:
            _attribute(key)
        return v

    @property
    def set_tags(self) -> dict[int, SetValue]:
        """``set`` with each key resolved to its tag."""
        return {parse_attribute(k): v for k, v in self.set_.items()}

    @property
    def remove_tags(self) -> frozenset[int]:
        """``remove`` resolved to tags."""
        return frozenset(parse_attribute(k) for k in self.remove)

    @property
    def options(self) -> frozenset[str]:
        """The de-identification options; empty without ``deidentify``."""
        return self.deidentify.options if self.deidentify else frozenset()

"""The ``profiles:`` section: :class:`router.profiles.Profile` with its secret file resolved
against the config file's directory, checked and read when the config is loaded.

Reading the key at load time means ``check`` finds a missing, unreadable, empty or short
key file (one line, naming the ``secret_file`` line), and a reload that fails keeps the
running config together with the key it was loaded with: a changed key applies exactly
from the reload that read it (docs/deidentification.md, "The secret, and rotating it").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PrivateAttr, ValidationInfo, model_validator

from router.config.fields import custom
from router.profiles import Deidentify, Profile, SecretError, load_secret

__all__ = [
    "DestinationProfile",
    "ProfileDeidentify",
    "ProfileName",
    "ProfileRef",
    "unknown_profile",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _profile_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise custom(
            "name", f"{value!r} is not a profile name: use letters, digits, _ . - (e.g. research)"
        )
    return value


def unknown_profile(name: str, known: list[str]) -> str:
    listed = ", ".join(known) if known else "none"
    return f"no profile {name!r} under profiles: (defined: {listed}); add it or fix the name"


def _known_profile(value: str, info: ValidationInfo) -> str:
    """Checked against the names under ``profiles:`` that loading puts in the validation
    context, so an unknown name is reported on its own line."""
    known = (info.context or {}).get("profile_names")
    if known is not None and value not in known:
        raise custom("profile", unknown_profile(value, known))
    return value


def _secret_path(value: object) -> object:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise custom("profile", "secret_file is empty: name a file holding the secret key")
    return value


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    if (info.context or {}).get("check_files", False):
        try:
            load_secret(value)
        except SecretError as e:
            raise custom("secret", str(e)) from None
    return value


ProfileName = Annotated[str, BeforeValidator(_profile_name)]
#: a destination's ``profile``: the name of an entry of ``profiles:``
ProfileRef = Annotated[str, BeforeValidator(_profile_name), AfterValidator(_known_profile)]
#: a key file: relative to the config file's directory; must exist and hold a long enough key
KeyFile = Annotated[Path, BeforeValidator(_secret_path), AfterValidator(_resolve)]


class ProfileDeidentify(Deidentify):
    """``deidentify`` of a configured profile; :attr:`secret` is the key read at load."""

    secret_file: KeyFile
    _secret: bytes | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return data  # unknown keys: one problem each, with the rest still checked

    @model_validator(mode="after")
    def _read_secret(self, info: ValidationInfo) -> ProfileDeidentify:
        if (info.context or {}).get("check_files", False):
            try:
                self._secret = load_secret(self.secret_file)
            except SecretError as e:  # changed between the two reads
                raise custom("secret", str(e)) from None
        return self

    @property
    def secret(self) -> bytes:
        """The key; read now if the config was loaded without checking files."""
        if self._secret is None:
            self._secret = load_secret(self.secret_file)
        return self._secret


class DestinationProfile(Profile):
    """One entry of ``profiles:``."""

    deidentify: ProfileDeidentify | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return data  # as above

    @property
    def secret(self) -> bytes | None:
        """The key of ``deidentify``; None for a profile that only sets and removes."""
        return self.deidentify.secret if self.deidentify is not None else None

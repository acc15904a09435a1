"""Per-destination profiles: PS3.15 Annex E de-identification and tag changes applied to
the copy of an instance sent to one destination (docs/deidentification.md).

The pieces, all free of the forwarder: :class:`Profile` (the validated config entry),
:func:`load_secret`, :func:`apply_profile` (a pydicom header, in place),
:func:`rewrite_part10` (a spooled Part-10 file to the bytes to send), :func:`describe`
(for ``explain``).
"""

from router.profiles.actions import (
    BurnedInAnnotationError,
    Change,
    apply_profile,
    check_burned_in,
    describe,
)
from router.profiles.model import Deidentify, Profile, parse_attribute
from router.profiles.secret import SecretError, load_secret
from router.profiles.stream import RewriteError, Rewritten, rewrite_part10
from router.profiles.table import OPTIONS

__all__ = [
    "OPTIONS",
    "BurnedInAnnotationError",
    "Change",
    "Deidentify",
    "Profile",
    "RewriteError",
    "Rewritten",
    "SecretError",
    "apply_profile",
    "check_burned_in",
    "describe",
    "load_secret",
    "parse_attribute",
    "rewrite_part10",
]

"""Reading a profile's secret key: the one piece of profile handling that touches a file."""

from __future__ import annotations

from pathlib import Path
from typing import Final

#: A shorter key would let anyone who knows the scheme guess PatientIDs back from their
#: pseudonyms by trying every likely ID.
MIN_SECRET_BYTES: Final = 16


class SecretError(ValueError):
    """The secret file cannot be used; the message names the file and the fix."""


def load_secret(path: Path) -> bytes:
    """The key in ``path``: its bytes, without a trailing line break.

    Rotating the key (a new file, or new content) changes every replacement UID and
    pseudonym from then on: docs/deidentification.md explains what that means."""
    fix = (
        f"write at least {MIN_SECRET_BYTES} random bytes to it, "
        f"e.g. `head -c 32 /dev/urandom > {path}`"
    )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist: {fix}") from None
    except IsADirectoryError:
        raise SecretError(f"secret file {path} is a directory: name a file") from None
    except PermissionError:
        raise SecretError(f"secret file {path} cannot be read: let the router read it") from None
    key = data.rstrip(b"\r\n")
    if not key:
        raise SecretError(f"secret file {path} is empty: {fix}")
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(f"secret file {path} holds only {len(key)} bytes: {fix}")
    return key

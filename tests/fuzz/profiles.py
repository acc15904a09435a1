"""Hypothesis settings for the fuzzers, chosen by HYPOTHESIS_PROFILE.

- ``fuzz-smoke`` (the default, run by ``make test``): a few hundred examples per
  target, the whole of tests/fuzz in well under 30 s.
- ``fuzz`` (``make fuzz``): many examples per round, no deadline; the conftest repeats
  rounds with fresh seeds until the FUZZ_SECONDS budget is spent.

Only the fuzz tests use these (as decorators): the global profile of the rest of the
suite is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("fuzz-smoke", max_examples=150, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz", max_examples=1_000, **_COMMON)  # type: ignore[arg-type]

PROFILE = "fuzz" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "fuzz-smoke"
FUZZING = PROFILE == "fuzz"
#: decorator for decoder targets
DECODERS = settings.get_profile(PROFILE)
#: whole associations over loopback cost a round trip each: fewer per round
ASSOCIATIONS = settings(DECODERS, max_examples=150 if not FUZZING else 500)

_F = TypeVar("_F", bound=Callable[..., Any])


def fuzz_rounds(test: _F) -> _F:
    """Mark a test to be repeated under `make fuzz` (see _rounds)."""
    test.fuzz_rounds = True  # type: ignore[attr-defined]
    return test

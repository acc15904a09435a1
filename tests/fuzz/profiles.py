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

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("fuzz-smoke", max_examples=150, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fuzz", max_examples=5_000, **_COMMON)  # type: ignore[arg-type]

PROFILE = "fuzz" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "fuzz-smoke"
FUZZING = PROFILE == "fuzz"
#: decorator for decoder targets
DECODERS = settings.get_profile(PROFILE)
#: whole associations over loopback cost a round trip each: fewer per round
ASSOCIATIONS = settings(DECODERS, max_examples=150 if not FUZZING else 1_000)

"""`make fuzz`: each fuzz test is run in rounds, each round a full Hypothesis search
(1,000 examples, a fresh seed), until its share of FUZZ_SECONDS is spent; every test
gets at least one round, so a small budget is overshot (FUZZ_SECONDS=60 takes about
100 s on 2 cores). Under `make test` (the smoke profile) each runs once."""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import pytest

from tests.fuzz.profiles import FUZZING

_FUZZ_DIR = os.path.dirname(__file__)


def _rounds(item: pytest.Item) -> bool:
    """Tests worth repeating: Hypothesis tests, and those marked with ``fuzz_rounds``
    (a test that runs a Hypothesis search inside, e.g. around a shared server)."""
    obj = getattr(item, "obj", None)
    return str(item.path).startswith(_FUZZ_DIR) and bool(
        getattr(obj, "is_hypothesis_test", False) or getattr(obj, "fuzz_rounds", False)
    )


def _budget(items: list[pytest.Item]) -> float:
    return float(os.environ.get("FUZZ_SECONDS", "60")) / max(1, sum(map(_rounds, items)))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    if not FUZZING or not _rounds(pyfuncitem):
        return (yield)
    share = _budget(pyfuncitem.session.items)
    deadline = time.monotonic() + share
    result = yield  # the first round, run by pytest itself; raises if it failed
    rounds = 1
    while time.monotonic() < deadline:
        funcargs = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        pyfuncitem.obj(**funcargs)
        rounds += 1
    print(f"\n{pyfuncitem.name}: {rounds} rounds in {share:.0f}s")
    return result

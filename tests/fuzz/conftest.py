"""`make fuzz`: each fuzz test is run in rounds, each round a full Hypothesis search
with a fresh seed, until its share of FUZZ_SECONDS is spent. Under `make test` (the
smoke profile) each runs once."""

from __future__ import annotations

import os
import time
from collections.abc import Generator

import pytest

from tests.fuzz.profiles import FUZZING

_FUZZ_DIR = os.path.dirname(__file__)


def _budget(config: pytest.Config, items: list[pytest.Item]) -> float:
    mine = [i for i in items if str(i.path).startswith(_FUZZ_DIR) and i.name.startswith("test_")]
    return float(os.environ.get("FUZZ_SECONDS", "60")) / max(1, len(mine))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    if not FUZZING or not str(pyfuncitem.path).startswith(_FUZZ_DIR):
        return (yield)
    share = _budget(pyfuncitem.config, pyfuncitem.session.items)
    deadline = time.monotonic() + share
    result = yield  # the first round, run by pytest itself; raises if it failed
    rounds = 1
    while time.monotonic() < deadline:
        funcargs = {a: pyfuncitem.funcargs[a] for a in pyfuncitem._fixtureinfo.argnames}
        pyfuncitem.obj(**funcargs)
        rounds += 1
    print(f"\n{pyfuncitem.name}: {rounds} rounds in {share:.0f}s")
    return result

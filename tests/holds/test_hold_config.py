"""``hold:`` on a destination: defaults, the policy it gives, and one readable line per
problem (unknown ``until``, bad durations, max_wait shorter than quiet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import check, load_config
from router.holds import Hold, HoldUntil

BASE = """\
ae_title: ROUTER
storage: {path: ./var}
destinations:
  ai:
    ae_title: AI
    host: 127.0.0.1
    port: 104
"""


def _write(tmp_path: Path, hold: str) -> Path:
    p = tmp_path / "router.yaml"
    p.write_text(BASE + f"    hold: {hold}\n")
    return p


@pytest.mark.parametrize(
    ("hold", "policy"),
    [
        ("{until: series_complete}", Hold(HoldUntil.SERIES, 30.0, 3600.0)),
        ("{until: Study_Complete}", Hold(HoldUntil.STUDY, 30.0, 3600.0)),
        ("{until: series_complete, quiet: 2s}", Hold(HoldUntil.SERIES, 2.0, 3600.0)),
        (
            "{until: study_complete, quiet: 1m30s, max_wait: 2h}",
            Hold(HoldUntil.STUDY, 90.0, 7200.0),
        ),
        ("{until: series_complete, quiet: 10, max_wait: 10}", Hold(HoldUntil.SERIES, 10, 10)),
    ],
)
def test_hold_policy(tmp_path: Path, hold: str, policy: Hold) -> None:
    cfg = load_config(_write(tmp_path, hold), check_files=False)
    assert cfg.holds == {"ai": policy}
    assert cfg.destinations["ai"].hold is not None


def test_no_hold_is_no_policy(tmp_path: Path) -> None:
    p = tmp_path / "router.yaml"
    p.write_text(BASE)
    cfg = load_config(p, check_files=False)
    assert cfg.destinations["ai"].hold is None
    assert cfg.holds == {}


@pytest.mark.parametrize(
    ("hold", "message"),
    [
        (
            "{until: series_done}",
            "destinations.ai.hold.until: 'series_done' is not one of 'series_complete' or "
            "'study_complete'",
        ),
        ("{quiet: 30s}", "destinations.ai.hold.until: missing (required; add e.g. 'until:"),
        (
            "{until: series_complete, quiet: soon}",
            "destinations.ai.hold.quiet: 'soon' is not a duration: write seconds (30) or e.g.",
        ),
        (
            "{until: series_complete, max_wait: -1h}",
            "destinations.ai.hold.max_wait: '-1h' is not a duration",
        ),
        (
            "{until: series_complete, quiet: 0s}",
            "destinations.ai.hold: quiet must be more than 0 (e.g. quiet: 30s)",
        ),
        (
            "{until: series_complete, quiet: 2m, max_wait: 1m}",
            "destinations.ai.hold: max_wait (60s) is shorter than quiet (120s): every group "
            "would be released by max_wait; make max_wait at least quiet",
        ),
        (
            "{until: series_complete, quite: 2m}",
            "destinations.ai.hold.quite: unknown key (did you mean 'quiet'?)",
        ),
        ("series_complete", "destinations.ai.hold: expected a mapping"),
    ],
)
def test_hold_problem(tmp_path: Path, hold: str, message: str) -> None:
    p = _write(tmp_path, hold)
    problems = check(p)
    assert len(problems) == 1, [str(x) for x in problems]
    (problem,) = problems
    assert problem.file == str(p)
    assert problem.line == 8, str(problem)
    assert message in problem.message, str(problem)

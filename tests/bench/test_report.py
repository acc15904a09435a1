"""How `make bench` reports router-paced (benchmarks/report.py, benchmarks/run.py): the
check line, the columns left empty, the options; results made up, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import Paced, RunResult
from benchmarks.paced_runs import delivered_times, read_acks
from benchmarks.report import print_table, summarize, verdicts
from benchmarks.run import parse_args
from benchmarks.scenarios import DEFAULT_SCENARIOS


def result(scenario: str, wall: float, p99: float | None, paced: Paced | None) -> RunResult:
    return RunResult(
        scenario=scenario,
        size="8k",
        round=1,
        instances=300,
        bytes=300 * 8192,
        wall_s=wall,
        cpu_ours_s=0.5,
        cpu_peers={"storescp": 0.1},
        peak_rss_ours_mib=70.0,
        peak_rss_peers_mib=5.0,
        latency_p50_s=None if p99 is None else p99 / 2,
        latency_p99_s=p99,
        paced=paced,
    )


def paced(basis: str = "half of router's median 300/s over 1 run") -> Paced:
    return Paced(
        rate=150.0,
        basis=basis,
        behind=0,
        max_lag_s=0.001,
        negative=0,
        metrics_p50_s=0.02,
        metrics_p99_s=0.05,
        metrics_share_le_50ms=0.995,
    )


def paced_check(results: list[RunResult]) -> dict[str, object]:
    checks = verdicts(summarize(results, []), {"8k": 8192})
    found = [c for c in checks if c["scenario"] == "router-paced" and "p99" in str(c["check"])]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(("p99", "ok"), [(0.0386, True), (0.0499, True), (0.05, False)])
def test_the_check_is_p99_under_50_ms_at_half_the_max_rate(p99: float, ok: bool) -> None:
    c = paced_check([result("router", 1.0, 0.09, None), result("router-paced", 2.0, p99, paced())])
    assert c["check"] == "p99 receipt-to-delivery < 50 ms at half max rate"
    assert c["value"] == pytest.approx(p99 * 1e3)
    assert c["pass"] is ok


def test_a_rate_given_by_option_is_named_in_the_check() -> None:
    c = paced_check([result("router-paced", 2.0, 0.01, paced("--paced-rate"))])
    assert c["check"] == "p99 receipt-to-delivery < 50 ms at 150/s (--paced-rate)"
    assert c["pass"] is True


def test_no_latency_is_a_miss_not_a_pass() -> None:
    c = paced_check([result("router-paced", 2.0, None, paced())])
    assert c["value"] is None
    assert c["pass"] is False


def test_the_paced_row_has_no_ratio_to_the_direct_path() -> None:
    rows = summarize(
        [result("dcmtk-pair", 0.3, None, None), result("router-paced", 2.0, 0.02, paced())], []
    )
    row = next(r for r in rows if r["scenario"] == "router-paced")
    assert row["instances_per_s"] == pytest.approx(150.0)
    assert row["ratio"] is None
    assert row["vs_durable_limit_paired"] is None
    assert isinstance(row["paced"], dict)
    assert row["paced"]["metrics_share_le_50ms"] == pytest.approx(0.995)


def test_the_table_says_which_latency_it_shows_and_prints_the_cross_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = summarize([result("router-paced", 2.0, 0.0386, paced())], [])
    print_table(rows, verdicts(rows, {"8k": 8192}), "now")
    out = capsys.readouterr().out
    assert "router-paced per instance" in out
    assert "per instance p50 19.3 ms p99 38.6 ms" in out
    assert "router histogram: p50 20.0 ms p99 50.0 ms (interpolated), 99.5% <= 50 ms" in out
    assert "PASS  router-paced     8k     p99 receipt-to-delivery < 50 ms at half max rate" in out


def test_make_bench_runs_router_paced_by_default() -> None:
    assert "router-paced" in DEFAULT_SCENARIOS
    assert "router-paced" in parse_args([]).scenarios


@pytest.mark.parametrize("rate", ["0", "-5"])
def test_paced_rate_must_be_positive(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--paced-rate", rate])
    assert "--paced-rate must be > 0" in capsys.readouterr().err


def test_acks_and_delivered_files_are_matched_by_uid(tmp_path: Path) -> None:
    acks = tmp_path / "acks.tsv"
    acks.write_text("1.2.3\t1000.5\t0.0\n1.2.4\t1000.6\t0.012\n")
    acked, lags = read_acks(acks)
    assert acked == {"1.2.3": 1000.5, "1.2.4": 1000.6}
    assert lags == [0.0, 0.012]
    out = tmp_path / "out"
    out.mkdir()
    (out / "CT.1.2.3").write_bytes(b"x")
    (out / ".hidden").write_bytes(b"x")
    assert set(delivered_times(out)) == {"1.2.3"}

"""A destination's config turned into its forwarding settings (pure), and the
presentation contexts a batch proposes."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import Config, Destination
from router.forward import destination
from router.forward.dimse import MAX_CONTEXTS, DimseKind, contexts_for
from router.forward.profiled import send_profile
from router.problems import ConfigError
from router.store.queue import Lease
from tests.forward.peer import CT, EXPLICIT, IMPLICIT, config

MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def dest(**kw: object) -> Destination:
    return Destination.model_validate({"ae_title": "PACS", "host": "h", "port": 104, **kw})


@pytest.mark.parametrize(
    ("probe", "max_backoff", "expected"),
    [
        ("30s", "10m", 30.0),  # the configured interval
        ("30s", "2s", 2.0),  # never longer than the longest backoff
        ("500ms", "2s", 0.5),
        ("30s", "30s", 30.0),
    ],
)
def test_probe_interval_is_at_most_max_backoff(
    probe: str, max_backoff: str, expected: float
) -> None:
    d = dest(
        retry={"initial_backoff": "100ms", "max_backoff": max_backoff},
        circuit_breaker={"probe_interval": probe},
    )
    assert destination.probe_interval(d) == expected
    assert destination.breaker(d).probe_interval == expected


def test_plan_reads_every_forwarding_setting(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        {
            "pacs": {
                "port": 104,
                "calling_ae_title": "ME",
                "max_associations": 3,
                "batch_size": 7,
                "idle_release": "2s",
                "retry": {"max_attempts": 4, "initial_backoff": "1s", "max_backoff": "8s"},
                "circuit_breaker": {"failures": 9},
            }
        },
    )
    plan = destination.plan(cfg, "pacs", None)
    assert (plan.max_associations, plan.batch_size, plan.idle_release) == (3, 7, 2.0)
    assert (plan.policy.max_attempts, plan.policy.max_backoff) == (4, 8.0)
    assert (plan.failure_threshold, plan.probe_interval) == (9, 8.0)
    assert plan.lease_seconds == 600.0 + 7 * (120.0 + 60.0)
    assert isinstance(plan.kind, DimseKind)
    conn = plan.kind.connection
    assert (conn.calling_ae, conn.called_ae, conn.host, conn.port) == (
        "ME",
        "PACS",
        "127.0.0.1",
        104,
    )


def test_calling_ae_defaults_to_ours(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"pacs": {"port": 104}})
    assert destination.connection(cfg, cfg.destinations["pacs"], None).calling_ae == "ROUTER"


def test_idle_release_default_and_bounds() -> None:
    assert dest().idle_release == 5.0
    assert dest(idle_release="250ms").idle_release == 0.25
    assert dest(idle_release=0).idle_release == 0.0
    with pytest.raises(ValueError, match="idle_release"):
        dest(idle_release="2m")  # not below network_timeout (60 s)
    with pytest.raises(ValueError, match="not a duration"):
        dest(idle_release="soon")


def test_idle_release_problem_is_one_readable_line(tmp_path: Path) -> None:
    from router.config import load_config

    f = tmp_path / "router.yaml"
    f.write_text(
        "ae_title: R\nstorage: {path: s}\ndestinations:\n"
        "  pacs: {ae_title: P, host: h, port: 104, idle_release: 90s}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    [problem] = e.value.problems
    assert "idle_release" in str(problem) and "lower idle_release" in str(problem)


def lease(sop: str, ts: str, n: int = 0) -> Lease:
    return Lease(n, f"i{n}", "pacs", 1, sop, f"1.2.3.{n}", ts, b"", 0, 0, 0.0)


def test_one_context_per_syntax_and_no_duplicates() -> None:
    got = contexts_for([lease(CT, EXPLICIT), lease(CT, EXPLICIT, 1), lease(MR, IMPLICIT, 2)], None)
    assert got[0] == (CT, [EXPLICIT])  # the received syntax first, alone in its context
    assert all(len(tss) == 1 for _, tss in got)
    assert len(got) == len(set((sop, tss[0]) for sop, tss in got))
    assert {sop for sop, _ in got} == {CT, MR}


def test_transcode_to_is_proposed_after_the_original() -> None:
    got = contexts_for([lease(CT, JPEG_BASELINE)], IMPLICIT)
    assert got[0] == (CT, [JPEG_BASELINE]) and got[1] == (CT, [IMPLICIT])


def test_contexts_are_bounded_by_ps38() -> None:
    many = [lease(f"1.2.826.0.1.3680043.9.9999.{i}", EXPLICIT, i) for i in range(200)]
    got = contexts_for(many, None)
    assert 0 < len(got) <= MAX_CONTEXTS


def test_the_kind_is_built_with_the_destinations_profile(tmp_path: Path) -> None:
    (tmp_path / "k.key").write_bytes(b"0123456789abcdef")
    cfg = Config.model_validate(
        {
            "ae_title": "ROUTER",
            "storage": {"path": str(tmp_path)},
            "profiles": {"r": {"deidentify": {"secret_file": str(tmp_path / "k.key")}}},
            "destinations": {
                "with": {"ae_title": "A", "host": "h", "port": 104, "profile": "r"},
                "without": {"ae_title": "B", "host": "h", "port": 104},
            },
        }
    )
    for name in cfg.destinations:
        p = destination.plan(cfg, name, None)
        assert p.profile == send_profile(cfg, cfg.destinations[name])
        assert getattr(p.kind, "profile", None) == p.profile
    assert destination.plan(cfg, "with", None).profile is not None

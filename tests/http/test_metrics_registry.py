"""router.metrics: the README's metric names, bounded labels, scrape-time queue gauges."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import (
    LATENCY_BUCKETS,
    OUTCOMES,
    Metrics,
    QueueSnapshot,
    disk_free_bytes,
    status_label,
)
from router.store.records import State
from tests.design_contract import DESIGN_METRICS

ALLOWED_LABELS = {
    "status",
    "destination",
    "outcome",
    "state",
    "direction",
    "rule",
    "result",
    "version",
    "how",
    "reason",
    "kind",
    "le",
}


def scrape(m: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """family name (as the parser names it) -> samples."""
    text = generate_latest(m.registry).decode()
    return {
        f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def value(m: Metrics, name: str, **labels: str) -> float | None:
    for fam in scrape(m).values():
        for sname, slabels, v in fam:
            if sname == name and slabels == labels:
                return v
    return None


def test_every_design_metric_is_exported_once() -> None:
    m = Metrics()
    names = m.names()
    for n in DESIGN_METRICS:
        assert "dicom_router_" + n in names, n
    # each collector registered once: a second registration of any name would have raised
    assert len([n for n in names if n.startswith("dicom_router_")]) == len(
        {n for n in names if n.startswith("dicom_router_")}
    )


def test_two_instances_do_not_clash() -> None:
    a, b = Metrics(), Metrics()
    a.instance_received(100)
    assert value(a, "dicom_router_received_instances_total") == 1
    assert value(b, "dicom_router_received_instances_total") == 0


def test_no_created_series() -> None:
    m = Metrics()
    m.instance_received(1)
    assert "_created" not in generate_latest(m.registry).decode()


def test_build_info() -> None:
    m = Metrics(version="1.2.3")
    assert value(m, "dicom_router_build_info", version="1.2.3") == 1


@pytest.mark.parametrize(
    ("status", "label"),
    [(0x0000, "0000"), (0xA700, "a700"), (0xC000, "c000"), (0x0122, "0122"), (-1, "other")],
)
def test_status_label(status: int, label: str) -> None:
    assert status_label(status) == label


def test_store_responses_and_received() -> None:
    m = Metrics()
    m.store_response(0)
    m.store_response(0xA700)
    m.instance_received(1234)
    assert value(m, "dicom_router_store_responses_total", status="0000") == 1
    assert value(m, "dicom_router_store_responses_total", status="a700") == 1
    assert value(m, "dicom_router_received_bytes_total") == 1234


def test_destinations_appear_at_zero_and_forwarding_outcomes() -> None:
    m = Metrics()
    m.set_destinations(["pacs", "ai"])
    for o in OUTCOMES:
        assert value(m, "dicom_router_forwarded_instances_total", destination="ai", outcome=o) == 0
    assert value(m, "dicom_router_forward_retries_total", destination="pacs") == 0

    m.delivered("pacs", 0.2)
    m.delivered("pacs", 3.0, warning=True)
    m.retry_scheduled("pacs")
    m.forwarded("pacs", "failed")
    got = {
        o: value(m, "dicom_router_forwarded_instances_total", destination="pacs", outcome=o)
        for o in OUTCOMES
    }
    assert got == {"delivered": 1, "warning": 1, "retry": 1, "failed": 1}
    assert value(m, "dicom_router_forward_retries_total", destination="pacs") == 1
    assert value(m, "dicom_router_delivery_latency_seconds_count", destination="pacs") == 2
    le = {"destination": "pacs", "le": "0.25"}
    assert value(m, "dicom_router_delivery_latency_seconds_bucket", **le) == 1

    with pytest.raises(ValueError, match="outcome"):
        m.forwarded("pacs", "lost")


def test_destination_up_removed_when_destination_leaves_config() -> None:
    m = Metrics()
    m.set_destinations(["pacs", "ai"])
    m.set_destination_up("pacs", False)
    m.set_destination_up("ai", True)
    assert value(m, "dicom_router_destination_up", destination="pacs") == 0
    m.set_destinations(["ai"])
    assert value(m, "dicom_router_destination_up", destination="pacs") is None
    assert value(m, "dicom_router_destination_up", destination="ai") == 1


def test_latency_buckets_span_10ms_to_hours() -> None:
    assert LATENCY_BUCKETS[0] == 0.01
    assert LATENCY_BUCKETS[-1] >= 4 * 3600
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_associations_and_bounded_reasons() -> None:
    m = Metrics()
    assert value(m, "dicom_router_associations_active", direction="in") == 0
    m.association_opened("in")
    m.association_opened("out")
    m.association_closed("in", "aborted")
    assert value(m, "dicom_router_associations_active", direction="in") == 0
    assert value(m, "dicom_router_associations_active", direction="out") == 1
    assert value(m, "dicom_router_associations_total", direction="in", how="aborted") == 1
    m.association_closed("out", "1.2.840.10008 something from a peer")
    assert value(m, "dicom_router_associations_total", direction="out", how="other") == 1

    m.association_rejected("calling_ae_not_recognized")
    m.association_rejected("EVIL_AE")
    m.protocol_error("malformed_pdu")
    m.protocol_error("\x00garbage")
    assert value(m, "dicom_router_associations_rejected_total", reason="other") == 1
    assert value(m, "dicom_router_protocol_errors_total", kind="other") == 1
    with pytest.raises(ValueError, match="direction"):
        m.association_opened("sideways")


def test_rules_reloads_and_unrouted() -> None:
    m = Metrics(clock=lambda: 1000.0)
    m.set_rules(["ct-chest-to-ai", "everything-to-pacs"])
    assert value(m, "dicom_router_rule_matches_total", rule="ct-chest-to-ai") == 0
    m.rule_matched("everything-to-pacs")
    m.unrouted_instances_total.inc()
    m.config_loaded()
    m.config_reloaded(ok=False)
    assert value(m, "dicom_router_rule_matches_total", rule="everything-to-pacs") == 1
    assert value(m, "dicom_router_unrouted_instances_total") == 1
    assert value(m, "dicom_router_config_reloads_total", result="error") == 1
    assert value(m, "dicom_router_config_reloads_total", result="ok") == 0
    assert value(m, "dicom_router_config_last_reload_success_timestamp_seconds") == 1000.0


def test_queue_gauges_are_read_at_scrape_time() -> None:
    m = Metrics()
    m.set_destinations(["pacs", "ai"])
    state = {"pending": 3}

    def snapshot() -> QueueSnapshot:
        return QueueSnapshot(
            instances={("pacs", "pending"): state["pending"], ("pacs", "failed"): 2},
            oldest_age_seconds={"pacs": 42.5},
            storage_free_bytes=10**9,
        )

    # before a source is registered the families exist, without samples
    assert value(m, "dicom_router_queue_instances", destination="pacs", state="pending") is None
    m.set_snapshot_source(snapshot)
    q = "dicom_router_queue_instances"
    assert value(m, q, destination="pacs", state="pending") == 3
    assert value(m, q, destination="pacs", state="failed") == 2
    for s in ("pending", "leased", "delivered", "failed"):  # every state of every
        assert value(m, q, destination="ai", state=s) == 0  # configured destination appears
    assert [s.value for s in State.delivery_states()] == [
        "pending",
        "leased",
        "delivered",
        "failed",
    ]
    assert value(m, "dicom_router_queue_oldest_age_seconds", destination="pacs") == 42.5
    assert value(m, "dicom_router_queue_oldest_age_seconds", destination="ai") == 0
    assert value(m, "dicom_router_storage_free_bytes") == 10**9
    state["pending"] = 7
    assert value(m, q, destination="pacs", state="pending") == 7


def test_failing_snapshot_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()

    def broken() -> QueueSnapshot:
        raise RuntimeError("database is locked")

    m.set_snapshot_source(broken)
    m.instance_received(5)
    fams = scrape(m)
    assert fams["dicom_router_received_instances"][0][2] == 1
    # the counter is collected before the queue collector runs: a scrape shows the
    # failures of the scrapes before it
    assert value(m, "dicom_router_metrics_snapshot_errors_total") == 1
    assert "queue snapshot" in caplog.text


def test_labels_come_from_bounded_sets() -> None:
    m = Metrics()
    m.set_destinations(["pacs"])
    m.set_rules(["r"])
    m.set_snapshot_source(lambda: QueueSnapshot(instances={("pacs", "pending"): 1}))
    m.delivered("pacs", 1.0)
    m.store_response(0)
    m.association_rejected("x")
    m.protocol_error("y")
    m.association_closed("in", "released")
    for name, fam in scrape(m).items():
        if not name.startswith("dicom_router_"):
            continue
        for _, labels, _ in fam:
            assert set(labels) <= ALLOWED_LABELS, (name, labels)


def test_disk_free_bytes(tmp_path: Path) -> None:
    assert disk_free_bytes(str(tmp_path)) > 0

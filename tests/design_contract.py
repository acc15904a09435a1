"""The metric names of the README's "Metrics" contract, written out here on purpose
(not imported from router.metrics), so the tests check the code against the contract."""

DESIGN_METRICS = (
    "received_instances_total",
    "received_bytes_total",
    "store_responses_total",
    "forwarded_instances_total",
    "forward_retries_total",
    "queue_instances",
    "queue_oldest_age_seconds",
    "delivery_latency_seconds",
    "associations_active",
    "destination_up",
    "storage_free_bytes",
    "unrouted_instances_total",
    "rule_matches_total",
    "config_reloads_total",
    "build_info",
)

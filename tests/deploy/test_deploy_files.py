"""deploy/: the systemd unit, the container image, Prometheus rules, the Grafana dashboard.

Tools are used where installed and the test is skipped with the reason otherwise:
systemd-analyze (Debian package ``systemd``) and promtool (Debian package ``prometheus``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from router.http import HttpServer
from router.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "dicom-router.service"
PROM = DEPLOY / "prometheus"
NAME = re.compile(r"\bdicom_router_\w+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package!r})")
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# ---------------------------------------------------------------- systemd


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_hardening_settings() -> None:
    s = unit_settings()
    assert s["User"] == ["dicom-router"]
    assert s["ExecStart"] == ["/usr/bin/dicom-router run --config /etc/dicom-router/router.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/dicom-router"]
    assert s["StateDirectory"] == ["dicom-router"]
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key
    assert "TimeoutStopSec" in s and "LimitNOFILE" in s


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stub, because verify checks that the binary
    exists and dicom-router is not installed system-wide here; the rest is unchanged."""
    stub = tmp_path / "dicom-router"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text().replace("ExecStart=/usr/bin/dicom-router ", f"ExecStart={stub} ")
    assert str(stub) in text
    unit = tmp_path / "dicom-router.service"
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    exe = tool("systemd-analyze", "systemd")
    r = run(exe, "verify", "--man=no", verifiable_unit)
    assert r.returncode == 0, r.stderr
    assert "dicom-router.service" not in r.stderr, r.stderr  # no warnings either


def test_systemd_security_exposure_is_low(verifiable_unit: Path) -> None:
    exe = tool("systemd-analyze", "systemd")
    r = run(exe, "security", "--offline=true", "--threshold=25", "--no-pager", verifiable_unit)
    if r.returncode != 0 and "--offline" in r.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout  # "OK" in systemd's terms


def test_sysusers_file() -> None:
    lines = [
        line.split()
        for line in (DEPLOY / "systemd" / "dicom-router.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][:3] == ["u", "dicom-router", "-"]


# ---------------------------------------------------------------- Prometheus


def test_promtool_check_rules() -> None:
    r = run(tool("promtool", "prometheus"), "check", "rules", PROM / "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_config() -> None:
    r = run(tool("promtool", "prometheus"), "check", "config", PROM / "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_alert_unit_tests() -> None:
    r = run(tool("promtool", "prometheus"), "test", "rules", "alerts.test.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alerts_cover_the_operational_failures() -> None:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    exprs = {r["alert"]: r["expr"] for g in groups for r in g["rules"]}
    assert "up{" in exprs["DicomRouterDown"]
    assert "dicom_router_destination_up" in exprs["DicomRouterDestinationDown"]
    assert "dicom_router_queue_oldest_age_seconds" in exprs["DicomRouterQueueStale"]
    assert 'outcome="failed"' in exprs["DicomRouterDeadLetters"]
    assert "dicom_router_storage_free_bytes" in exprs["DicomRouterStorageLow"]


# ---------------------------------------------------------------- metric names


def exported_names() -> set[str]:
    m = Metrics()
    names = m.names()
    for fam in m.registry.collect():
        if fam.type == "histogram":
            names |= {fam.name + s for s in HISTOGRAM_SUFFIXES}
    return names


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return data


@pytest.mark.parametrize(
    "source",
    ["grafana/dashboard.json", "prometheus/alerts.yml", "prometheus/alerts.test.yml"],
)
def test_queries_use_only_exported_metric_names(source: str) -> None:
    path = DEPLOY / source
    doc = (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )
    used = {n for s in strings(doc) for n in NAME.findall(s)}
    assert used, f"no dicom_router_ metric in {source}"
    unknown = used - exported_names()
    assert not unknown, f"{source} uses metrics router/metrics.py does not export: {unknown}"


def test_dashboard_shows_what_operators_need() -> None:
    exprs = " ".join(
        t["expr"] for p in dashboard()["panels"] for t in p.get("targets", []) if "expr" in t
    )
    for needed in (
        "dicom_router_received_instances_total",
        "dicom_router_forwarded_instances_total",
        "dicom_router_queue_instances",
        "dicom_router_queue_oldest_age_seconds",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "dicom_router_forward_retries_total",
        'outcome="failed"',
        "dicom_router_storage_free_bytes",
        "dicom_router_associations_active",
    ):
        assert needed in exprs, needed


def test_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] == "dicom-router"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert ds[0]["type"] == "prometheus" and ds[0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((prov / "dashboards" / "dicom-router.yaml").read_text())["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(
        m.startswith("./grafana/dashboard.json:" + dash[0]["options"]["path"]) for m in mounts
    )


# ---------------------------------------------------------------- container


def containerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "container" / "Containerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_runs_as_non_root_with_a_healthcheck() -> None:
    ins = containerfile_instructions()
    assert ins[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in ins if word == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0] and "python" in health[0]
    assert ("VOLUME", "/var/lib/dicom-router") in ins
    expose = {p for word, rest in ins if word == "EXPOSE" for p in rest.split()}
    assert expose >= {"11112", "9108"}
    assert any(word == "RUN" and "pip install" in rest for word, rest in ins)


def test_container_config_matches_the_image() -> None:
    cfg = yaml.safe_load((DEPLOY / "container" / "router.yaml").read_text())
    assert cfg["listen"]["port"] == 11112
    assert cfg["http"] == {"host": "0.0.0.0", "port": 9108}  # scrapeable from outside
    assert cfg["storage"]["path"] == "/var/lib/dicom-router"
    for rule in cfg["rules"]:
        assert set(rule["forward"]) <= set(cfg["destinations"])


def test_compose_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"router", "prometheus", "grafana", "orthanc"}
    assert services["orthanc"]["environment"]["TCP_NODELAY"] == "1"
    cfg = yaml.safe_load((DEPLOY / "container" / "router.yaml").read_text())
    orthanc = cfg["destinations"]["orthanc"]
    assert orthanc["host"] == "orthanc"
    assert services["orthanc"]["environment"]["ORTHANC__DICOM_AET"] == orthanc["ae_title"]
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert f"router:{cfg['http']['port']}" in targets
    build = services["router"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
        DEPLOY / "container" / "Containerfile"
    )


@pytest.mark.asyncio
async def test_container_healthcheck_command_follows_readyz() -> None:
    """Run the image's HEALTHCHECK command itself against a live server."""
    health = next(rest for word, rest in containerfile_instructions() if word == "HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[0] == "python"
    problems: list[str] = []
    server = HttpServer("127.0.0.1", 0, Metrics(), lambda: list(problems))
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        assert any(":9108/" in a for a in argv)
        argv = [sys.executable, *(a.replace(":9108/", f":{port}/") for a in argv[1:])]
        ok = await anyio.run_process(argv, check=False)
        problems.append("queue not open")
        failing = await anyio.run_process(argv, check=False)
        tg.cancel_scope.cancel()
    assert ok.returncode == 0, ok.stderr
    assert failing.returncode != 0


def test_container_config_is_valid_for_the_router() -> None:
    from router.config import check

    assert [str(p) for p in check(DEPLOY / "container" / "router.yaml")] == []


def test_compose_cluster_stack() -> None:
    """Two nodes on one database and one volume, each with its own ports; their config
    loads and names the database through a secret file, not in the config."""
    compose = yaml.safe_load((DEPLOY / "compose-cluster.yaml").read_text())
    services = compose["services"]
    nodes = [s for n, s in services.items() if n.startswith("router-")]
    assert len(nodes) >= 2 and "db" in services
    assert len({s["hostname"] for s in nodes}) == len(nodes)  # distinct node ids
    volumes = [{v.split(":")[0]: v.split(":")[1] for v in s["volumes"]} for s in nodes]
    assert {v.get("shared-data") for v in volumes} == {"/var/lib/dicom-router"}
    published = [p.split(":")[-2] for s in nodes for p in s["ports"]]
    assert len(published) == len(set(published))
    cfg = yaml.safe_load((DEPLOY / "container" / "cluster.yaml").read_text())
    assert cfg["queue"]["backend"] == "postgresql" and "dsn" not in cfg["queue"]
    assert cfg["queue"]["dsn_file"] == "/run/secrets/queue-dsn"
    assert all("queue-dsn" in s["secrets"] for s in nodes)
    assert cfg["storage"]["path"] == "/var/lib/dicom-router"
    assert "fsync=on" in services["db"]["command"]

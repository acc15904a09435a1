"""`dicom-router queue ...` and `echo` against a live router process and real DCMTK
peers: a destination that is down makes dead letters (max_attempts: 1); once it is up,
`queue retry` delivers them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from router.samples import write_many
from tests.integration.peers import running, start_storescp, storescu, wait_for, write_config
from tests.ops.helpers import api, cli, count, json_log, status_json
from tests.ports import reserve_port

pytestmark = pytest.mark.usefixtures("dcmtk")


def test_queue_commands_while_the_router_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    files = write_many(tmp_path / "a", 6, 3000, StudyInstanceUID=study_a)
    files += write_many(tmp_path / "b", 6, 3000, StudyInstanceUID=study_b)
    pacs_port, ai_port = reserve_port(), reserve_port()  # nobody listens there (yet)
    router = write_config(
        tmp_path,
        {
            "pacs": {
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": pacs_port,
                "retry": {"max_attempts": 1, "initial_backoff": "100ms", "max_backoff": "1s"},
                # every instance tries once, not only those before the breaker opens
                "circuit_breaker": {"failures": 1000, "probe_interval": "500ms"},
            },
            "ai": {"ae_title": "AI", "host": "127.0.0.1", "port": ai_port},
        },
    )
    cfg = str(router.config_path)
    pacs = None
    with running(router):
        res = storescu(router.port, files)
        assert res.returncode == 0, res.stderr
        wait_for(
            lambda: (
                router.metric("dicom_router_queue_instances", destination="pacs", state="failed")
                == 12
            ),
            30,
            "12 dead letters for pacs",
        )

        # status: an aligned table per destination and state, with the oldest age
        rc, out, err = cli(capsys, "queue", "status", "--config", cfg)
        assert rc == 0, err
        lines = out.splitlines()
        header = lines[0]
        assert header.split() == ["DESTINATION", "STATE", "COUNT", "OLDEST"]
        table = lines[: lines.index("")]
        assert len(table) == 1 + 2 * 4 + 1  # two destinations x four states, unrouted
        count_end = header.index("COUNT") + len("COUNT")
        age_end = len(header)
        for line in table[1:]:
            assert line[count_end - 1].isdigit() and line[count_end] == " ", line
            assert len(line) == age_end, line  # right-aligned, nothing sticks out
        row = next(line for line in table if line.startswith("pacs") and " failed " in line)
        assert re.fullmatch(r"pacs\s+failed\s+12\s+\d+s", row), row
        assert "from the running router (http://127.0.0.1:" in out
        report = status_json(capsys, router.config_path)
        assert report["source"] == "router"
        assert count(report, "pacs", "failed") == 12
        assert report["destinations"]["pacs"]["states"]["failed"]["oldest_age_seconds"] >= 0
        assert sum(count(report, "ai", s) for s in ("pending", "leased")) == 12

        # list with filters
        rc, out, _ = cli(
            capsys, "queue", "list", "--config", cfg, "--destination", "pacs", "--state", "failed"
        )
        assert rc == 0
        assert out.splitlines()[0].split()[:4] == ["INSTANCE", "DESTINATION", "STATE", "ATTEMPTS"]
        assert len(out.splitlines()) == 13 and "cannot connect" in out
        rc, out, _ = cli(capsys, "queue", "list", "--config", cfg, "--study", study_a, "--json")
        entries = json.loads(out)
        assert len(entries) == 12  # 6 instances x 2 destinations
        assert {e["study_uid"] for e in entries} == {study_a}
        assert {e["destination"] for e in entries} == {"pacs", "ai"}
        rc, out, _ = cli(capsys, "queue", "list", "--config", cfg, "--older-than", "1h")
        assert (rc, out.strip()) == (0, "no deliveries match older_than=3600s limit=1000")
        rc, out, _ = cli(capsys, "queue", "list", "--config", cfg, "--limit", "3")
        assert len(out.splitlines()) == 5 and "(the first 3; more with --limit N)" in out
        rc, _, err = cli(capsys, "queue", "retry", "--config", cfg, "--state", "pending")
        assert rc == 2 and "dead letters" in err

        # echo: the destination is down
        rc, _, err = cli(capsys, "echo", "--config", cfg, "pacs")
        assert rc == 1 and f"pacs (PACS@127.0.0.1:{pacs_port}): failed:" in err
        rc, _, err = cli(capsys, "echo", "--config", cfg, "nowhere")
        assert rc == 1 and "no destination 'nowhere' (known: pacs, ai)" in err

        # the destination comes up: retry one study, then the rest
        pacs = start_storescp(tmp_path / "pacs", "PACS", port=pacs_port)
        rc, out, _ = cli(capsys, "echo", "--config", cfg, "pacs")
        assert rc == 0
        assert re.fullmatch(
            rf"pacs \(PACS@127.0.0.1:{pacs_port}\): status 0000, round trip \d+\.\d ms\n", out
        )
        rc, out, _ = cli(
            capsys, "queue", "retry", "--config", cfg, "--destination", "pacs", "--study", study_a
        )
        assert (rc, out) == (0, "6 dead letter(s) back to pending\n")
        pacs.wait_files(6, 30)
        rc, out, _ = cli(capsys, "queue", "retry", "--config", cfg, "--destination", "pacs")
        assert (rc, out) == (0, "6 dead letter(s) back to pending\n")
        pacs.wait_files(12, 30)
        wait_for(
            lambda: count(status_json(capsys, router.config_path), "pacs", "delivered") == 12,
            30,
            "12 delivered to pacs",
        )
        assert len(pacs.files()) == 12

        # purge asks first; --yes deletes
        rc, _, err = cli(capsys, "queue", "purge", "--config", cfg, "--destination", "ai")
        assert rc == 2 and "confirm with --yes" in err
        rc, out, _ = cli(capsys, "queue", "purge", "--config", cfg, "--destination", "ai", "--yes")
        assert (rc, out) == (0, "12 deleted\n")
        report = status_json(capsys, router.config_path)
        assert all(count(report, "ai", s) == 0 for s in ("pending", "leased", "failed"))
        assert report["instances"] == 0  # every instance ended everywhere

        # the API itself: filters are checked, writes need JSON and purge a confirmation
        port = router.http_port
        status, body = api(port, "/api/queue/deliveries?destinaton=pacs")
        assert status == 400 and "unknown filter destinaton" in body["error"]
        status, body = api(port, "/api/queue/deliveries?state=lost")
        assert status == 400 and "unknown state 'lost'" in body["error"]
        status, body = api(port, "/api/queue/deliveries?older_than=soon")
        assert status == 400 and "not a duration" in body["error"]
        status, body = api(port, "/api/queue/deliveries?limit=1000000")
        assert status == 400
        status, body = api(port, "/api/queue/purge", {"destination": "pacs"})
        assert status == 409 and "confirm" in body["error"]
        status, body = api(port, "/api/queue/purge", b"{}", content_type="text/plain")
        assert status == 415
        status, body = api(port, "/api/queue/retry", b"[1]")
        assert status == 400
        status, body = api(port, "/api/queue/retry", b"x" * 100_000)
        assert status == 413
        status, body = api(port, "/api/queue/retry")  # GET
        assert status == 405
        status, body = api(port, "/api/queue/retry", {"destination": "pacs"})
        assert (status, body) == (200, {"retried": 0})
        status, body = api(port, "/api/info")
        assert status == 200 and body["storage"] == str(router.storage.resolve())
        assert body["destinations"] == ["pacs", "ai"]
        assert router.terminate() == 0
    assert pacs is not None
    pacs.stop()
    log_text = router.log_path.read_text()
    assert "Synthetic" not in log_text and "SYN0" not in log_text  # no patient name or ID
    events = [r["event"] for r in json_log(router.log_path)]
    assert events.count("queue_retry") == 3 and events.count("queue_purge") == 1


def test_queue_commands_on_the_database_when_the_api_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_many(tmp_path / "src", 4, 3000)
    router = write_config(
        tmp_path,
        {
            "pacs": {
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": reserve_port(),
                "retry": {"max_attempts": 1, "initial_backoff": "100ms", "max_backoff": "1s"},
                "circuit_breaker": {"failures": 1000, "probe_interval": "500ms"},
            }
        },
        rules=[{"name": "ct", "match": {"Modality": "CT"}, "forward": ["pacs"]}],
    )
    # The commands' copy of the config has the API off: they read the database, and
    # writes wait for the router to stop (it holds the storage lock).
    config = yaml.safe_load(router.config_path.read_text())
    config["http"]["enabled"] = False
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(yaml.safe_dump(config))
    cfg = str(cli_config)
    unrouted = write_many(tmp_path / "mr", 2, 3000, Modality="MR")
    with running(router):
        assert storescu(router.port, files + unrouted).returncode == 0
        wait_for(
            lambda: (
                status_json(capsys, cli_config)["destinations"]["pacs"]["states"]["failed"]["count"]
                == 4
            ),
            30,
            "4 dead letters",
        )
        rc, out, _ = cli(capsys, "queue", "status", "--config", cfg)
        assert rc == 0 and "no router answers on its HTTP port" in out
        assert re.search(r"\(no rule matched\)\s+unrouted\s+2\s+\d+s", out), out
        rc, out, _ = cli(capsys, "queue", "list", "--config", cfg, "--state", "unrouted")
        assert rc == 0 and len(out.splitlines()) == 3
        rc, _, err = cli(capsys, "queue", "retry", "--config", cfg)
        assert rc == 1 and "operator API does not answer" in err and "stop it first" in err
        assert router.terminate() == 0
    rc, out, _ = cli(capsys, "queue", "retry", "--config", cfg)
    assert (rc, out) == (0, "4 dead letter(s) back to pending\n")
    report = status_json(capsys, cli_config)
    assert report["source"] == "database" and count(report, "pacs", "pending") == 4
    rc, out, _ = cli(capsys, "queue", "purge", "--config", cfg, "--yes", "--state", "unrouted")
    assert (rc, out) == (0, "2 deleted\n")
    rc, out, _ = cli(capsys, "queue", "purge", "--config", cfg, "--yes")
    assert (rc, out) == (0, "4 deleted\n")
    report = status_json(capsys, cli_config)
    assert report["instances"] == 0 and report["unrouted"]["count"] == 0
    records = json_log(router.log_path)  # every line is JSON
    assert {"started", "stored", "dead_letter", "stopped"} <= {r["event"] for r in records}

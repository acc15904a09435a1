"""Hot reload of a live router under load: config and rule file changes are picked up
by the watcher, SIGHUP reloads too, a bad config is refused with the lines `check`
prints and counted, and no instance is lost meanwhile."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from router.samples import write_many
from tests.integration.peers import (
    RouterProcess,
    running,
    start_storescp,
    storescu,
    wait_for,
    write_config,
)
from tests.ops.helpers import cli, json_log, status_json

pytestmark = pytest.mark.usefixtures("dcmtk")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Load(threading.Thread):
    """storescu sending batches of new instances until told to stop."""

    def __init__(self, router: RouterProcess, directory: Path, batch: int = 20) -> None:
        super().__init__(daemon=True)
        self.router, self.directory, self.batch = router, directory, batch
        self.stop = threading.Event()
        self.sent: list[Path] = []
        self.failures: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 40:
            files = write_many(self.directory / f"b{n:02d}", self.batch, 2000)
            res = storescu(self.router.port, files)
            if res.returncode != 0:
                self.failures.append(res.stderr)
            self.sent += files
            n += 1

    def batches(self) -> int:
        return len(self.sent) // self.batch


def uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_reload_good_and_bad_under_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOM_ROUTER_WATCH_INTERVAL", "0.3")
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    ai = start_storescp(tmp_path / "ai", "AI")
    rules_file = tmp_path / "rules" / "main.yaml"
    rules_file.parent.mkdir()
    rules_file.write_text(yaml.safe_dump([{"name": "all", "forward": ["pacs"]}]))
    router = write_config(
        tmp_path,
        {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}},
        rules="rules/*.yaml",  # type: ignore[arg-type]
    )
    config: dict[str, Any] = yaml.safe_load(router.config_path.read_text())
    ai_dest = {
        "ae_title": "AI",
        "host": "127.0.0.1",
        "port": ai.port,
        "retry": {"max_attempts": 50, "initial_backoff": "100ms", "max_backoff": "500ms"},
    }

    def reloads(result: str) -> float:
        return router.metric("dicom_router_config_reloads_total", result=result)

    load = Load(router, tmp_path / "src")
    try:
        with running(router):
            load.start()
            wait_for(lambda: load.batches() >= 1, 30, "a first batch")

            # 1. a new destination in the config, then a rule file that uses it
            write_atomic(
                router.config_path,
                yaml.safe_dump(
                    {**config, "destinations": {**config["destinations"], "ai": ai_dest}}
                ),
            )
            wait_for(lambda: reloads("ok") >= 1, 10, "the reload adding ai")
            write_atomic(rules_file, yaml.safe_dump([{"name": "all", "forward": ["pacs", "ai"]}]))
            wait_for(
                lambda: len(ai.complete_files()) >= 5, 20, "instances routed to the new destination"
            )
            ok_after_add = reloads("ok")
            assert ok_after_add == 2

            # ai goes down: its deliveries wait in the queue
            ai.stop()
            wait_for(
                lambda: (
                    status_json(capsys, router.config_path)["destinations"]["ai"]["states"][
                        "pending"
                    ]["count"]
                    > 0
                ),
                20,
                "pending deliveries for ai",
            )

            # 2. a bad config: refused with the lines of `check`, counted, old one runs
            bad = {
                **config,
                "destinations": {**config["destinations"], "ai": ai_dest},
                "listen": {**config["listen"], "max_asociations": 3},
                "rules": [{"name": "x", "forward": ["nowhere"]}],
            }
            write_atomic(router.config_path, yaml.safe_dump(bad))
            wait_for(lambda: reloads("error") == 1, 10, "the bad config to be refused")
            rc, _, err = cli(capsys, "check", "--config", str(router.config_path))
            assert rc == 1
            check_lines = err.splitlines()
            assert len(check_lines) == 2 and "max_asociations" in err and "nowhere" in err

            # 3. SIGHUP with the bad file still there: refused again
            assert router.proc is not None
            router.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: reloads("error") == 2, 10, "the SIGHUP reload to be refused")
            batches_before = load.batches()
            wait_for(lambda: load.batches() >= batches_before + 1, 30, "load going on")

            # 4. fixed: rules back to pacs only, then ai leaves the config
            write_atomic(rules_file, yaml.safe_dump([{"name": "all", "forward": ["pacs"]}]))
            write_atomic(
                router.config_path,
                yaml.safe_dump(
                    {**config, "destinations": {**config["destinations"], "ai": ai_dest}}
                ),
            )
            wait_for(lambda: reloads("ok") == ok_after_add + 1, 10, "the fixed config")
            write_atomic(router.config_path, yaml.safe_dump(config))
            wait_for(lambda: reloads("ok") == ok_after_add + 2, 10, "the reload removing ai")
            batches_before = load.batches()
            wait_for(lambda: load.batches() >= batches_before + 1, 30, "load after the reloads")
            load.stop.set()
            load.join(60)
            assert not load.is_alive() and not load.failures, load.failures

            sent = len(load.sent)
            assert sent >= 100
            wait_for(lambda: len(pacs.complete_files()) >= sent, 60, f"{sent} instances at pacs")
            assert uids(pacs.files()) == uids(load.sent)  # not one lost
            assert router.metric("dicom_router_received_instances_total") == sent
            assert router.metric("dicom_router_store_responses_total", status="0000") == sent
            assert (reloads("ok"), reloads("error")) == (ok_after_add + 2, 2)
            assert uids(ai.files()) <= uids(load.sent)

            # the removed destination's deliveries stay visible
            report = status_json(capsys, router.config_path)
            assert report["destinations"]["ai"]["configured"] is False
            assert report["destinations"]["ai"]["states"]["pending"]["count"] > 0
            rc, out, _ = cli(capsys, "queue", "status", "--config", str(router.config_path))
            assert "ai (not in config)  pending" in out
            assert router.terminate() == 0
    finally:
        load.stop.set()
        pacs.stop()
        ai.stop()

    records = json_log(router.log_path)
    problems = [r["problem"] for r in records if r["event"] == "config_reload_problem"]
    assert problems == check_lines * 2  # the same lines as `check`, for each refusal
    refused = [r for r in records if r["event"] == "config_reload_refused"]
    assert [r["reason"] for r in refused] == ["file_changed", "signal"]
    reloaded = [r for r in records if r["event"] == "config_reloaded"]
    assert reloaded[0]["added"] == "ai" and reloaded[-1]["removed"] == "ai"
    banner = next(r for r in records if r["event"] == "started")
    assert banner["dicom"] == f"127.0.0.1:{router.port}"
    assert banner["http"] == f"127.0.0.1:{router.http_port}"
    assert banner["destinations"] == f"pacs=PACS@127.0.0.1:{pacs.port}"
    assert banner["rules"] == 1

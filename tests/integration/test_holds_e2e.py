"""Holds end to end: storescu -> the router process -> two storescp, one destination with
a series hold and one without.

storescp logs each file it stores (``-v``: ``storing DICOM file: <dir>/CT.<SOP Instance
UID>``) as it receives it, one after the other: its log gives the order of arrival.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid

from router.samples import write_dataset
from tests.integration.peers import (
    NODELAY_ENV,
    RouterProcess,
    StoreSCP,
    port_open,
    running,
    storescu,
    wait_for,
    write_config,
)
from tests.ports import PortInUse, retry_in_use

pytestmark = pytest.mark.usefixtures("dcmtk")


def make_series(
    directory: Path, study: str, number: int, count: int, first: int = 1
) -> tuple[str, list[Path]]:
    uid = generate_uid()
    files = [
        write_dataset(
            directory / f"s{number}_{i:03d}.dcm",
            4_000,
            StudyInstanceUID=study,
            SeriesInstanceUID=uid,
            SeriesNumber=number,
            InstanceNumber=i,
        )
        for i in range(first, first + count)
    ]
    numbers(files)
    return uid, files


class LoggingSCP(StoreSCP):
    """storescp -v with its log in a file (``storing DICOM file:`` lines in order)."""

    log_path: Path

    def arrivals(self) -> list[str]:
        """SOP Instance UIDs in the order they arrived."""
        marker = "storing DICOM file: "
        text = self.log_path.read_text(errors="replace")
        return [
            line.split(marker, 1)[1].strip().rsplit("/", 1)[-1].split(".", 1)[1]
            for line in text.splitlines()
            if marker in line
        ]

    def files(self) -> list[Path]:
        return [p for p in super().files() if p != self.log_path]


def start_logging_scp(directory: Path, ae_title: str) -> LoggingSCP:
    directory.mkdir(parents=True, exist_ok=True)
    return retry_in_use(lambda port: _start_logging_scp(port, directory, ae_title))


def _start_logging_scp(port: int, directory: Path, ae_title: str) -> LoggingSCP:
    log_path = directory.parent / f"{ae_title}.log"
    with log_path.open("wb") as log:
        argv = ["storescp", "-v", "--aetitle", ae_title, "--output-directory", str(directory)]
        proc = subprocess.Popen(
            [*argv, "--accept-all", str(port)],
            env=NODELAY_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    scp = LoggingSCP(port, directory, ae_title, proc)
    scp.log_path = log_path
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, "storescp to listen")
    except AssertionError:
        scp.stop()
        raise
    if proc.poll() is not None:
        scp.stop()
        err = log_path.read_text(errors="replace")
        if "Address already in use" in err:
            raise PortInUse(err)
        raise RuntimeError(f"storescp exited: {err}")
    return scp


_numbers: dict[str, tuple[int, int]] = {}  # SOP Instance UID -> (series, instance number)


def order(scp: LoggingSCP) -> list[tuple[int, int]]:
    """(SeriesNumber, InstanceNumber) of what ``scp`` received, in arrival order."""
    return [_numbers[uid] for uid in scp.arrivals()]


def numbers(files: list[Path]) -> list[tuple[int, int]]:
    out = []
    for p in files:
        ds = dcmread(p, stop_before_pixels=True)
        out.append((int(ds.SeriesNumber), int(ds.InstanceNumber)))
        _numbers[str(ds.SOPInstanceUID)] = out[-1]
    return out


def events(router: RouterProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in router.log().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            found.append(event)
    return found


def cli(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "queue", *args, "--config", str(router.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def two_destinations(
    tmp_path: Path, quiet: str, max_wait: str = "1h"
) -> tuple[LoggingSCP, LoggingSCP, RouterProcess]:
    plain = start_logging_scp(tmp_path / "plain", "PLAIN")
    ai = start_logging_scp(tmp_path / "ai", "AI")
    router = write_config(
        tmp_path,
        {
            "plain": {"ae_title": "PLAIN", "host": "127.0.0.1", "port": plain.port},
            "ai": {
                "ae_title": "AI",
                "host": "127.0.0.1",
                "port": ai.port,
                "hold": {"until": "series_complete", "quiet": quiet, "max_wait": max_wait},
            },
        },
    )
    return plain, ai, router


def _min_mtime(scp: StoreSCP, skip: int = 0) -> float:
    """When the first file (after ``skip`` files, in arrival order) arrived."""
    files = sorted(scp.files(), key=lambda p: p.stat().st_mtime_ns)[skip:]
    return min(p.stat().st_mtime for p in files)


# Linux file times are taken from a coarse clock (a few milliseconds behind time.time())
MTIME_SLACK = 0.05


def test_a_series_hold_sends_each_series_whole_in_instance_order(tmp_path: Path) -> None:
    quiet = 4.0
    study = generate_uid()
    uid_a, series_a = make_series(tmp_path / "src", study, 1, 6)
    uid_b, series_b = make_series(tmp_path / "src", study, 2, 6)
    number_of = {uid_a: 1, uid_b: 2}
    mixed = series_a + series_b
    random.Random(7).shuffle(mixed)
    # both series have instances in both bursts
    first = [p for p in mixed if p in series_a[:3] or p in series_b[:3]]
    second = [p for p in mixed if p not in first]
    plain, ai, router = two_destinations(tmp_path, f"{quiet:g}s")
    try:
        with running(router):
            res = storescu(router.port, first)
            assert res.returncode == 0, res.stderr
            plain.wait_files(len(first))  # the destination without a hold: at once
            assert ai.files() == []
            second_started = time.time()
            res = storescu(router.port, second)
            assert res.returncode == 0, res.stderr
            plain.wait_files(len(mixed))
            ai.wait_files(len(mixed), timeout=60)
            # nothing before quiet had passed after each series' last instance
            assert _min_mtime(ai) >= second_started + quiet - MTIME_SLACK
            released = events(router, "hold_released")
            assert [(e["count"], e["reason"]) for e in released] == [(6, "quiet"), (6, "quiet")]
            assert {e["destination"] for e in released} == {"ai"}
            # each series whole and in InstanceNumber order, in the order they were released
            first_out = number_of[released[0]["series_uid"]]
            assert order(ai) == sorted(numbers(mixed), key=lambda n: (n[0] != first_out, n))
            assert sorted(order(plain)) == sorted(numbers(mixed))

            # a late instance of series 1: held again, delivered alone after its quiet
            _, late = make_series(tmp_path / "late", study, 1, 1, first=7)
            ds = dcmread(late[0])
            ds.SeriesInstanceUID = uid_a
            ds.save_as(late[0])
            late_started = time.time()
            res = storescu(router.port, late)
            assert res.returncode == 0, res.stderr
            plain.wait_files(len(mixed) + 1)
            ai.wait_files(len(mixed) + 1, timeout=60)
            assert _min_mtime(ai, skip=len(mixed)) >= late_started + quiet - MTIME_SLACK
            assert order(ai)[-1] == (1, 7)
            last = events(router, "hold_released")[-1]
            assert (last["series_uid"], last["count"], last["reason"]) == (uid_a, 1, "quiet")
            wait_for(
                lambda: (
                    router.metric("dicom_router_queue_instances", state="held") == 0
                    and router.metric(
                        "dicom_router_forwarded_instances_total",
                        destination="ai",
                        outcome="delivered",
                    )
                    == len(mixed) + 1
                ),
                30,
                "the held gauge back at 0",
            )
            assert router.terminate() == 0
    finally:
        plain.stop()
        ai.stop()


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_held_series_survive_a_stop_and_are_delivered_whole_after_restart(
    tmp_path: Path, stop: str
) -> None:
    quiet = 6.0
    study = generate_uid()
    uid_a, series_a = make_series(tmp_path / "src", study, 1, 5)
    uid_b, series_b = make_series(tmp_path / "src", study, 2, 5)
    number_of = {uid_a: 1, uid_b: 2}
    mixed = series_a + series_b
    random.Random(3).shuffle(mixed)
    plain, ai, router = two_destinations(tmp_path, f"{quiet:g}s")
    try:
        with running(router):
            res = storescu(router.port, mixed)
            assert res.returncode == 0, res.stderr
            plain.wait_files(len(mixed))
            wait_for(
                lambda: router.metric("dicom_router_queue_instances", state="held") == len(mixed),
                10,
                "the held gauge",
            )
            if stop == "sigterm":
                assert router.terminate() == 0
            else:
                router.kill9()
        assert events(router, "hold_released") == []  # stopped while both were held
        assert ai.files() == []
        # while it is down the queue tells when they go out
        res = cli(router, "list", "--state", "held", "--json")
        assert res.returncode == 0, res.stderr
        held = json.loads(res.stdout)
        assert len(held) == len(mixed)
        assert {e["release_reason"] for e in held} == {"quiet"}
        release_at = max(e["release_at"] for e in held)
        if stop == "kill9":  # restart after their time passed: released at once at start
            wait_for(lambda: time.time() > release_at + 0.5, 30, "the release time to pass")
        with running(router):
            ai.wait_files(len(mixed), timeout=60)
            assert _min_mtime(ai) >= min(e["release_at"] for e in held) - MTIME_SLACK
            released = events(router, "hold_released")
            assert [e["count"] for e in released] == [5, 5]
            first_out = number_of[released[0]["series_uid"]]
            assert order(ai) == sorted(numbers(mixed), key=lambda n: (n[0] != first_out, n))
            assert router.terminate() == 0
    finally:
        plain.stop()
        ai.stop()


def test_queue_commands_show_and_release_holds(tmp_path: Path) -> None:
    study = generate_uid()
    uid_a, series_a = make_series(tmp_path / "src", study, 1, 4)
    _, series_b = make_series(tmp_path / "src", study, 2, 4)
    plain, ai, router = two_destinations(tmp_path, "1h", "2h")  # only the operator releases
    try:
        with running(router):
            res = storescu(router.port, series_b[::-1] + series_a[::-1])
            assert res.returncode == 0, res.stderr
            plain.wait_files(8)
            res = cli(router, "status", "--json")
            assert res.returncode == 0, res.stderr
            report = json.loads(res.stdout)
            assert report["source"] == "router"
            assert report["destinations"]["ai"]["states"]["held"]["count"] == 8
            assert report["destinations"]["plain"]["states"]["held"]["count"] == 0
            res = cli(router, "status")
            assert any(
                line.split()[:3] == ["ai", "held", "8"] for line in res.stdout.splitlines()
            ), res.stdout
            res = cli(router, "list", "--state", "held")
            assert res.returncode == 0, res.stderr
            rows = [line for line in res.stdout.splitlines() if " held " in line]
            assert len(rows) == 8 and all("(quiet)" in line for line in rows), res.stdout
            assert router.metric("dicom_router_queue_instances", state="held") == 8

            res = cli(router, "release", "--series", uid_a)  # through the running router
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith("4 held deliveries released"), res.stdout
            ai.wait_files(4)
            assert order(ai) == [(1, 1), (1, 2), (1, 3), (1, 4)]
            (event,) = events(router, "hold_released")
            assert (event["series_uid"], event["count"], event["reason"]) == (uid_a, 4, "operator")
            assert router.terminate() == 0
        res = cli(router, "release", "--destination", "ai")  # standalone: no router runs
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("4 held deliveries released"), res.stdout
        with running(router):
            ai.wait_files(8)
            assert order(ai) == [(1, i) for i in range(1, 5)] + [(2, i) for i in range(1, 5)]
            assert router.terminate() == 0
    finally:
        plain.stop()
        ai.stop()


def test_a_hold_added_or_removed_by_reload_applies_to_the_next_instances(
    tmp_path: Path,
) -> None:
    study = generate_uid()
    _, before = make_series(tmp_path / "before", study, 1, 1)
    uid_held, held = make_series(tmp_path / "held", study, 2, 3)
    _, after = make_series(tmp_path / "after", study, 3, 1)
    plain, ai, router = two_destinations(tmp_path, "2s")
    config = yaml.safe_load(router.config_path.read_text())
    hold = config["destinations"]["ai"].pop("hold")
    router.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def reload() -> None:
        """SIGHUP (the config watcher may see the change first: either reload counts)."""
        assert router.proc is not None
        done = router.metric("dicom_router_config_reloads_total", result="ok")
        router.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: router.metric("dicom_router_config_reloads_total", result="ok") > done,
            20,
            "the reload",
        )

    try:
        with running(router):
            assert storescu(router.port, before).returncode == 0
            ai.wait_files(1)  # no hold yet: at once
            config["destinations"]["ai"]["hold"] = hold
            router.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            reload()
            assert storescu(router.port, held[::-1]).returncode == 0
            plain.wait_files(4)
            ai.wait_files(4)
            assert order(ai) == [(1, 1), (2, 1), (2, 2), (2, 3)]  # sent 3, 2, 1: held
            (event,) = events(router, "hold_released")
            assert (event["series_uid"], event["count"]) == (uid_held, 3)
            del config["destinations"]["ai"]["hold"]
            router.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            reload()
            assert storescu(router.port, after).returncode == 0
            ai.wait_files(5)
            assert len(events(router, "hold_released")) == 1  # sent without a hold
            assert router.terminate() == 0
    finally:
        plain.stop()
        ai.stop()

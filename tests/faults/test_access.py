"""Fault matrix, who may associate (case 13): calling AE not allowed (1,1,3),
wrong called AE (1,1,7), and the optional per-AE IP allow-list (accept.hosts), on the
router process; changes apply on reload. The bare acceptor's rejections are in
tests/dicom/test_hostile.py (test_rejections)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_config
from router.samples import write_many
from tests.faults.faultlib import (
    A_ASSOCIATE_AC,
    CT,
    RawPeer,
    dataset,
    dest,
    down_port,
    make_router,
    rejection,
)
from tests.integration.peers import running, storescu, wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


def _answer(port: int, calling: str, called: str = "ROUTER") -> tuple[int, int, int] | str:
    with RawPeer(port) as p:
        kind, whole = p.associate(calling=calling, called=called)
        if kind == A_ASSOCIATE_AC:
            uid = "1.2.826.0.1.3680043.8.498.1300"
            assert p.store(CT, uid, dataset(CT, uid)) == (0, "")
            p.release()
            return "accepted"
        return rejection(whole)


def test_13_calling_and_called_ae_and_host_allow_list(tmp_path: Path) -> None:
    router = make_router(
        tmp_path,
        {"pacs": dest("PACS", down_port())},
        accept={
            "calling_ae_titles": ["CT_1", "CT_2", "MR_1"],
            "hosts": {"CT_1": ["127.0.0.1"], "CT_2": ["10.0.0.5/32", "fd00::/64"]},
        },
    )
    files = write_many(tmp_path / "src", 1, size=8_000)
    with running(router):
        assert _answer(router.port, "INTRUDER") == (1, 1, 3)
        assert _answer(router.port, "CT_1", called="NOT_ROUTER") == (1, 1, 7)
        assert _answer(router.port, "CT_2") == (1, 1, 3)  # known AE, wrong host
        assert _answer(router.port, "CT_1") == "accepted"  # listed host
        assert _answer(router.port, "MR_1") == "accepted"  # no host list for MR_1
        assert storescu(router.port, files, calling="CT_2").returncode != 0
        assert storescu(router.port, files, calling="CT_1").returncode == 0
        rejected = "dicom_router_associations_rejected_total"
        assert router.metric(rejected, reason="calling_ae_not_recognized") == 1  # INTRUDER
        assert router.metric(rejected, reason="host_not_allowed") == 2  # CT_2, twice
        assert (
            router.metric(
                "dicom_router_associations_rejected_total", reason="called_ae_not_recognized"
            )
            == 1
        )
        # one association_rejected line for each, naming the cause
        assert router.log().count('"host_not_allowed"') == 2
        # reload: CT_2 may now connect from loopback; "*" restricts every other AE
        cfg = yaml.safe_load(router.config_path.read_text())
        cfg["accept"]["hosts"] = {"CT_2": ["127.0.0.0/8"], "*": ["192.0.2.0/24"]}
        router.config_path.write_text(yaml.safe_dump(cfg))
        assert router.proc is not None
        router.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: router.metric("dicom_router_config_reloads_total", result="ok") >= 1,
            10,
            "the reload",
        )
        assert _answer(router.port, "CT_2") == "accepted"
        assert _answer(router.port, "CT_1") == (1, 1, 3)  # under "*" now
        assert _answer(router.port, "MR_1") == (1, 1, 3)


def test_13_host_allow_list_config_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "ae_title: ROUTER\nstorage: {path: s}\naccept:\n  hosts:\n    CT_1: [10.0.0.300]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.line == 5
    assert "10.0.0.300" in str(problem) and "not an IP address" in str(problem)

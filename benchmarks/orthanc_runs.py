"""The router forwarding to a real Orthanc: storescu -> `python -m router run` -> Orthanc,
over STOW-RS (`router-stow`, its DICOMweb plugin) or over C-STORE (`router-cstore-orthanc`,
the same Orthanc's DICOM port), so the two kinds are compared against one server.

Orthanc is started once per invocation (the first scenario that needs it; TCP_NODELAY=1
like every peer) and stopped with the other children at the end; each run clears it
first, and ends when Orthanc holds every instance. Each generated instance is a study of
its own, so every STOW-RS request carries one instance.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    HOST,
    ROUTER_AE,
    InputSet,
    RunDir,
    RunResult,
    Settings,
    dcmtk_env,
    make_result,
    storescu_argv,
)
from benchmarks.procs import (
    BenchError,
    Usage,
    proc_usage,
    reap,
    reserve_port,
    running,
    spawn,
    try_reap,
)
from benchmarks.router_runs import _http_get, _spawn_router, _wait_ready

__all__ = ["orthanc_available", "run_router_cstore_orthanc", "run_router_stow"]

ORTHANC_AE = "ORTHANC"
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def _plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        found = sorted(d.glob("libOrthancDicomWeb.so*")) if d.is_dir() else []
        if found:
            return found[0]
    return None


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else why not."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc)"
    if _plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
    return None


@dataclass
class _Orthanc:
    http_port: int
    dicom_port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def request(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(req, timeout=120) as resp:
            return bytes(resp.read())

    def count_instances(self) -> int:
        """Instances stored (polled instead of the router's /metrics, which would add
        the router's own scrape work to what is measured)."""
        stats = json.loads(self.request("GET", "/statistics"))
        return int(stats["CountInstances"])

    def clear(self) -> None:
        for patient in json.loads(self.request("GET", "/patients")):
            self.request("DELETE", f"/patients/{patient}")


_server: _Orthanc | None = None


def _unused_port() -> int:
    """A port nobody listens on now, for Orthanc: it does not share a port held by
    reserve_port (no SO_REUSEADDR), so it gets one released at once."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _orthanc(settings: Settings) -> _Orthanc:
    """The invocation's Orthanc, started on first use."""
    global _server
    if _server is not None and _server.proc.poll() is None:
        return _server
    plugin = _plugin()
    if plugin is None:
        raise BenchError("Orthanc's DICOMweb plugin is not installed")
    root = settings.workdir / "orthanc"
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = _unused_port(), _unused_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpTimeout": 600,
        "StableAge": 3600,
        "LimitFindResults": 0,
    }
    cfg = root / "config.json"
    cfg.write_text(json.dumps(config))
    log = (root / "orthanc.log").open("ab")
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = spawn(["Orthanc", str(cfg)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    log.close()
    server = _Orthanc(http_port, dicom_port, proc)
    ready_by = time.monotonic() + 60
    while _http_get(server.url + "/system")[0] != 200:
        if proc.poll() is not None:
            raise BenchError(f"Orthanc exited with {proc.returncode}; log: {root / 'orthanc.log'}")
        if time.monotonic() > ready_by:
            raise BenchError("Orthanc did not answer within 60 s")
        time.sleep(0.1)
    _server = server
    return server


STOW_DESTINATION = """\
  orthanc:
    dicomweb: {{url: "http://{host}:{http_port}/dicom-web", timeout: 5m}}
    max_associations: 1
"""
CSTORE_DESTINATION = """\
  orthanc:
    ae_title: {ae}
    host: {host}
    port: {dicom_port}
    max_associations: 1
    max_pdu_length: {pdu}
"""
CONFIG = """\
# generated by benchmarks/orthanc_runs.py for one benchmark run
ae_title: {router_ae}
listen: {{host: {host}, port: {port}, max_pdu_length: {pdu}}}
storage: {{path: {storage}}}
http: {{host: {host}, port: {http_port}}}
destinations:
{destination}rules:
  - name: everything
    forward: [orthanc]
"""


def _forwarded(metrics: str, outcome: str | None = None) -> float:
    """Instances the router is done with (any outcome, or ``outcome``)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith("dicom_router_forwarded_instances_total{"):
            continue
        if outcome is None or f'outcome="{outcome}"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def _run(settings: Settings, inputs: InputSet, rnd: int, name: str, stow: bool) -> RunResult:
    server = _orthanc(settings)
    server.clear()
    rd = RunDir(settings, name)
    try:
        port, http_port = reserve_port(), reserve_port()
        template = STOW_DESTINATION if stow else CSTORE_DESTINATION
        destination = template.format(
            host=HOST,
            http_port=server.http_port,
            dicom_port=server.dicom_port,
            ae=ORTHANC_AE,
            pdu=settings.pdu,
        )
        cfg = rd.path / "router.yaml"
        cfg.write_text(
            CONFIG.format(
                router_ae=ROUTER_AE,
                host=HOST,
                port=port,
                pdu=settings.pdu,
                storage=rd.sub("storage"),
                http_port=http_port,
                destination=destination,
            )
        )
        metrics_url = f"http://{HOST}:{http_port}/metrics"
        deadline = time.monotonic() + settings.timeout
        router = _spawn_router(settings, rd, cfg)
        with running(router):
            _wait_ready(router, rd, http_port)
            u0, o0 = proc_usage(router.pid), proc_usage(server.proc.pid)
            t0 = time.perf_counter()
            scu = spawn(
                storescu_argv(settings, inputs, port, ROUTER_AE),
                env=dcmtk_env(),
                stderr=rd.log("storescu"),
            )
            u_scu = None
            while True:
                if u_scu is None:
                    u_scu = try_reap(scu)
                    if u_scu is not None and scu.returncode != 0:
                        raise BenchError(
                            f"storescu exited {scu.returncode}:\n{rd.tail('storescu')}"
                        )
                done = server.count_instances()
                if done >= inputs.count:
                    break
                if router.poll() is not None:
                    raise BenchError(f"router died ({router.returncode}):\n{rd.tail('router')}")
                if time.monotonic() > deadline:
                    raise BenchError(f"router forwarded {done:.0f}/{inputs.count} in time")
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            u1, o1 = proc_usage(router.pid), proc_usage(server.proc.pid)
            if u_scu is None:
                u_scu = reap(scu, time.monotonic() + 30, "storescu")
            _, text = _http_get(metrics_url)
        failed = _forwarded(text, "failed")
        if failed:
            raise BenchError(f"{failed:.0f} instances were dead-lettered:\n{rd.tail('router')}")
        orthanc_usage = Usage(o1.cpu_s - o0.cpu_s, o1.peak_rss_kib)
        return make_result(
            name, inputs, rnd, wall, (u0, u1), {"storescu": u_scu, "orthanc": orthanc_usage}
        )
    finally:
        rd.close()


def run_router_stow(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """storescu -> router -> Orthanc over STOW-RS."""
    return _run(settings, inputs, rnd, "router-stow", stow=True)


def run_router_cstore_orthanc(settings: Settings, inputs: InputSet, rnd: int) -> RunResult:
    """storescu -> router -> Orthanc over C-STORE (the same server, for comparison)."""
    return _run(settings, inputs, rnd, "router-cstore-orthanc", stow=False)

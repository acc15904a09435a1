"""A real Orthanc with its DICOMweb plugin, started by the tests (Debian's `orthanc` and
`orthanc-dicomweb`, installed by `make test`).

Orthanc cannot bind port 0 and report the port, so the fixture picks a free port and
starts again on another one when Orthanc exits before it answers (someone took the
port in between)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import unreserved_port

PLUGIN_NAMES = ("libOrthancDicomWeb.so",)
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
START_DEADLINE = 60.0
USER, PASSWORD = "router", "s3cret-pw"


def dicomweb_plugin() -> Path:
    for d in PLUGIN_DIRS:
        for name in PLUGIN_NAMES:
            if (d / name).exists():
                return d / name
        found = sorted(d.glob("libOrthancDicomWeb.so*")) if d.is_dir() else []
        if found:
            return found[0]
    pytest.fail("Orthanc's DICOMweb plugin is not installed: run `make test` (orthanc-dicomweb)")


@dataclass
class Orthanc:
    """A running Orthanc: `url` is its REST root, `dicomweb` the DICOMweb root."""

    url: str
    dicomweb: str
    auth: tuple[str, str] | None
    proc: subprocess.Popen[bytes]
    log: Path

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return bytes(resp.read())

    def get_json(self, path: str) -> object:
        return json.loads(self._request("GET", path))

    def post_instance(self, data: bytes) -> str:
        """Stores a file through Orthanc's own REST API; returns Orthanc's instance id."""
        answer = json.loads(self._request("POST", "/instances", data))
        return str(answer["ID"])

    def instance_file(self, orthanc_id: str) -> bytes:
        return self._request("GET", f"/instances/{orthanc_id}/file")

    def delete_instance(self, orthanc_id: str) -> None:
        self._request("DELETE", f"/instances/{orthanc_id}")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        body = json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
        found = json.loads(self._request("POST", "/tools/find", body.encode()))
        return str(found[0]) if found else None

    def clear(self) -> None:
        for patient in json.loads(self._request("GET", "/patients")):
            self._request("DELETE", f"/patients/{patient}")


def _answers(url: str, auth: tuple[str, str] | None) -> bool:
    req = urllib.request.Request(url + "/system")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_orthanc(root: Path, *, users: dict[str, str] | None, port: int | None = None) -> Orthanc:
    """``port``: this one (a router configured before Orthanc starts), else a free one."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make test` (Debian package orthanc)")
    plugin = dicomweb_plugin()
    auth = next(iter(users.items())) if users else None
    wanted = port
    for _ in range(5):
        port = wanted or unreserved_port()
        run = root / f"run-{port}"
        run.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "router-tests",
            "StorageDirectory": str(run / "storage"),
            "IndexDirectory": str(run / "index"),
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpTimeout": 600,
            "StableAge": 3600,
        }
        (run / "config.json").write_text(json.dumps(config))
        log = run / "orthanc.log"
        env = {**os.environ, "TCP_NODELAY": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["Orthanc", "--verbose", str(run / "config.json")],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=run,
                env=env,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(url, auth):
                return Orthanc(url, url + "/dicom-web", auth, proc, log)
            time.sleep(0.1)  # poll with a deadline: Orthanc gives no readiness signal
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail(f"Orthanc did not answer within {START_DEADLINE}s; log: {log}")
    pytest.fail(f"Orthanc exited at start five times (ports taken?); last log: {log}")


def stop_orthanc(orthanc: Orthanc) -> None:
    orthanc.proc.terminate()
    try:
        orthanc.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        orthanc.proc.kill()
        orthanc.proc.wait()

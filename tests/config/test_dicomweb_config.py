"""A destination's kind in the config: DIMSE (ae_title, host, port) or DICOMweb
(dicomweb), never both, never neither; the dicomweb section's own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import check, load_config

HEAD = """\
ae_title: ROUTER
storage: {path: ./var}
destinations:
"""


def write(tmp_path: Path, destinations: str) -> Path:
    (tmp_path / "token").write_text("abc\n")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "empty").write_text("\n")
    p = tmp_path / "router.yaml"
    p.write_text(HEAD + destinations)
    return p


def test_a_dicomweb_destination_with_every_setting(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "  cloud:\n"
        "    dicomweb:\n"
        "      url: https://pacs.example/dicom-web\n"
        "      auth: {bearer_token_file: token}\n"
        "      timeout: 30s\n"
        "      max_instances_per_request: 4\n"
        "    max_associations: 3\n"
        "    retry: {max_attempts: 5}\n"
        "    transcode_to: ExplicitVRLittleEndian\n"
        "  basic:\n"
        "    dicomweb:\n"
        "      url: 'http://10.0.0.1:8042/dicom-web'\n"
        "      auth: {username: u, password_file: pw}\n"
        "  pacs: {ae_title: PACS, host: 10.1.2.3, port: 104}\n",
    )
    cfg = load_config(p)
    cloud = cfg.destinations["cloud"]
    assert cloud.dicomweb is not None and cloud.is_dicomweb
    assert cloud.dicomweb.url == "https://pacs.example/dicom-web"
    assert cloud.dicomweb.auth is not None
    assert cloud.dicomweb.auth.bearer_token_file == tmp_path / "token"
    assert cloud.dicomweb.timeout == 30.0
    assert cloud.dicomweb.max_instances_per_request == 4
    assert (cloud.max_associations, cloud.retry.max_attempts) == (3, 5)
    assert cloud.address == "https://pacs.example/dicom-web"
    basic = cfg.destinations["basic"].dicomweb
    assert basic is not None and basic.auth is not None
    assert (basic.auth.username, basic.auth.password_file) == ("u", tmp_path / "pw")
    assert (basic.timeout, basic.max_instances_per_request) == (120.0, 16)  # defaults
    pacs = cfg.destinations["pacs"]
    assert pacs.dicomweb is None and pacs.address == "PACS@10.1.2.3:104"


@pytest.mark.parametrize(
    ("destinations", "line", "message"),
    [
        (
            "  both:\n    ae_title: PACS\n    host: h\n    port: 104\n"
            "    dicomweb: {url: 'https://x/dicom-web'}\n",
            5,
            "destinations.both: both ae_title, host, port (DIMSE C-STORE) and dicomweb "
            "(STOW-RS): a destination is one kind; remove one",
        ),
        (
            "  neither: {max_associations: 2}\n",
            4,
            "destinations.neither: no kind: give ae_title, host and port (DIMSE C-STORE) or a "
            "dicomweb section with its url (STOW-RS)",
        ),
        (
            "  pacs: {ae_title: PACS, host: h}\n",
            4,
            "destinations.pacs.port: missing (required; add e.g. 'port: 104')",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', auth: {bearer_token_file: nope}}\n",
            5,
            "destinations.web.dicomweb.auth.bearer_token_file: file not found: ",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', auth: {username: u, password_file: empty}}"
            "\n",
            5,
            "destinations.web.dicomweb.auth.password_file: the secret file ",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', auth: {username: u}}\n",
            5,
            "destinations.web.dicomweb.auth: 'username' and 'password_file' go together",
        ),
        (
            "  web:\n    dicomweb:\n      url: 'https://x/'\n"
            "      auth: {bearer_token_file: token, username: u, password_file: pw}\n",
            7,
            "destinations.web.dicomweb.auth: give either bearer_token_file or username and "
            "password_file, not both",
        ),
        (
            "  web:\n    dicomweb: {url: 'pacs.example/dicom-web'}\n",
            5,
            "destinations.web.dicomweb.url: 'pacs.example/dicom-web' is not an http:// or "
            "https:// URL: write e.g. https://pacs.example/dicom-web",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/dicom-web?limit=1'}\n",
            5,
            "destinations.web.dicomweb.url: 'https://x/dicom-web?limit=1': give the DICOMweb "
            "root only",
        ),
        (
            "  web:\n    dicomweb: {url: 'http://x:99999/'}\n",
            5,
            "destinations.web.dicomweb.url: 'http://x:99999/' is not a valid URL",
        ),
        (
            "  web:\n    dicomweb: {url: 'http://x/', tls: {}}\n",
            5,
            "destinations.web.dicomweb: tls is set but the url is not https: use https://x/",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/'}\n    tls: {}\n",
            5,
            "destinations.web: tls: only for DIMSE destinations, not dicomweb; remove it (TLS "
            "for dicomweb goes under dicomweb.tls)",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/'}\n    dimse_timeout: 5s\n",
            5,
            "destinations.web: dimse_timeout: only for DIMSE destinations",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', max_instances_per_request: 0}\n",
            5,
            "destinations.web.dicomweb.max_instances_per_request: 0 is too small (must be at "
            "least 1)",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', timeout: soon}\n",
            5,
            "destinations.web.dicomweb.timeout: 'soon' is not a duration",
        ),
        (
            "  web:\n    dicomweb: {url: 'https://x/', token: abc}\n",
            5,
            "destinations.web.dicomweb.token: unknown key; valid here: url, auth, tls, timeout, "
            "max_instances_per_request",
        ),
    ],
)
def test_config_problem(tmp_path: Path, destinations: str, line: int, message: str) -> None:
    problems = check(write(tmp_path, destinations))
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert problem.line == line, str(problem)
    assert message in problem.message, str(problem)
    assert "\n" not in str(problem) and "Traceback" not in str(problem)


def test_every_dimse_destination_setting_stays_valid(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "  pacs:\n"
        "    ae_title: PACS\n    host: 10.1.2.3\n    port: 104\n"
        "    calling_ae_title: ME\n    max_pdu_length: 64KiB\n    connect_timeout: 5s\n"
        "    acse_timeout: 5s\n    dimse_timeout: 1m\n    network_timeout: 30s\n"
        "    tls: {check_hostname: false}\n    idle_release: 2s\n",
    )
    pacs = load_config(p).destinations["pacs"]
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae_title) == (
        "PACS",
        "10.1.2.3",
        104,
        "ME",
    )
    assert pacs.tls is not None and pacs.dicomweb is None

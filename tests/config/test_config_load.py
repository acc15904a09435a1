"""Config loading: defaults, units, and one file:line problem with a fix per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.config import (
    Config,
    ConfigError,
    check,
    default_config_path,
    load_config,
    parse_duration,
    parse_size,
)
from router.rules.explain import explain_file
from router.samples import write_dataset

MINIMAL = """\
ae_title: ROUTER
storage: {path: ./var}
"""

VALID = """\
ae_title: ROUTER
listen: {host: 0.0.0.0, port: 11112}
storage: {path: ./var}
http: {host: 127.0.0.1, port: 9108}
destinations:
  pacs:
    ae_title: PACS
    host: 10.1.2.3
    port: 104
    retry: {max_attempts: 20, initial_backoff: 2s, max_backoff: 10m}
  ai: {ae_title: AI_NODE, host: 10.1.2.9, port: 11112}
rules:
  - name: ct-chest-to-ai
    match:
      SOPClassUID: CTImageStorage
      BodyPartExamined: {regex: "(?i)chest|thorax"}
    forward: [ai]
  - name: everything-to-pacs
    forward: [pacs]
"""


def write(tmp_path: Path, text: str, name: str = "router.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("10M", 600.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "s", "-1", -1, "1h-30m", "2x", True, None, [1]])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("512KiB", 512 * 1024),
        ("1MiB", 1024**2),
        ("1GiB", 1024**3),
        ("1GB", 1000**3),
        ("1 kb", 1000),
        ("1.5KiB", 1536),
        ("10B", 10),
    ],
)
def test_parse_size(text: object, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "1 gigabyte", "-5", -5, "KiB", True, None])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


# ---------------------------------------------------------------- valid configs


def test_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, MINIMAL))
    assert c.ae_title == "ROUTER"
    assert (c.listen.host, c.listen.port, c.listen.max_associations) == ("0.0.0.0", 11112, 32)
    assert c.listen.max_pdu_length == 1024 * 1024
    assert (c.listen.acse_timeout, c.listen.network_timeout, c.listen.dimse_timeout) == (
        30.0,
        60.0,
        60.0,
    )
    assert c.listen.tls is None
    assert c.storage.path == tmp_path / "var"  # relative to the config file, not the cwd
    assert c.storage.min_free_bytes == 1024**3
    assert c.storage.inline_max_bytes == 256 * 1024
    assert c.storage.retention == 0.0
    assert c.storage.max_queue_instances == 1_000_000
    assert (c.http.enabled, c.http.host, c.http.port) == (True, "127.0.0.1", 9108)
    assert c.accept.calling_ae_titles == ()
    assert c.accept.calling_ae_set is None
    assert c.accept.check_called_ae is True
    assert c.accept.accept_unknown_sop_classes is True
    assert c.destinations == {}
    assert len(c.rules) == 0
    assert (c.logging.format, c.logging.level) == ("logfmt", "info")
    assert c.duplicates == "forward_each"


def test_full_config(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, VALID))
    pacs = c.destinations["pacs"]
    assert (pacs.ae_title, pacs.host, pacs.port) == ("PACS", "10.1.2.3", 104)
    assert pacs.calling_ae_title == "ROUTER"  # defaults to our ae_title
    assert pacs.max_associations == 1
    assert pacs.batch_size == 32
    r = pacs.retry
    assert (r.max_attempts, r.initial_backoff, r.max_backoff, r.multiplier, r.jitter) == (
        20,
        2.0,
        600.0,
        2.0,
        0.2,
    )
    assert (pacs.circuit_breaker.failures, pacs.circuit_breaker.probe_interval) == (5, 30.0)
    assert (pacs.connect_timeout, pacs.dimse_timeout) == (10.0, 120.0)
    assert c.rules.names == ("ct-chest-to-ai", "everything-to-pacs")
    assert c.rules.rules[0].file == str(tmp_path / "router.yaml")
    assert c.rules.rules[0].line == 13


def test_config_is_frozen(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, VALID))
    with pytest.raises(ValidationError):
        setattr(c, "ae_title", "OTHER")  # noqa: B010
    with pytest.raises(ValidationError):
        setattr(c.destinations["pacs"], "port", 1)  # noqa: B010


def test_reload_returns_a_new_object(tmp_path: Path) -> None:
    p = write(tmp_path, VALID)
    a = load_config(p)
    p.write_text(VALID.replace("port: 104", "port: 105"))
    b = load_config(p)
    assert a.destinations["pacs"].port == 104
    assert b.destinations["pacs"].port == 105


def test_calling_ae_and_options(tmp_path: Path) -> None:
    text = VALID.replace(
        "  ai: {ae_title: AI_NODE, host: 10.1.2.9, port: 11112}",
        "  ai: {ae_title: AI_NODE, host: 10.1.2.9, port: 11112, calling_ae_title: ROUTER_AI,"
        " max_associations: 4, dimse_timeout: 2m}",
    ) + (
        "accept: {calling_ae_titles: [CT_1, ' MR_1 ']}\n"
        "logging: {format: JSON, level: DEBUG}\n"
        "duplicates: drop_identical\n"
        "storage: {path: /srv/router, min_free_bytes: 5GiB, retention: 1h}\n"
    ).replace("storage: {path: /srv/router", "storage2: {path: /srv/router")
    text = text.replace("storage: {path: ./var}", "storage: {path: /srv/router, retention: 1h}")
    text = text.replace("storage2: {path: /srv/router, min_free_bytes: 5GiB, retention: 1h}\n", "")
    c = load_config(write(tmp_path, text))
    ai = c.destinations["ai"]
    assert (ai.calling_ae_title, ai.max_associations, ai.dimse_timeout) == ("ROUTER_AI", 4, 120.0)
    assert c.accept.calling_ae_set == frozenset({"CT_1", "MR_1"})
    assert (c.logging.format, c.logging.level) == ("json", "debug")
    assert c.duplicates == "drop_identical"
    assert c.storage.path == Path("/srv/router")
    assert c.storage.retention == 3600.0


def test_tls_files_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    for n in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / "tls" / n).write_text("x")
    text = MINIMAL + (
        "listen:\n  port: 2762\n  tls: {cert: tls/c.crt, key: tls/c.key, ca: tls/ca.crt,"
        " require_client_cert: true}\n"
    )
    c = load_config(write(tmp_path, text))
    assert c.listen.tls is not None
    assert c.listen.tls.cert == tmp_path / "tls" / "c.crt"
    assert c.listen.tls.require_client_cert


def test_rules_glob_sorted_and_inline_includes(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "20-pacs.yaml").write_text("- {name: pacs, forward: [pacs]}\n")
    (rules / "10-ai.yaml").write_text("rules:\n  - {name: ai, forward: [ai], stop: false}\n")
    (rules / "notes.txt").write_text("not yaml rules")
    base = VALID.split("rules:")[0]
    c = load_config(write(tmp_path, base + "rules: rules/*.yaml\n"))
    assert c.rules.names == ("ai", "pacs")
    assert c.rules.rules[0].file == str(rules / "10-ai.yaml")
    c2 = load_config(
        write(tmp_path, base + "rules:\n  - rules/20-pacs.yaml\n  - {name: x, forward: [ai]}\n")
    )
    assert c2.rules.names == ("pacs", "x")


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOM_ROUTER_CONFIG", raising=False)
    assert default_config_path() == Path("router.yaml")
    monkeypatch.setenv("DICOM_ROUTER_CONFIG", "/etc/dicom-router/router.yaml")
    assert default_config_path() == Path("/etc/dicom-router/router.yaml")
    monkeypatch.setenv("DICOM_ROUTER_CONFIG", "")
    assert default_config_path() == Path("router.yaml")


# ---------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 70000}\n",
            4,
            "destinations.pacs.port: 70000 is not a port (1-65535)",
        ),
        (
            MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: http}\n",
            4,
            "destinations.pacs.port: 'http' is not a port number (1-65535)",
        ),
        (
            MINIMAL + "listen:\n  host: 0.0.0.0\n  prot: 11112\n",
            5,
            "listen.prot: unknown key (did you mean 'port'?); valid here: host, port,",
        ),
        (
            MINIMAL + "destination:\n  pacs: {}\n",
            3,
            "destination: unknown key (did you mean 'destinations'?)",
        ),
        (
            MINIMAL + "listen: {acse_timeout: 5 minutes}\n",
            3,
            "listen.acse_timeout: '5 minutes' is not a duration: write seconds (30) or e.g. "
            "250ms, 2s, 5m, 1h, 1h30m",
        ),
        (
            "ae_title: ROUTER\nstorage: {path: ./var, min_free_bytes: 1 gigabyte}\n",
            2,
            "storage.min_free_bytes: '1 gigabyte' is not a size: write bytes (1048576) or e.g. "
            "512KiB, 1MiB, 1GiB, 1GB",
        ),
        (
            MINIMAL + "destinations:\n  pacs:\n    ae_title: PACS\n    port: 104\n",
            4,
            "destinations.pacs.host: missing (required; add e.g. 'host: 10.1.2.3')",
        ),
        (
            "ae_title: ROUTER\n",
            None,
            "storage: missing (required; add e.g. 'storage: {path: /var/lib/dicom-router}')",
        ),
        (
            "ae_title: THIS_IS_WAY_TOO_LONG\nstorage: {path: ./var}\n",
            1,
            "ae_title: AE title 'THIS_IS_WAY_TOO_LONG' is 20 characters long (max 16)",
        ),
        (
            "ae_title: 12345\nstorage: {path: ./var}\n",
            1,
            'ae_title: 12345 is not an AE title: quote it, e.g. "12345"',
        ),
        (
            MINIMAL + "logging: {format: xml}\n",
            3,
            "logging.format: 'xml' is not one of 'json', 'logfmt' or 'human'",
        ),
        (
            MINIMAL + "duplicates: drop\n",
            3,
            "duplicates: 'drop' is not one of 'forward_each' or 'drop_identical'",
        ),
        (
            MINIMAL + "listen: {max_associations: 0}\n",
            3,
            "listen.max_associations: 0 is too small (must be at least 1)",
        ),
        (
            MINIMAL + "accept: {check_called_ae: perhaps}\n",
            3,
            "accept.check_called_ae: expected true or false, got 'perhaps'",
        ),
        (
            MINIMAL + "accept: {calling_ae_titles: CT_1}\n",
            3,
            "accept.calling_ae_titles: expected a list, got 'CT_1'",
        ),
        (
            MINIMAL + "accept:\n  calling_ae_titles:\n    - CT_1\n    - 'BAD\\AE'\n",
            6,
            "accept.calling_ae_titles[1]: AE title 'BAD\\\\AE' has a character DICOM forbids",
        ),
        (
            MINIMAL + "listen: 11112\n",
            3,
            "listen: expected a mapping (indented 'key: value' lines), got 11112",
        ),
        (
            MINIMAL
            + "destinations:\n  pacs:\n    ae_title: PACS\n    host: h\n    port: 104\n"
            + "    retry: {initial_backoff: 1m, max_backoff: 30s}\n",
            8,
            "destinations.pacs.retry: max_backoff (30s) is below initial_backoff (60s): "
            "raise max_backoff",
        ),
        (
            MINIMAL + "destinations:\n  'pacs one': {ae_title: PACS, host: h, port: 104}\n",
            4,
            "destinations.pacs one: 'pacs one' is not a destination name",
        ),
        (
            MINIMAL + "listen: {tls: {cert: missing.crt, key: missing.key}}\n",
            3,
            "listen.tls.cert: file not found: ",
        ),
        (
            MINIMAL + "listen: {port: 9108}\n",
            None,
            "http.port is the same as listen.port: pick another port",
        ),
        (
            MINIMAL + "http:\n  port: 9108\n  port: 9109\n",
            5,
            "duplicate key 'port' (first on line 4): remove one",
        ),
        (
            MINIMAL + "listen:\n  port: 11112\n   host: x\n",
            5,
            "YAML syntax error: mapping values are not allowed here: check the indentation",
        ),
        ("", None, "empty config: start from router.example.yaml"),
        ("- a\n- b\n", 1, "expected a mapping of settings (key: value)"),
    ],
)
def test_config_problem(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    p = write(tmp_path, text)
    problems = check(p)
    assert problems, "expected a problem"
    first = problems[0]
    assert first.file == str(p), [str(x) for x in problems]
    assert first.line == line, [str(x) for x in problems]
    assert message in first.message, [str(x) for x in problems]
    assert "Traceback" not in str(first)


def test_problem_line_format(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + "destinations:\n  pacs: {ae_title: PACS, host: h, port: 70000}\n")
    (problem,) = check(p)
    assert str(problem) == f"{p}:4: destinations.pacs.port: 70000 is not a port (1-65535)"


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    text = (
        "ae_title: ROUTER\n"
        "listen: {prot: 1}\n"
        "storage: {path: ./var}\n"
        "destinations:\n"
        "  pacs: {ae_title: PACS, host: h, port: 0}\n"
        "rules:\n"
        "  - {name: a, forward: [nowhere]}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert [p.line for p in e.value.problems] == [2, 5, 7]
    assert str(e.value).count("\n") == 2


def test_missing_file(tmp_path: Path) -> None:
    (p,) = check(tmp_path / "nope.yaml")
    assert (p.line, p.message) == (None, "file not found")


def test_validation_is_usable_without_a_file() -> None:
    c = Config.model_validate({"ae_title": "R", "storage": {"path": "/x"}})
    assert c.listen.port == 11112


# ---------------------------------------------------------------- explain


def test_explain_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    dcm = write_dataset(tmp_path / "ct.dcm", size=2000, BodyPartExamined="THORAX")
    out = explain_file(cfg, dcm, calling_ae="CT_1")
    assert out["error"] is None
    assert out["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)"
    assert out["calling_ae"] == "CT_1"
    assert out["called_ae"] == "ROUTER"
    assert out["destinations"] == ["ai", "pacs"]
    assert out["unrouted"] is False
    first = out["matched"][0]
    assert first["rule"] == "ct-chest-to-ai"
    assert first["line"] == 13
    assert first["forward"] == ["ai"]
    assert "BodyPartExamined 'THORAX' matched regex '(?i)chest|thorax'" in first["reasons"]


def test_explain_unreadable_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    out = explain_file(cfg, tmp_path / "missing.dcm")
    assert out["error"] is not None
    assert out["error"].startswith("cannot read DICOM file")
    assert out["destinations"] == []

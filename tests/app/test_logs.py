import json
import logging

import pytest

from router import logs


@pytest.mark.parametrize("fmt", ["json", "logfmt", "human"])
def test_one_event_per_line_with_fields(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(fmt, "INFO")
    log = logging.getLogger("router.test")
    logs.event(log, logging.INFO, "stored", instance="0001", note="two words\nnewline")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "stored" in lines[0] and "0001" in lines[0]
    if fmt == "json":
        rec = json.loads(lines[0])
        assert rec["event"] == "stored"
        assert rec["instance"] == "0001"
        assert rec["note"] == "two words\nnewline"
        assert rec["level"] == "info"
    if fmt == "logfmt":
        assert 'note="two words\\nnewline"' in lines[0]


def test_disabled_level_is_not_formatted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("json", "WARNING")
    logs.event(logging.getLogger("router.test"), logging.INFO, "quiet")
    assert capsys.readouterr().err == ""

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


FIELDS = {"assoc": "a1", "instance": 7, "note": 'say "hi" = x\\y', "empty": "", "node": "n2"}


@pytest.mark.parametrize("fmt", ["json", "logfmt", "human"])
@pytest.mark.parametrize("node", [None, "node-a"])
def test_direct_line_is_what_the_logging_module_writes(
    fmt: str, node: str | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``event`` writes its line without a LogRecord when only setup's handler would see
    it; the text must be exactly what the handler's format of the record gives."""
    logs.setup(fmt, "INFO", node)
    log = logging.getLogger("router.test.direct")

    def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("the direct path made a LogRecord")

    with monkeypatch.context() as m:
        m.setattr(log, "makeRecord", no_record)
        logs.event(log, logging.WARNING, "stored", **FIELDS)
    direct = capsys.readouterr().err.splitlines()
    handler = logging.getLogger("router").handlers[0]
    record = log.makeRecord(
        log.name, logging.WARNING, __file__, 1, "stored", (), None, None, FIELDS
    )
    record.created = _stamped(fmt, direct[0], record.created)
    record.msecs = int((record.created - int(record.created)) * 1000)
    assert direct == [handler.format(record)]


def _stamped(fmt: str, line: str, created: float) -> float:
    """The time the direct line carries (to the millisecond, or second for human), so
    the record formats with the same time."""
    import calendar
    import time

    if fmt == "human":
        h, m, s = (int(x) for x in line[:8].split(":"))
        t = time.localtime(created)
        return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, h, m, s, 0, 0, -1))
    ts = json.loads(line)["ts"] if fmt == "json" else line.split(" ", 1)[0][3:]
    whole, ms = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000 + 0.0004


def test_a_capturing_handler_still_gets_records(caplog: pytest.LogCaptureFixture) -> None:
    """A second handler anywhere on the way (here pytest's capture on the router
    logger) gets the LogRecord with the fields as attributes, as before."""
    logs.setup("logfmt", "INFO")
    router = logging.getLogger("router")
    router.addHandler(caplog.handler)
    try:
        logs.event(logging.getLogger("router.test.cap"), logging.INFO, "stored", instance="0002")
    finally:
        router.removeHandler(caplog.handler)
    [rec] = [r for r in caplog.records if r.getMessage() == "stored"]
    assert rec.instance == "0002"  # type: ignore[attr-defined]
    assert rec.funcName == "test_a_capturing_handler_still_gets_records"

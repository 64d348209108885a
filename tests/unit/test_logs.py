"""Log lines: JSON for journald with whitelisted fields only, text for a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from gateway import logs
from gateway.logs import FIELDS, JsonFormatter, TextFormatter

SECRET = "123456-do-not-log"


def _record(
    msg: str = "transfer committed",
    *args: object,
    level: int = logging.INFO,
    extra: dict[str, object] | None = None,
    exc: bool = False,
) -> logging.LogRecord:
    logger = logging.getLogger("xbgw.test")
    exc_info = None
    if exc:
        try:
            raise ValueError("segment 3 failed authentication")
        except ValueError:
            exc_info = sys.exc_info()
    return logger.makeRecord(logger.name, level, __file__, 1, msg, args, exc_info, extra=extra)


def _json(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_json_line_has_the_base_fields() -> None:
    record = _record("transfer %s committed (%d bytes)", "t-1", 42, level=logging.WARNING)
    entry = _json(record)
    assert set(entry) == {"ts", "level", "logger", "msg"}
    assert entry["level"] == "warning"
    assert entry["logger"] == "xbgw.test"
    assert entry["msg"] == "transfer t-1 committed (42 bytes)"
    ts = entry["ts"]
    assert isinstance(ts, str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    record = _record()
    record.created = 1_700_000_000.0
    record.msecs = 123.9
    assert _json(record)["ts"] == "2023-11-14T22:13:20.123Z"


def test_json_carries_whitelisted_fields() -> None:
    extra: dict[str, object] = {
        "transfer_id": "t-1",
        "partner": "frankfurt",
        "outcome": "committed",
        "status": "OK",
        "reason": "none",
        "bytes": 4096,
        "rpc": "/xbgw.v1.Partner/Upload",
        "peer": "ipv4:10.0.0.2:55555",
        "key_ref": "lingang/transport/2",
        "rule": "cn-pi-1m",
        "trail": [{"rule": "cn-pi-1m", "outcome": "required-missing"}],
    }
    assert set(extra) == set(FIELDS)
    entry = _json(_record(extra=extra))
    assert {name: entry[name] for name in FIELDS} == extra
    assert entry["bytes"] == 4096  # a number stays a number


def test_json_keeps_zero_and_drops_empty_fields() -> None:
    entry = _json(_record(extra={"bytes": 0, "partner": "", "reason": None}))
    assert entry["bytes"] == 0
    assert "partner" not in entry
    assert "reason" not in entry


@pytest.mark.parametrize("name", ["pin", "key", "data_key", "payload", "password", "token"])
def test_json_drops_fields_outside_the_whitelist(name: str) -> None:
    line = JsonFormatter().format(_record(extra={name: SECRET, "transfer_id": "t-1"}))
    entry = json.loads(line)
    assert name not in entry
    assert entry["transfer_id"] == "t-1"
    assert SECRET not in line


def test_json_escapes_newlines_in_the_message() -> None:
    entry = _json(_record('line one\nline two "quoted"'))
    assert entry["msg"] == 'line one\nline two "quoted"'


def test_json_summarises_the_exception_without_a_traceback() -> None:
    line = JsonFormatter().format(_record("upload failed", exc=True))
    entry = json.loads(line)
    assert entry["error"] == "ValueError: segment 3 failed authentication"
    assert "Traceback" not in line
    assert "\n" not in line


def test_json_without_an_exception_has_no_error_field() -> None:
    assert "error" not in _json(_record())


def test_json_non_serialisable_values_become_text() -> None:
    entry = _json(_record(extra={"reason": ValueError("bad")}))
    assert entry["reason"] == "bad"


def test_text_shows_level_message_and_fields() -> None:
    line = TextFormatter().format(
        _record(
            "transfer committed",
            level=logging.ERROR,
            extra={"transfer_id": "t-1", "bytes": 0, "partner": "", "pin": SECRET},
        )
    )
    assert line == "error   transfer committed  transfer_id=t-1 bytes=0"


def test_text_without_fields_is_just_the_message() -> None:
    assert TextFormatter().format(_record("ready")) == "info    ready"


def test_text_fields_follow_the_whitelist_order() -> None:
    line = TextFormatter().format(
        _record("x", extra={"peer": "p", "outcome": "o", "transfer_id": "t"})
    )
    assert line == "info    x  transfer_id=t outcome=o peer=p"


# --- setup() ----------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize(
    ("fmt", "tty", "formatter"),
    [
        ("json", True, JsonFormatter),
        ("text", False, TextFormatter),
        ("auto", False, JsonFormatter),  # journald, a file, a pipe
        ("auto", True, TextFormatter),  # a person at a terminal
    ],
)
def test_setup_picks_the_formatter(
    root_logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    tty: bool,
    formatter: type[logging.Formatter],
) -> None:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup("warning", fmt)
    assert len(root_logger.handlers) == 1
    assert isinstance(root_logger.handlers[0].formatter, formatter)
    assert root_logger.level == logging.WARNING
    logging.getLogger("xbgw.test").info("dropped below the level")
    logging.getLogger("xbgw.test").warning("kept", extra={"transfer_id": "t-1", "pin": SECRET})
    out = stream.getvalue()
    assert out.count("\n") == 1
    assert "kept" in out
    assert "t-1" in out
    assert SECRET not in out


def test_an_exception_nobody_caught_in_a_thread_is_one_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging
    import sys
    import threading

    from gateway import logs

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.setup("info", "json")

    def boom() -> None:
        raise RuntimeError("wedged")

    thread = threading.Thread(target=boom, name="worker-7")
    thread.start()
    thread.join()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["msg"] == "uncaught exception in thread worker-7"
    assert entry["error"] == "RuntimeError: wedged"

"""Daemon.reload never blocks the signal path and never takes the daemon down (issue 12).

The reading half of a reload (config, TLS key) runs in a worker thread while the main thread
watches for a stop; these tests replace that half with one that blocks or fails, on a
``Daemon`` built without starting anything. The whole path through real daemons is
tests/system/test_bad_config.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import daemon as daemon_module
from gateway.daemon import Daemon
from gateway.errors import ConfigError

DEADLINE = 5.0


class Blocked:
    """A reading half that blocks until released (a hung mount, say)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self) -> tuple[object, bytes]:
        self.entered.set()
        self.release.wait(DEADLINE * 4)
        raise ConfigError("released")


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Daemon:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made = Daemon.__new__(Daemon)  # nothing started: only what reload's reading half uses
    made.config_path = Path("/etc/xbgw/gateway.yaml")
    made._reload_reader = None
    made._stop_requested = False
    return made


@pytest.fixture
def blocked(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[Blocked]:
    reader = Blocked()
    monkeypatch.setattr(daemon, "_load_checked", reader)
    yield reader
    reader.release.set()
    if daemon._reload_reader is not None:
        daemon._reload_reader.join(DEADLINE)


def test_a_stop_abandons_a_reload_that_is_blocked(
    daemon: Daemon, blocked: Blocked, caplog: pytest.LogCaptureFixture
) -> None:
    def stop_soon() -> None:
        blocked.entered.wait(DEADLINE)
        daemon._stop_requested = True  # what the SIGTERM handler does

    threading.Thread(target=stop_soon, daemon=True).start()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="xbgw.daemon"):
        daemon.reload()  # returns: abandoned, neither applied nor refused
    took = time.monotonic() - started
    assert took < 1.0 + daemon_module.RELOAD_POLL_SECONDS, took
    assert [r.getMessage() for r in caplog.records][-1] == "reload abandoned: stopping"
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_a_reload_that_cannot_read_in_time_is_refused(
    daemon: Daemon,
    blocked: Blocked,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(daemon_module, "RELOAD_READ_SECONDS", 0.3)
    with caplog.at_level(logging.ERROR, logger="xbgw.daemon"):
        daemon.reload()
    (record,) = caplog.records
    assert record.getMessage() == (
        "reload refused, keeping the running configuration: /etc/xbgw/gateway.yaml: reading "
        "the configuration and its files took longer than 0.3s (a hung mount or HSM?)"
    )
    # The reader is still stuck: the next reload is refused at once, not piled up.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="xbgw.daemon"):
        daemon.reload()
    (record,) = caplog.records
    assert "the previous reload is still reading its files" in record.getMessage()


def test_an_unforeseen_exception_refuses_the_reload_without_its_message(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def recursion() -> tuple[object, bytes]:
        raise RecursionError("836201 maximum recursion depth exceeded")

    monkeypatch.setattr(daemon, "_load_checked", recursion)
    with caplog.at_level(logging.ERROR, logger="xbgw.daemon"):
        daemon.reload()  # must not raise: it used to kill the daemon ("uncaught exception")
    (record,) = caplog.records
    message = record.getMessage()
    assert "reload refused" in message and "unexpected RecursionError" in message, message
    assert "test_daemon_reload.py:" in message  # where it came from
    assert "836201" not in message  # a foreign message may quote a secret

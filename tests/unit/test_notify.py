"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, never an exception."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import notify as notify_module
from gateway.notify import monotonic_usec, notify, watchdog_interval


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit in sun_path (108 bytes), unlike pytest's tmp_path."""
    with tempfile.TemporaryDirectory(prefix="xbgw-n-", dir="/tmp") as name:
        yield Path(name)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify("READY=1") is False


def test_empty_notify_socket_is_not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


def test_path_socket_receives_the_fields(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = short_dir / "notify"
    with _receiver(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=serving as gw-b on 0.0.0.0:7443") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving as gw-b on 0.0.0.0:7443"
        assert notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"  # one datagram per call, no trailing newline


def test_abstract_socket_receives_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"xbgw-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1", "STATUS=draining transfers for up to 30s") is True
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining transfers for up to 30s"


def test_non_ascii_status_is_sent_as_utf8(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = short_dir / "notify"
    with _receiver(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("STATUS=临港 ready") is True
        assert sock.recv(4096) == "STATUS=临港 ready".encode()


def test_missing_socket_returns_false_and_warns(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = short_dir / "nobody-here"
    monkeypatch.setenv("NOTIFY_SOCKET", str(missing))
    with caplog.at_level(logging.WARNING, logger="xbgw.notify"):
        assert notify("READY=1", "STATUS=x") is False
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert str(missing) in message
    assert "READY=1" in message
    assert "STATUS=x" not in message  # only the first field is logged


def test_closed_socket_returns_false(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = short_dir / "notify"
    _receiver(str(path)).close()  # the file stays, nobody reads: ECONNREFUSED
    assert path.exists()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1") is False


def test_unbound_abstract_socket_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@xbgw-test-unbound-{uuid.uuid4().hex}")
    assert notify("READY=1") is False


def test_full_queue_times_out_instead_of_blocking(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager that never reads: the send gives up after its timeout, returning False."""
    monkeypatch.setattr(notify_module, "SEND_TIMEOUT_SECONDS", 0.1)
    path = short_dir / "notify"
    with _receiver(str(path)), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.connect(str(path))
        filler.setblocking(False)
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                filler.send(b"x")
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        started = time.monotonic()
        assert notify("WATCHDOG=1") is False
        elapsed = time.monotonic() - started
    assert 0.05 <= elapsed < 2.0


# --- MONOTONIC_USEC and the watchdog ----------------------------------------------------------


def test_monotonic_usec_is_the_monotonic_clock_in_microseconds() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    field = monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"MONOTONIC_USEC=([0-9]+)", field)
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_no_watchdog_without_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() is None


def test_watchdog_interval_is_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0


def test_watchdog_for_this_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.5


def test_watchdog_for_another_pid_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


def test_malformed_watchdog_usec_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30s")
    assert watchdog_interval() is None


@pytest.mark.parametrize("value", ["0", "-5"])
def test_watchdog_off_or_nonsense_is_no_watchdog(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", value)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() is None

"""A partner that restarts or is down for a while, against real daemons: ``xbgw send`` waits
for it with backoff within ``--wait``, resumes by itself, and says so on stderr; ``--wait 0``
fails at once; reloads of the sender leave no sockets behind.

Two real gateways (SoftHSM, mutual TLS on loopback); lingang reaches frankfurt through a
:class:`~tests.system.faults.FaultProxy`, so a stream can be held mid-upload while frankfurt
is killed. Frankfurt restarts on the same state directory and port. Nothing waits on time:
each step waits (with a deadline) on a notification, a log line or the proxy's byte count.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.pair import edit_config, provision_pair
from tests.system.faults import FaultProxy
from tests.system.harness import Gateway, Pair, wait_until

SEGMENT = 16384
DEADLINE = 60.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pair, FaultProxy]]:
    made = provision_pair(tmp_path_factory.mktemp("outage"), segment_size=SEGMENT)
    with FaultProxy(("127.0.0.1", made.port("frankfurt"))) as proxy:
        edit_config(
            made.lingang.paths.config,
            lambda d: next(p for p in d["partners"] if p["id"] == "frankfurt").update(
                endpoint=proxy.endpoint
            ),
        )
        with made.running():
            yield made, proxy


@pytest.fixture
def running(pair: tuple[Pair, FaultProxy]) -> Iterator[tuple[Pair, FaultProxy]]:
    """Both daemons up (a failed test may have left frankfurt down) and the proxy passing."""
    made, proxy = pair
    proxy.release()
    if not made.frankfurt.is_running():
        made.frankfurt.start()
    yield made, proxy
    proxy.release()


def _source(tmp_path: Path, size: int) -> tuple[Path, str]:
    source = tmp_path / f"data-{uuid.uuid4().hex[:8]}.bin"
    data = os.urandom(size)
    source.write_bytes(data)
    return source, hashlib.sha256(data).hexdigest()


def _send_args(made: Pair, source: Path, *extra: str) -> tuple[str, list[str]]:
    jti = f"dpo_outage-{uuid.uuid4().hex[:12]}"
    token = made.passport(byte_limit=1 << 26, jti=jti)
    return jti, ["send", str(source), "--to", "frankfurt", "--passport", token, *extra]


def _delivered_once(
    made: Pair, jti: str, sha256: str, done: subprocess.CompletedProcess[str]
) -> None:
    assert done.returncode == 0, done.stderr
    assert f"delivered  {jti} to frankfurt" in done.stdout
    assert f"sha256   {sha256}" in done.stdout
    listed = made.frankfurt.cli("inbox", check=True).stdout
    assert listed.count(jti) == 1


def _finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _waiting_logged(gateway: Gateway, since: int) -> bool:
    return "partner unreachable or busy; retrying in" in gateway.log_text()[since:]


def test_send_waits_for_a_partner_that_is_down_and_delivers_when_it_is_back(
    running: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    made, _proxy = running
    source, sha256 = _source(tmp_path, 300_000)
    jti, args = _send_args(made, source, "--wait", "60")
    assert made.frankfurt.stop() == 0
    mark = len(made.lingang.log_text())
    process = made.lingang.cli_background(*args)
    try:
        wait_until(lambda: _waiting_logged(made.lingang, mark), 20, "the send to start waiting")
        made.frankfurt.start()
    finally:
        done = _finish(process)
    _delivered_once(made, jti, sha256, done)
    assert "partner frankfurt is unreachable during" in done.stderr
    assert "; retrying in " in done.stderr and "s of 60s" in done.stderr


def test_a_send_right_after_the_partner_is_ready_succeeds(
    running: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    made, _proxy = running
    # A first send fails over and over while frankfurt is down, so lingang's channel is in
    # reconnect backoff when frankfurt comes back.
    source, sha256 = _source(tmp_path, 50_000)
    assert made.frankfurt.stop() == 0
    _jti, args = _send_args(made, source, "--wait", "3")
    failed = made.lingang.cli(*args)
    assert failed.returncode != 0 and "unreachable" in failed.stderr
    made.frankfurt.start()  # returns at READY=1
    jti, args = _send_args(made, source, "-q")
    _delivered_once(made, jti, sha256, made.lingang.cli(*args, timeout=DEADLINE))


def test_a_partner_restarted_mid_transfer_is_resumed_by_the_same_send(
    running: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    made, proxy = running
    source, sha256 = _source(tmp_path, 3 << 20)
    jti, args = _send_args(made, source, "--wait", "60")
    proxy.hold_after(1 << 20)
    process = made.lingang.cli_background(*args)
    try:
        proxy.wait_tripped(DEADLINE)
        made.frankfurt.kill()
        proxy.release()
        made.frankfurt.start()
    finally:
        done = _finish(process)
    _delivered_once(made, jti, sha256, done)
    assert "retrying in" in done.stderr  # it met the outage and waited it out
    assert f"resuming {jti}: partner holds" in done.stderr  # ... from the partner's point


def test_wait_zero_fails_at_once_with_a_clear_message(
    running: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    made, _proxy = running
    source, _sha256 = _source(tmp_path, 10_000)
    _jti, args = _send_args(made, source, "--wait", "0")
    assert made.frankfurt.stop() == 0
    started = time.monotonic()
    done = made.lingang.cli(*args, timeout=DEADLINE)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "partner frankfurt is unreachable during" in lines[0], done.stderr
    assert "retrying" not in done.stderr
    assert elapsed < 10, elapsed


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def test_reloads_of_the_sender_leave_no_sockets_behind(
    running: tuple[Pair, FaultProxy], tmp_path: Path
) -> None:
    made, _proxy = running
    lingang = made.lingang
    source, sha256 = _source(tmp_path, 20_000)

    def reload_and_send() -> None:
        since = len(lingang.drain())
        lingang.signal(signal.SIGHUP)
        lingang.wait_for("READY=1", DEADLINE, since=since)
        jti, args = _send_args(made, source, "-q")
        _delivered_once(made, jti, sha256, lingang.cli(*args, timeout=DEADLINE))

    reload_and_send()
    before = _sockets(lingang.pid)
    for _ in range(5):
        reload_and_send()
    # Each reload retires the partner channel; it closes when its calls end. Allow one
    # socket of slack for a connection closing at this very moment.
    wait_until(lambda: _sockets(lingang.pid) <= before + 1, 10, "retired channels to close")

"""A real daemon losing its SoftHSM token: NOT_SERVING, back to SERVING, then a restart asked.

The token is lost for real by moving frankfurt's whole SoftHSM token directory
(``directories.tokendir``) away, and brought back by moving it back. SoftHSM 2.6 then answers
``GeneralError`` (an emptied search in the open session), cannot even initialise while the
directory is missing, and never picks the token up again in the process that saw it go --
so the daemon has to start the library afresh and log in again by itself. (``chmod 000``
does not lose it: these tests run as root.)

The daemon runs with ``NOTIFY_SOCKET`` (bound here, as systemd would) and ``WATCHDOG_USEC``
of 1 s, so it checks the HSM every 0.5 s, and ``hsm.restart_after_seconds`` at its minimum,
10 s. Each helper that waits also drains the notify socket: the kernel queues only 10
datagrams, and a full queue would stall the watchdog thread itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.pair import Gateway, Pair, provision_pair
from tests.system.harness import wait_until
from tests.system.lifecycle_helpers import health_status, local_channel

RESTART_AFTER = 10  # the least hsm.restart_after_seconds the config accepts
WATCHDOG_USEC = "1000000"
DEADLINE = 20.0
QUIET_WINDOW = 3.0  # 3 x WatchdogSec: systemd would have killed the daemon twice over


def _restart_after(gateway_id: str, data: dict[str, Any]) -> None:
    if gateway_id == "frankfurt":
        data["hsm"]["restart_after_seconds"] = RESTART_AFTER


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = provision_pair(
        tmp_path_factory.mktemp("hsm-loss"),
        configure=_restart_after,
        env={"WATCHDOG_USEC": WATCHDOG_USEC},
    )
    with made.running() as running:
        yield running


def _tokens(gateway: Gateway) -> Path:
    return gateway.paths.softhsm_conf.parent / "tokens"


def _lose(gateway: Gateway) -> None:
    shutil.move(_tokens(gateway), _tokens(gateway).with_name("tokens-away"))


def _bring_back(gateway: Gateway) -> None:
    shutil.move(_tokens(gateway).with_name("tokens-away"), _tokens(gateway))


def _health(gateway: Gateway) -> str:
    with local_channel(gateway.paths) as channel:
        try:
            return health_status(channel)
        except grpc.RpcError as exc:
            return f"no answer ({exc.code()})"


def _waiting(pair: Pair, condition: Callable[[], bool]) -> Callable[[], bool]:
    """``condition``, after reading what both daemons sent (see the module docstring)."""

    def check() -> bool:
        for gateway in pair.gateways:
            gateway.drain()
        return condition()

    return check


def _pings_since(gateway: Gateway, mark: int) -> int:
    return sum(1 for m in gateway.messages[mark:] if "WATCHDOG=1" in m.split("\n"))


def _send_and_fetch(pair: Pair, tmp: Path, name: str) -> None:
    data = os.urandom(300_001)
    source = tmp / f"{name}.bin"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    token = pair.passport(byte_limit=1_000_000)
    sent = pair.lingang.cli("send", str(source), "--to", "frankfurt", "--passport", token)
    assert sent.returncode == 0, sent.stderr + pair.frankfurt.log_text()[-3000:]
    inbox = pair.frankfurt.cli("inbox")
    assert inbox.returncode == 0, inbox.stderr
    transfer_id = next(line.split()[0] for line in inbox.stdout.splitlines() if digest[:16] in line)
    target = tmp / f"{name}.fetched"
    fetched = pair.frankfurt.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def test_a_lost_token_is_not_serving_and_serving_again_when_it_returns(
    pair: Pair, tmp_path: Path
) -> None:
    frankfurt = pair.frankfurt
    assert _health(frankfurt) == "SERVING"
    _lose(frankfurt)
    try:
        wait_until(
            _waiting(pair, lambda: _health(frankfurt) == "NOT_SERVING"),
            DEADLINE,
            "NOT_SERVING after the token went away",
        )
        log = frankfurt.log_text()
        assert "HSM does not answer; health is NOT_SERVING: the HSM is unreachable since" in log
        mark = len(frankfurt.drain())
        # A short outage: the watchdog is still fed (health says NOT_SERVING meanwhile).
        wait_until(
            _waiting(pair, lambda: _pings_since(frankfurt, mark) >= 2),
            DEADLINE,
            "WATCHDOG=1 during a short outage",
        )
    finally:
        _bring_back(frankfurt)
    wait_until(
        _waiting(pair, lambda: _health(frankfurt) == "SERVING"),
        DEADLINE,
        "SERVING after the token came back",
    )
    assert "HSM answers again; serving" in frankfurt.log_text()
    _send_and_fetch(pair, tmp_path, "after-recovery")


def test_a_token_lost_longer_than_restart_after_seconds_starves_the_watchdog(
    pair: Pair, tmp_path: Path
) -> None:
    frankfurt = pair.frankfurt
    starved = "no longer sending WATCHDOG=1, so that systemd restarts xbgw"
    lost_at = time.monotonic()
    _lose(frankfurt)
    try:
        wait_until(
            _waiting(pair, lambda: starved in frankfurt.log_text()),
            RESTART_AFTER + DEADLINE,
            "the watchdog to be starved",
        )
        assert time.monotonic() - lost_at > RESTART_AFTER
        assert frankfurt.log_text().count(starved) == 1
        mark = len(frankfurt.drain())
        with pytest.raises(TimeoutError):  # reads every datagram for the whole window
            frankfurt.wait_for("WATCHDOG=1", QUIET_WINDOW, since=mark)
        assert _pings_since(frankfurt, mark) == 0, frankfurt.messages[mark:]
        assert _health(frankfurt) == "NOT_SERVING"  # the daemon itself still answers
    finally:
        _bring_back(frankfurt)
    # Without a systemd to act on it, the daemon carries on once the token is back.
    mark = len(frankfurt.drain())
    wait_until(
        _waiting(pair, lambda: _pings_since(frankfurt, mark) >= 1),
        DEADLINE,
        "WATCHDOG=1 again after the token came back",
    )
    assert _health(frankfurt) == "SERVING"
    _send_and_fetch(pair, tmp_path, "after-starving")

"""Health follows the HSM: a token that disappears turns both listeners NOT_SERVING.

The way back (SERVING again once the token returns, the watchdog starved after
``hsm.restart_after_seconds``) is tests/system/test_hsm_loss.py's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.pair import provision_pair
from devtools.provision import DaemonProcess, Provisioned
from tests.system.harness import wait_until

DEADLINE = 20.0


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Provisioned]]:
    # A 2 s watchdog makes the daemon check its HSM every second.
    pair = provision_pair(tmp_path, env={"WATCHDOG_USEC": "2000000"})
    daemon = pair.frankfurt  # frankfurt alone: lingang is never started
    try:
        daemon.start()
        yield daemon, daemon.paths
    finally:
        pair.stop()


def _status(socket: Path) -> int:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


def _wait_for(socket: Path, status: int) -> None:
    wait_until(lambda: _status(socket) == status, DEADLINE, f"health status {status}")


def test_health_is_not_serving_while_the_token_is_gone(
    gateway: tuple[DaemonProcess, Provisioned],
) -> None:
    daemon, paths = gateway
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert _status(paths.socket) == serving
    tokens = paths.softhsm_conf.parent / "tokens"
    shutil.move(tokens, tokens.with_name("tokens-away"))
    _wait_for(paths.socket, not_serving)
    assert "HSM does not answer; health is NOT_SERVING" in daemon.log_path.read_text()

"""Real gateway daemons for system tests: the demo pair, and waiting on a condition.

The pair is :mod:`devtools.pair` -- the one way the demo, the benchmark and these tests stand
lingang (CN-SH) and frankfurt (EU-DE) up: each daemon its own process (``python -m
gateway.cli serve``) with its own SoftHSM token directory, on an ephemeral loopback port,
with a notify socket the test binds, so readiness is observed through the sd_notify protocol
rather than guessed with a sleep; both stopped by PID afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.pair import FRANKFURT, LINGANG, Gateway, Pair, provision_pair
from devtools.provision import free_port

__all__ = [
    "FRANKFURT",
    "LINGANG",
    "Gateway",
    "Pair",
    "free_port",
    "running_pair",
    "wait_until",
]

POLL_INTERVAL = 0.02


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition()`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout``.

    Waiting on a condition with a deadline, never a sleep that hopes to win a race.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


@contextmanager
def running_pair(root: Path, segment_size: int = 1 << 16) -> Iterator[Pair]:
    """Two provisioned gateways, both started; both stopped by PID afterwards."""
    with provision_pair(root, segment_size=segment_size).running() as pair:
        yield pair

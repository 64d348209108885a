"""The sd_notify protocol, spoken directly: one datagram to ``$NOTIFY_SOCKET``.

No libsystemd dependency: the protocol is a newline-separated ``KEY=value`` datagram to a
Unix socket (a path, or ``@name`` for the abstract namespace). Without the variable every
call is a no-op, so the daemon runs the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("xbgw.notify")
SEND_TIMEOUT_SECONDS = 1.0


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``); False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A manager that does not read (full queue) must not wedge SIGTERM handling.
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning(
            "sd_notify to %s failed (%s): %s",
            os.environ["NOTIFY_SOCKET"],
            exc.strerror or type(exc).__name__,
            fields[0] if fields else "",
        )
        return False
    return True


def monotonic_usec() -> str:
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None  # 0 means "watchdog off"

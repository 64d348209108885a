"""What /proc says about the benchmark's daemons, and what their metrics endpoints say.

The daemons themselves are the demo pair of :mod:`devtools.pair` -- ``python -m gateway.cli
serve`` started as the demo starts them, ready on ``READY=1`` from the notify socket, stopped
by PID (SIGTERM, then SIGKILL); ``Pair.pids()`` names them for the functions here. HSM
operation counts come from the daemon's own Prometheus endpoint (``listen.metrics``),
scraped by :func:`hsm_metrics`.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- /proc ---------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def peak_rss_kib(pid: int) -> int:
    """``VmHWM``: the highest resident set size the process has had, in KiB."""
    return _status_kib(pid, "VmHWM")


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def each_peak_rss_kib(pids: dict[str, int]) -> dict[str, int]:
    return {name: peak_rss_kib(pid) for name, pid in pids.items()}


def each_rss_kib(pids: dict[str, int]) -> dict[str, int]:
    return {name: rss_kib(pid) for name, pid in pids.items()}


def each_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


# --- daemons -------------------------------------------------------------------------------


_HSM_SAMPLE = re.compile(
    r'^xbgw_hsm_operation_seconds_(count|sum)\{operation="([a-z_]+)"\} ([0-9.eE+-]+)$'
)


def hsm_metrics(port: int, timeout: float = 10.0) -> dict[str, dict[str, float]]:
    """Cumulative HSM operation counts and seconds from a daemon's Prometheus endpoint.

    ``xbgw_hsm_operation_seconds`` is a histogram fed by ``Hsm.observer`` after every
    operation: its ``_count`` is the number of calls, its ``_sum`` the seconds spent in them.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        text = response.read().decode("utf-8")
    counts: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        match = _HSM_SAMPLE.match(line)
        if match:
            kind, operation, value = match.groups()
            (counts if kind == "count" else seconds)[operation] = float(value)
    return {"counts": counts, "seconds": seconds}


class RssSampler:
    """Samples ``VmRSS`` of some processes every ``interval`` seconds in a thread.

    ``VmHWM`` gives the peak; the samples show its shape (a plateau, or growth with the
    bytes moved).
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[float]] = {"t": [], **{name: [] for name in pids}}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._started = 0.0

    def _sample(self) -> None:
        try:
            values = each_rss_kib(self.pids)
        except (OSError, RuntimeError):
            return  # a process just exited; the caller will notice
        self.samples["t"].append(round(time.monotonic() - self._started, 3))
        for name, value in values.items():
            self.samples[name].append(value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

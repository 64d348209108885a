"""The long-link mode of ``python -m bench``: throughput and latency over a long path.

Shanghai-Frankfurt is about 200 ms round trip, and a real TCP connection has a few MiB in
flight at most (the kernel's buffer maxima): one connection then carries ``inflight / RTT``
however fast the ends are. This kernel has no netem, so the path is
:mod:`bench.delay_proxy`, a relay of our own (one-way delay per direction, cap on bytes in
flight per connection and direction). For each round trip in ``rtts_ms``:

* **gateway**: lingang's partner ``endpoint`` is rewritten to a proxy in front of
  frankfurt's partner port and the pair started afresh (mutual TLS runs end to end through
  the proxy); one bulk transfer through ``LocalGateway.Send`` after an untimed warm-up. With
  ``stripes`` > 1, once more with ``connections: N`` in lingang's partner entry -- reported as
  not available while the config loader refuses that key (no striping in this build).
* **control**: the plain-gRPC upload of :mod:`bench.control` through a second proxy, once on
  one connection and once split round robin over ``connections`` separate TCP connections
  (one channel each, kept apart by a local subchannel pool).
* **small** (at the largest round trip only): ``small_count`` sequential ``small_size``
  transfers through the gateway, after a warm-up: p50/p99 from submit to verified receipt.

MB/s are 10^6 bytes/s. Each proxy's exit line gives its CPU-s per GiB relayed, and the
connections it saw (so the N-connection control is checked to be N connections). Lingang's
config is restored afterwards; every daemon and proxy is stopped by PID.
"""

from __future__ import annotations

import concurrent.futures
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.control import ControlClient, ControlServer, TlsFiles, stand_ins
from bench.daemons import cpu_seconds, each_cpu_seconds, each_peak_rss_kib, self_cpu_seconds
from bench.delay_proxy import DelayProxy, Report
from bench.localapi import LocalClient
from devtools.pair import edit_config
from gateway.config import load_config
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from bench.runner import Setup

MIB = 1 << 20
PARTNER = "frankfurt"
NO_STRIPING = "not available (no striping in this build)"


@dataclass(frozen=True)
class LinkOptions:
    rtts_ms: tuple[float, ...]
    sizes: tuple[int, ...]  # one per round trip
    inflight: int
    stripes: int
    connections: int  # the control's N
    small_count: int
    small_size: int


def default_sizes(rtts_ms: tuple[float, ...]) -> tuple[int, ...]:
    """256 MiB up to 100 ms, 512 MiB beyond: opening a connection (TCP, TLS, HTTP/2 settings)
    takes several round trips, and at 200 ms that must stay small against the transfer, or
    the figure measures the set-up (128 MiB over six connections at 200 ms read ~55 MB/s,
    2 GiB ~117). 512 MiB on one 4 MiB connection at 200 ms takes ~27 s."""
    return tuple(256 * MIB if rtt <= 100 else 512 * MIB for rtt in rtts_ms)


def warmup_size(size: int, stripes: int, segment_size: int) -> int:
    """The untimed transfer before a timed one: one segment, or with stripes two per stripe,
    so that every lane's connection is open (and has carried data) when the clock starts."""
    return min(size, segment_size * (2 * stripes if stripes > 1 else 1))


def _say(text: str) -> None:
    print(text, flush=True)


def _percentile(values: list[float], p: float) -> float:
    """Nearest rank, as the runner's small-transfer percentiles."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _report(report: Report | None, proxy: DelayProxy) -> dict[str, Any]:
    if report is None:
        raise RuntimeError(f"the delay proxy wrote no exit line; stderr: {proxy.stderr!r}")
    return asdict(report)


# --- the gateway ----------------------------------------------------------------------------


@contextmanager
def striped_to(setup: Setup, stripes: int) -> Iterator[None]:
    """Lingang's partner entry for frankfurt with ``connections: stripes`` (its endpoint as
    it is), restored afterwards: the memory step's striped transfer."""
    path = setup.pair.lingang.paths.config
    original = path.read_text(encoding="utf-8")
    _edit_partner(setup, stripes)
    try:
        yield
    finally:
        path.write_text(original, encoding="utf-8")


def _edit_partner(setup: Setup, stripes: int, endpoint: str | None = None) -> None:
    """Lingang's partner entry for frankfurt: ``connections`` if > 1 (none otherwise), and
    ``endpoint`` if given."""

    def change(data: dict[str, Any]) -> None:
        for partner in data["partners"]:
            if partner["id"] == PARTNER:
                if endpoint is not None:
                    partner["endpoint"] = endpoint
                if stripes > 1:
                    partner["connections"] = stripes
                else:
                    partner.pop("connections", None)

    edit_config(setup.pair.lingang.paths.config, change)


def _point_lingang(setup: Setup, endpoint: str, stripes: int) -> str | None:
    """Lingang's partner entry for frankfurt: ``endpoint``, and ``connections`` if > 1.

    Returns the loader's complaint when it refuses the config (``connections`` unknown).
    """
    path = setup.pair.lingang.paths.config
    _edit_partner(setup, stripes, endpoint)
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def _gateway_run(
    setup: Setup, rtt_ms: float, size: int, opts: LinkOptions, stripes: int, small: bool
) -> dict[str, Any]:
    """Fresh daemons with lingang pointed at a proxy; one bulk send (and small ones)."""
    pair = setup.pair
    result: dict[str, Any] = {"stripes": stripes}
    proxy = DelayProxy(f"127.0.0.1:{pair.port(PARTNER)}", rtt_ms / 2, opts.inflight).start()
    report: Report | None = None
    try:
        refused = _point_lingang(setup, proxy.address, stripes)
        if refused is not None:
            if stripes > 1 and "connections" in refused:
                result["available"] = False
                result["reason"] = f"{NO_STRIPING}: {refused}"
                return result
            raise RuntimeError(f"lingang's config was refused: {refused}")
        count = 2 + (opts.small_count + 1 if small else 0)
        tokens = iter(setup.passports(count, size))
        with pair.running():
            local = setup.local()
            try:
                # Untimed: connects every lane, as the control's clients connect before its
                # clock starts (a gateway keeps its partner connections open between sends).
                setup.send_file(local, next(tokens), warmup_size(size, stripes, setup.segment_size))
                pids = {**pair.pids(), "proxy": proxy.pid}
                before = each_cpu_seconds(pids)
                client_before = self_cpu_seconds()
                seconds = setup.send_file(local, next(tokens), size)
                cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                cpu["client"] = self_cpu_seconds() - client_before
                result.update(
                    available=True,
                    size_bytes=size,
                    seconds=seconds,
                    mbps=size / seconds / 1e6,
                    cpu_s_per_gib={k: v / (size / (1 << 30)) for k, v in cpu.items()},
                    # Fresh daemons for this run: their high-water mark is this run's.
                    peak_rss_kib=each_peak_rss_kib(pair.pids()),
                    path_cap_mbps=stripes * opts.inflight / (rtt_ms / 1000) / 1e6
                    if rtt_ms
                    else None,
                )
                if small:
                    result["small"] = _small(setup, local, tokens, opts, rtt_ms)
            finally:
                local.close()
    finally:
        report = proxy.stop()
    result["proxy"] = _report(report, proxy)
    return result


def _small(
    setup: Setup, local: LocalClient, tokens: Iterator[str], opts: LinkOptions, rtt_ms: float
) -> dict[str, Any]:
    payload = bytes(opts.small_size)
    local.send_bytes(PARTNER, next(tokens), payload)  # warm-up
    ms = [
        local.send_bytes(PARTNER, next(tokens), payload).seconds * 1000
        for _ in range(opts.small_count)
    ]
    p50, p99 = _percentile(ms, 50), _percentile(ms, 99)
    return {
        "rtt_ms": rtt_ms,
        "count": opts.small_count,
        "size_bytes": opts.small_size,
        "latency_ms": {"p50": p50, "p99": p99, "max": max(ms), "mean": statistics.fmean(ms)},
        "round_trips_p50": p50 / rtt_ms if rtt_ms else None,
    }


# --- the control ----------------------------------------------------------------------------


def _striped_chunks(path: Path, size: int, chunk: int, index: int, n: int) -> Iterator[bytes]:
    """Chunks ``index``, ``index + n``, ... of the first ``size`` bytes of ``path``."""
    with path.open("rb") as src:
        offset = index * chunk
        while offset < size:
            src.seek(offset)
            yield src.read(min(chunk, size - offset))
            offset += n * chunk


def _share(size: int, chunk: int, index: int, n: int) -> int:
    return sum(min(chunk, size - o) for o in range(index * chunk, size, n * chunk))


def _control_run(
    setup: Setup,
    server: ControlServer,
    tls: TlsFiles,
    rtt_ms: float,
    size: int,
    n: int,
    opts: LinkOptions,
) -> dict[str, Any]:
    """One upload of ``size`` split round robin over ``n`` connections through a proxy."""
    proxy = DelayProxy(server.address, rtt_ms / 2, opts.inflight).start()
    report: Report | None = None
    clients: list[ControlClient] = []
    try:
        for _ in range(n):  # each connected (handshake done) before the clock starts
            clients.append(
                ControlClient(
                    proxy.address, tls, PARTNER, setup.max_message_bytes, own_connection=True
                )
            )
        chunk = setup.segment_size
        with concurrent.futures.ThreadPoolExecutor(n, "bench-link") as pool:
            started = time.perf_counter()
            uploads = [
                pool.submit(
                    client.upload_chunks,
                    _striped_chunks(setup.data, size, chunk, index, n),
                    _share(size, chunk, index, n),
                )
                for index, client in enumerate(clients)
            ]
            for upload in uploads:
                upload.result()
            seconds = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
        report = proxy.stop()
    proxy_report = _report(report, proxy)
    if proxy_report["connections"] != n:
        raise RuntimeError(
            f"the control meant {n} TCP connections but the proxy saw "
            f"{proxy_report['connections']}: its channels shared a connection"
        )
    return {
        "connections": n,
        "size_bytes": size,
        "seconds": seconds,
        "mbps": size / seconds / 1e6,
        "proxy": proxy_report,
    }


# --- the mode -------------------------------------------------------------------------------


def bench_longlink(setup: Setup, opts: LinkOptions) -> dict[str, Any]:
    """Every round trip of ``opts``; lingang's config as it was afterwards."""
    pair = setup.pair
    config = pair.lingang.paths.config
    original = config.read_text(encoding="utf-8")
    client_tls, server_tls = stand_ins(pair)
    control = ControlServer(server_tls, setup.max_message_bytes)
    small_rtt = max(opts.rtts_ms)
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        control.start()
        for rtt, size in zip(opts.rtts_ms, opts.sizes, strict=True):
            _say(
                f"    {rtt:g} ms round trip: {size / MIB:g} MiB, "
                f"{opts.inflight / MIB:g} MiB in flight per connection"
            )
            run: dict[str, Any] = {"rtt_ms": rtt, "size_bytes": size}
            run["gateway"] = _gateway_run(setup, rtt, size, opts, 1, small=rtt == small_rtt)
            _say(f"      gateway x1      {run['gateway']['mbps']:9.1f} MB/s")
            if opts.stripes > 1:
                striped = _gateway_run(setup, rtt, size, opts, opts.stripes, small=False)
                run["gateway_striped"] = striped
                text = f"{striped['mbps']:9.1f} MB/s" if striped["available"] else NO_STRIPING
                _say(f"      gateway x{opts.stripes:<2} {'':4}{text}")
            for n in sorted({1, opts.connections}):
                key = "control" if n == 1 else "control_n"
                run[key] = _control_run(setup, control, client_tls, rtt, size, n, opts)
                _say(f"      control x{n:<2}    {run[key]['mbps']:9.1f} MB/s")
            if "small" in run["gateway"]:
                small = run["gateway"]["small"]
                _say(
                    f"      small x{small['count']}: p50 {small['latency_ms']['p50']:.0f} ms, "
                    f"p99 {small['latency_ms']['p99']:.0f} ms"
                )
            runs.append(run)
    finally:
        control.stop()
        config.write_text(original, encoding="utf-8")
    small_run = next(r for r in runs if r["rtt_ms"] == small_rtt)
    return {
        "inflight_bytes": opts.inflight,
        "stripes": opts.stripes,
        "control_connections": opts.connections,
        "seconds": time.monotonic() - started,
        "runs": runs,
        "small": small_run["gateway"]["small"],
    }

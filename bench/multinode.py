"""``make bench``'s two-node step (issue 16): small transfers per second into frankfurt as ONE
node and as TWO nodes of one gateway, both on PostgreSQL behind a real HAProxy.

The rig: the demo pair (:func:`devtools.pair.provision_pair`), frankfurt's ledger moved to a
PostgreSQL server of its own (:class:`devtools.postgres.Cluster`, in a temp dir, stopped by
PID), and a second frankfurt node made from the first as ``tests/system/multinode.py`` makes
it (same identity, certificate, SoftHSM token files and shared spool; its own port, socket
and state directory; each serves ``listen.health``). Lingang reaches frankfurt only through
a real HAProxy (:mod:`devtools.haproxy`: TCP pass-through, the balance and gRPC health check
of ``deploy/haproxy/xbgw.cfg``), with ``connections`` lanes to it
(``partners[].connections``), which the balancer spreads over the nodes; one-segment
transfers take the lanes round robin (``gateway.partner_link``).

Each side starts fresh processes: HAProxy with node A alone (ONE) or with A and B (TWO),
the node(s), lingang; a warm-up of one transfer per lane opens every lane; then transfers
of ``size`` bytes, ``concurrency`` at a time, through the local ``SendSmall`` as the small
step sends them (:class:`bench.localapi.LocalClient`): ``count`` per side, in the order
ONE, TWO, TWO, ONE (half the count each run), so that a load drifting on the shared cores
weighs on both sides alike. Reported per side:
transfers/s, latency percentiles, CPU-ms per transfer of each process (lingang, node a,
node b, haproxy, postgres -- the postmaster and its backends -- and the harness), and how
many transfers each node committed (counted in its log); then the ratio TWO/ONE. Every
process is stopped by PID whatever happens.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.daemons import cpu_seconds, self_cpu_seconds
from bench.localapi import LocalClient
from bench.passports import issue_many
from devtools.haproxy import Haproxy, Node
from devtools.nodes import serve_health, two_nodes
from devtools.pair import Gateway, Pair, edit_config, provision_pair
from devtools.postgres import Cluster
from devtools.provision import free_port
from gateway.config import load_config


def _percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank, as the small step reports it."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclasses.dataclass
class Rig:
    pair: Pair
    a: Gateway
    b: Gateway
    nodes: dict[str, Node]  # by name ("a", "b"): partner and health addresses
    port: int  # the balancer's, lingang's endpoint for frankfurt

    def balancer(self, names: Sequence[str], directory: Path) -> Haproxy:
        """HAProxy (:mod:`devtools.haproxy`, the shipped balance and health check) in front
        of the nodes ``names``, on the rig's port; not started."""
        return Haproxy(directory, [self.nodes[name] for name in names], port=self.port)

    @property
    def lingang(self) -> Gateway:
        return self.pair.lingang


def provision(root: Path, database: str, connections: int) -> Rig:
    """lingang, and frankfurt as nodes A and B on ``database`` and one spool
    (:func:`devtools.nodes.two_nodes`), behind a balancer on a free port (started by
    :func:`bench_side`); nothing runs yet."""
    pair = provision_pair(root)
    shared = two_nodes(pair, root, database)
    a, b = shared.a, shared.b
    nodes = {
        node.name: node for node in serve_health([("a", a.paths.config), ("b", b.paths.config)])
    }
    balancer_port = free_port()

    def via_balancer(data: dict[str, Any]) -> None:
        for partner in data["partners"]:
            if partner["id"] == a.id:
                partner["endpoint"] = f"127.0.0.1:{balancer_port}"
                partner["connections"] = connections

    edit_config(pair.lingang.paths.config, via_balancer)
    return Rig(pair, a, b, nodes, balancer_port)


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its children now (PostgreSQL: the postmaster and its backends)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                total += cpu_seconds(int(entry.name))
    return total


def _commits(node: Gateway) -> int:
    return node.log_text().count("transfer committed")


@dataclasses.dataclass
class Run:
    """One timed run of one side: what :func:`side_result` adds up."""

    latencies: list[float]
    wall: float
    cpu: dict[str, float]
    committed: dict[str, int]  # warm-up included
    loadavg_before: float


def run_side(
    rig: Rig,
    nodes: Sequence[Gateway],
    tokens: list[str],
    size: int,
    concurrency: int,
    warmup: int,
    postgres_pid: int,
) -> Run:
    """Fresh processes (balancer over ``nodes``, the nodes, lingang); ``warmup`` untimed
    transfers, then the rest of ``tokens`` timed. Stops them all by PID."""
    load_before = os.getloadavg()[0]  # other work on the machine skews a run
    limits = load_config(rig.lingang.paths.config).limits
    payloads = [os.urandom(size) for _ in tokens]
    started_here: list[Gateway] = []
    names = "ab"[: len(nodes)]
    balancer = rig.balancer(names, rig.pair.root / f"haproxy-{len(nodes)}")
    try:
        for node in nodes:
            node.start()
            started_here.append(node)
        balancer.start(up=names)  # every node UP (its health check passed) before lingang
        rig.lingang.start()
        started_here.append(rig.lingang)
        before_commits = [_commits(node) for node in nodes]
        local = LocalClient(rig.lingang.paths.socket, limits.max_message_bytes, limits.segment_size)
        try:
            for index in range(warmup):  # one per lane: every lane open before timing
                local.send_bytes("frankfurt", tokens[index], payloads[index])

            def one(index: int) -> float:
                return local.send_bytes("frankfurt", tokens[index], payloads[index]).seconds

            assert balancer.process is not None
            pids = {"lingang": rig.lingang.pid, "haproxy": balancer.process.pid}
            pids.update({f"node {'ab'[i]}": node.pid for i, node in enumerate(nodes)})
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            postgres_before = _tree_cpu_seconds(postgres_pid)
            harness_before = self_cpu_seconds()
            pool = concurrent.futures.ThreadPoolExecutor(concurrency, "bench-multinode")
            try:
                began = time.perf_counter()
                latencies = list(pool.map(one, range(warmup, len(tokens))))
                wall = time.perf_counter() - began
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            cpu["postgres"] = _tree_cpu_seconds(postgres_pid) - postgres_before
            cpu["harness"] = self_cpu_seconds() - harness_before
        finally:
            local.close()
        committed = {
            f"node {'ab'[i]}": _commits(node) - before_commits[i] for i, node in enumerate(nodes)
        }
    finally:
        errors: list[BaseException] = []
        for node in reversed(started_here):
            try:
                node.stop()
            except BaseException as exc:
                errors.append(exc)
        balancer.stop()
        if errors:
            raise errors[0]
    return Run(latencies, wall, cpu, committed, load_before)


def side_result(nodes: int, runs: Sequence[Run]) -> dict[str, Any]:
    """The runs of one side added up: rates over the summed wall time, pooled latencies."""
    latencies = [s for run in runs for s in run.latencies]
    wall = sum(run.wall for run in runs)
    count = len(latencies)
    cpu: dict[str, float] = {}
    committed: dict[str, int] = {}
    for run in runs:
        for name, value in run.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + value
        for name, n in run.committed.items():
            committed[name] = committed.get(name, 0) + n
    ms = [s * 1000 for s in latencies]
    total_ms = sum(cpu.values()) * 1000 / count
    return {
        "nodes": nodes,
        "count": count,
        "runs": len(runs),
        "seconds": wall,
        "transfers_per_s": count / wall,
        "runs_transfers_per_s": [len(run.latencies) / run.wall for run in runs],
        "latency_ms": {
            "p50": _percentile(ms, 50),
            "p99": _percentile(ms, 99),
            "mean": statistics.fmean(ms),
        },
        "committed_by_node": committed,  # warm-ups included
        "cpu_seconds": cpu,
        "cpu_ms_per_transfer": {name: v * 1000 / count for name, v in cpu.items()},
        # Where the time goes: the cores each process kept busy (1.0 = one core; a Python
        # daemon is held near one by its GIL) and what the machine's cores would allow if
        # the transfers were CPU-bound at this CPU per transfer.
        "cores_busy": {name: v / wall for name, v in cpu.items()},
        "cpu_ms_per_transfer_total": total_ms,
        "cpu_bound_ceiling_per_s": (os.cpu_count() or 1) * 1000 / total_ms,
        "loadavg_1min_before": max(run.loadavg_before for run in runs),
    }


def bench_multinode(
    root: Path, count: int, size: int, concurrency: int, connections: int = 4
) -> dict[str, Any]:
    """Small transfers into ONE node and into TWO, ``count`` each, in the order ONE, TWO,
    TWO, ONE (half the count a run): a load that drifts during the step (2 shared cores)
    weighs on both sides alike. See the module docstring."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster()
    try:
        cluster.start()
        assert cluster.pid is not None
        rig = provision(root, cluster.database("bench"), connections)
        warmup = connections
        halves = (count - count // 2, count // 2) if count > 1 else (count, 0)
        plan = [(1, halves[0]), (2, halves[0]), (2, halves[1]), (1, halves[1])]
        plan = [(nodes, n) for nodes, n in plan if n > 0]
        tokens = issue_many(
            rig.pair.issuer,
            rig.lingang.spec,
            rig.a.spec,
            sum(warmup + n for _, n in plan),
            size,
        )
        runs: dict[int, list[Run]] = {1: [], 2: []}
        for nodes, n in plan:
            mine, tokens = tokens[: warmup + n], tokens[warmup + n :]
            which = [rig.a] if nodes == 1 else [rig.a, rig.b]
            runs[nodes].append(run_side(rig, which, mine, size, concurrency, warmup, cluster.pid))
    finally:
        cluster.stop()
    one, two = side_result(1, runs[1]), side_result(2, runs[2])
    return {
        "count": count,
        "size_bytes": size,
        "concurrency": concurrency,
        "connections": connections,
        "balancer": "haproxy: deploy/haproxy/xbgw.cfg's balance and health check",
        "order": [nodes for nodes, _ in plan],
        "one": one,
        "two": two,
        "ratio": two["transfers_per_s"] / one["transfers_per_s"],
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The step's lines for the run's output."""
    lines = []
    for side in ("one", "two"):
        r = result[side]
        per = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_transfer"].items())
        spread = ", ".join(f"{k} {v}" for k, v in r["committed_by_node"].items())
        lines.append(
            f"    {r['nodes']} node(s): {r['transfers_per_s']:.1f}/s, p50 "
            f"{r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms; committed "
            f"{spread}"
        )
        busy = ", ".join(f"{k} {v:.2f}" for k, v in r["cores_busy"].items())
        lines.append(
            f"      CPU ms per transfer: {per}; total {r['cpu_ms_per_transfer_total']:.1f} "
            f"(CPU-bound ceiling {r['cpu_bound_ceiling_per_s']:.0f}/s on {os.cpu_count()} "
            "cores)"
        )
        lines.append(
            f"      cores busy: {busy} (load average before {r['loadavg_1min_before']:.1f})"
        )
    runs = ", ".join(
        f"{n}: {'/'.join(f'{r:.1f}' for r in result[side]['runs_transfers_per_s'])}/s"
        for n, side in ((1, "one"), (2, "two"))
    )
    lines.append(f"    two / one: {result['ratio']:.2f}x (each run, node(s) {runs})")
    return lines


def run_alone(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - by hand
    """``python -m bench.multinode [COUNT]``: this step alone, in a temp dir."""
    import sys
    import tempfile

    args = list(sys.argv[1:] if argv is None else argv)
    count = int(args[0]) if args else 200
    root = Path(tempfile.mkdtemp(prefix="xbgw-multinode-"))
    try:
        result = bench_multinode(root, count, 4 << 10, 8)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_alone())

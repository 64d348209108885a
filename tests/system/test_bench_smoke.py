"""``python -m bench --smoke`` still works: every section present, every number positive.

No timing is asserted (the shared CI machines vary 2x run to run); the numbers only have to
exist and be positive. The harness runs as a child process, as ``make bench`` runs it, with
``TMPDIR`` pointed at a directory of this test so that leftovers -- files or processes
still naming it -- are visible afterwards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 240.0  # a hang guard only; the smoke run takes well under a minute


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes: pytest's tmp_path can be too long.
    path = Path(tempfile.mkdtemp(prefix="xbs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_smoke(tmp: Path, results: Path) -> subprocess.CompletedProcess[str]:
    work = tmp / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "GRPC_VERBOSITY": "ERROR"}
    log = tmp / "bench.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench", "--smoke", "--json", str(results)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            code = process.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # the harness stops its daemons on SIGTERM
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait(10)
    return subprocess.CompletedProcess(process.args, code, log.read_text(), "")


def _processes_naming(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _positive(value: Any, where: str) -> None:
    assert isinstance(value, int | float) and not isinstance(value, bool), where
    assert value > 0, f"{where} = {value}"


def test_bench_smoke_writes_every_section(short_tmp: Path) -> None:
    results = short_tmp / "results.json"
    done = _run_smoke(short_tmp, results)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "metric" in done.stdout and "met?" in done.stdout  # the table was printed

    # Everything the harness started is gone: no files in its TMPDIR, no process naming it.
    assert list((short_tmp / "work").iterdir()) == []
    assert _processes_naming(str(short_tmp / "work")) == []

    data = json.loads(results.read_text())
    machine = data["machine"]
    _positive(machine["nproc"], "machine.nproc")
    assert machine["cpu_model"]
    _positive(data["duration_seconds"], "duration_seconds")

    bulk = data["bulk"]
    assert len(bulk["pairs"]) == 1
    for pair in bulk["pairs"]:
        for side in ("gateway", "control"):
            _positive(pair[side]["seconds"], f"bulk {side} seconds")
            _positive(pair[side]["mbps"], f"bulk {side} MB/s")
        _positive(pair["ratio"], "bulk ratio")
    for key in ("gateway_mbps_median", "control_mbps_median", "ratio_median"):
        _positive(bulk[key], f"bulk.{key}")

    small = data["small"]
    assert small["count"] == 20
    _positive(small["transfers_per_s"], "small.transfers_per_s")
    for key in ("p50", "p90", "p99", "max", "mean"):
        _positive(small["latency_ms"][key], f"small.latency_ms.{key}")
    _positive(small["control"]["calls_per_s"], "small.control.calls_per_s")
    for end in ("control_server", "control_client"):  # 20 calls may fit in one clock tick
        value = small["control"]["cpu_ms_per_call"][end]
        assert isinstance(value, float) and value >= 0, end

    memory = data["memory"]
    assert memory["runs"]["large_striped"]["stripes"] == 2
    for label in ("bulk", "large", "large_striped"):
        run = memory["runs"][label]
        for name in ("lingang", "frankfurt"):
            _positive(run["peak_rss_kib"][name], f"memory {label} {name} peak")
            _positive(run["idle_rss_kib"][name], f"memory {label} {name} idle")
    for name in ("lingang", "frankfurt"):
        assert isinstance(memory["flat"][name]["within_10_percent"], bool)

    load = data["load"]
    assert (load["sends"], load["size_bytes"]) == (8, 1 << 20)
    assert load["failed"] == 0, load["first_failures"]  # queued, not refused
    for name in ("lingang", "frankfurt"):
        _positive(load["peak_rss_kib"][name], f"load {name} peak")
    leaks = data["leaks"]
    assert leaks["transfers"] == 40 and leaks["live_session_objects_end"] == 0, leaks
    assert math.isfinite(leaks["bytes_per_transfer"])

    hsm = data["hsm"]
    for op in ("ecdh", "sign", "wrap", "unwrap"):
        _positive(hsm["rates"][op]["ops_per_s"], f"hsm rate {op}")
    transfers = hsm["counts"]["transfers"]
    assert transfers[0]["segments"] == 1
    assert transfers[1]["segments"] > 1
    for transfer in transfers:
        for name in ("lingang", "frankfurt"):
            counts = transfer[name]["counts"]
            assert counts, f"no HSM operations counted on {name}"
            for op, n in counts.items():
                _positive(n, f"hsm count {name} {op}")

    link = data["longlink"]
    assert link["stripes"] == 2 and link["control_connections"] == 2
    (run,) = link["runs"]
    assert run["rtt_ms"] == 20
    assert run["gateway_striped"]["available"], run["gateway_striped"]
    # Striped over two TCP connections of its own (the proxy counts the partner probe too).
    assert run["gateway_striped"]["proxy"]["connections"] >= 2, run["gateway_striped"]
    for name in ("lingang", "frankfurt"):
        _positive(run["gateway_striped"]["peak_rss_kib"][name], f"long link striped RSS {name}")
    # Two stripes of 4 MiB each per 20 ms round trip.
    assert math.isclose(run["gateway_striped"]["path_cap_mbps"], 2 * (4 << 20) / 0.02 / 1e6)
    for key in ("gateway", "gateway_striped", "control", "control_n"):
        _positive(run[key]["mbps"], f"long link {key} MB/s")
        assert run[key]["proxy"]["relayed"] >= run["size_bytes"], run[key]["proxy"]
    # The split control really used separate TCP connections (the proxy counted them).
    assert (run["control"]["proxy"]["connections"], run["control_n"]["proxy"]["connections"]) == (
        1,
        2,
    )
    assert link["small"]["count"] == 2
    # A small transfer cannot beat the path: one round trip at least.
    assert link["small"]["latency_ms"]["p50"] >= 20
    _positive(link["small"]["round_trips_p50"], "long link small round trips")
    per_gib = data["bulk"]["cpu_s_per_gib"]
    for side, names in (
        ("gateway", ("lingang", "frankfurt", "client")),
        ("control", ("control_server", "control_client")),
    ):
        assert set(per_gib[side]) == {*names, "total"}
        assert all(math.isfinite(v) and v >= 0 for v in per_gib[side].values()), per_gib
    # CPU is read in 10 ms ticks: the control's 4 MiB can take less than one (0.0); the
    # gateway's path (two hops, crypto, hashing, spool) always takes more.
    _positive(per_gib["gateway"]["total"], "bulk gateway CPU-s/GiB")

    rows = data["targets"]
    assert {row["metric"].split(":")[0] for row in rows} >= {"bulk", "small"}
    assert all(isinstance(row["met"], bool) for row in rows if row["target"])
    assert data["rotation"]["rotations"] >= 1
    assert data["audit"]["checkpoint_ms"] > 0
    assert {row["metric"].split(":")[0] for row in rows} >= {"audit", "compliance", "rotation"}
    assert "long link 20 ms" in {row["metric"].split(":")[0] for row in rows}
    for row in rows:
        if row["metric"].startswith(("rotation:", "audit:", "leaks:")):
            # Differences of two measurements: noise can make them negative, never NaN.
            assert math.isfinite(row["value"]), row
        elif row["metric"].endswith(", failed"):
            assert row["value"] == 0, row
        elif row["unit"] == "%":  # a spread between two peaks may be exactly zero
            assert row["value"] >= 0, row
        else:
            _positive(row["value"], row["metric"])

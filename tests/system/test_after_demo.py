"""README "After the demo": the fenced block is run as it stands, after a real (small) demo.

The block is read out of README.md at test time, so the README cannot drift from what is
tested. It runs with ``sh -e`` in a scratch directory laid out like the repository root (the
project's ``.venv`` and ``devtools`` linked in, ``demo-state/`` made there by the demo itself),
without ``SOFTHSM2_CONF`` or ``XBGW_SOCKET`` in the environment, so every path the block needs
is the one it spells out. Every daemon it starts is stopped by its recorded PID afterwards,
whatever happened.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.demo import GATEWAYS, is_our_daemon, pid_file
from tests.system.harness import wait_until

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## After the demo"
STOP_DEADLINE = 30.0


def readme_block() -> str:
    """The first ```sh block under the "After the demo" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(HEADING + "\n") == 1, f"README.md has no single {HEADING!r} section"
    section = text.split(HEADING + "\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```sh\n(.*?)^```$", section, re.M | re.S)
    assert match is not None, f"no ```sh block under {HEADING!r}"
    return match.group(1)


def _env() -> dict[str, str]:
    drop = {"SOFTHSM2_CONF", "XBGW_SOCKET", "VIRTUAL_ENV", "NOTIFY_SOCKET", "PYTHONPATH"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def _gone(pid: int, config: Path) -> bool:
    return not is_our_daemon(pid, config)


def _stop_leftovers(root: Path, seen: set[int]) -> None:
    """SIGTERM (then SIGKILL) every daemon of this demo-state still running, by PID."""
    for gateway_id in GATEWAYS:
        config = root / gateway_id / "gateway.yaml"
        path = pid_file(root, gateway_id)
        pids = set(seen)
        if path.exists():
            pids.add(int(path.read_text(encoding="ascii").strip()))
        for pid in pids:
            if not is_our_daemon(pid, config):
                continue
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(functools.partial(_gone, pid, config), STOP_DEADLINE, f"{pid} to stop")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A scratch repository root with the demo run in it (1 MiB instead of 64)."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "devtools").symlink_to(ROOT / "devtools")
    demo = subprocess.run(
        [sys.executable, "-m", "devtools.demo", "--size", "1MiB"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr
    assert "demo finished" in demo.stdout
    yield tmp_path


def test_the_readme_block_spells_out_what_the_brief_asks() -> None:
    block = readme_block()
    for needed in (
        "python -m devtools.demo up",
        "SOFTHSM2_CONF=demo-state/issuer/softhsm2.conf",
        "--token dpo --pin-file demo-state/issuer/pin",
        "xbgw send ",
        "xbgw inbox ",
        "xbgw fetch ",
        "xbgw status ",
        "python -m devtools.demo down",
    ):
        assert needed in block, needed


def test_after_the_demo_walk_through_runs_as_written(workdir: Path) -> None:
    root = workdir / "demo-state"
    script = workdir / "after-the-demo.sh"
    script.write_text(readme_block(), encoding="utf-8")
    seen: set[int] = set()
    try:
        done = subprocess.run(
            ["sh", "-e", str(script)],
            cwd=workdir,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        seen = {int(pid) for pid in re.findall(r" serving, pid (\d+)", done.stdout)}
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        _stop_leftovers(root, seen)
    out = done.stdout
    assert len(seen) == 2, out
    assert "passport dpo_second written to demo-state/second.jwt" in done.stderr
    assert "delivered  dpo_second to frankfurt" in out
    assert "receipt  signed by frankfurt/signing/1 (verified)" in out
    inbox = out.split("delivered  dpo_second", 1)[1]
    assert re.search(r"^dpo_second +lingang +588895 ", inbox, re.M), inbox
    assert "fetched dpo_second: 588895 bytes to demo-state/second.out" in out
    assert "frankfurt has the same bytes" in out
    status = out.split("frankfurt has the same bytes", 1)[1]
    assert "lingang (CN-SH)" in status and "dpo_second" in status
    assert "lingang stopped" in out and "frankfurt stopped" in out
    # `down` stopped both by PID: nothing of theirs runs, no PID file is left.
    for gateway_id in GATEWAYS:
        assert not pid_file(root, gateway_id).exists()
        config = root / gateway_id / "gateway.yaml"
        assert not any(is_our_daemon(pid, config) for pid in seen)
        assert "stopped after" in (root / gateway_id / "daemon.log").read_text()


def test_up_refuses_twice_and_down_says_what_was_not_running(workdir: Path) -> None:
    root = workdir / "demo-state"
    demo = [sys.executable, "-m", "devtools.demo"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*demo, *args],
            cwd=workdir,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    seen: set[int] = set()
    try:
        first = run("up")
        seen = {int(pid) for pid in re.findall(r" serving, pid (\d+)", first.stdout)}
        assert first.returncode == 0, first.stderr
        again = run("up")
        assert again.returncode == 1
        assert "demo: frankfurt already runs (pid" in again.stderr
        fresh = run("--size", "1MiB")  # `make demo` would delete the state under them
        assert fresh.returncode == 1 and "still runs from `up`" in fresh.stderr
        assert (root / "frankfurt" / "gateway.yaml").is_file()
    finally:
        try:
            stopped = run("down")
        finally:
            _stop_leftovers(root, seen)
    assert stopped.returncode == 0, stopped.stderr
    assert "lingang stopped" in stopped.stdout
    assert run("down").stdout == "lingang is not running\nfrankfurt is not running\n"

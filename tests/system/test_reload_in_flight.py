"""SIGHUP on either gateway while a transfer streams: the transfer finishes uninterrupted."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
from pathlib import Path

from tests.system.harness import Gateway, running_pair, wait_until

DEADLINE = 60.0


def _received(gateway: Gateway) -> int:
    path = gateway.paths.state_dir / "ledger.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COALESCE(MAX(received_bytes), 0) FROM inbound").fetchone()
    return int(row[0])


def _reload(gateway: Gateway) -> None:
    """SIGHUP, then wait for RELOADING=1 and the READY=1 after it."""
    seen = len(gateway.messages)
    gateway.signal(signal.SIGHUP)
    gateway.wait_for("RELOADING=1", DEADLINE, since=seen)
    reloading = next(
        i for i in range(seen, len(gateway.messages)) if "RELOADING=1" in gateway.messages[i]
    )
    gateway.wait_for("READY=1", DEADLINE, since=reloading)


def test_reload_of_both_gateways_does_not_cut_a_transfer(tmp_path: Path) -> None:
    data = os.urandom(48 << 20)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    with running_pair(tmp_path / "pair", segment_size=16 << 10) as pair:
        token = pair.passport(byte_limit=len(data))
        send = pair.lingang.cli_background(
            "send", str(source), "--to", "frankfurt", "--passport", token, "-q"
        )
        try:
            wait_until(
                lambda: _received(pair.frankfurt) > 0 or send.poll() is not None,
                DEADLINE,
                "progress on frankfurt",
            )
            assert send.poll() is None, "the transfer ended before the reloads"
            _reload(pair.lingang)
            _reload(pair.frankfurt)
            assert send.poll() is None, "the transfer ended before both reloads were done"
            out, err = send.communicate(timeout=DEADLINE * 2)
        finally:
            if send.poll() is None:
                send.kill()
                send.wait()
        assert send.returncode == 0, err
        assert "resuming" not in err
        assert hashlib.sha256(data).hexdigest() in out

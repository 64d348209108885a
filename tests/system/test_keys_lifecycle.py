"""Key lifecycle through the CLI, against real daemons and offline: rotate, status, retire,
destroy, rewrap -- transfers keep flowing and every inbox item still fetches.

One pair per module. Frankfurt's grace periods are short (transport 0 s so retire can be
tried at once; signing 1 day so "grace not over" can be seen), lingang keeps the defaults.
The scheduled form (the ExecStart lines of xbgw-keys-rotate.service) runs with a tiny
``keys.rotate_every`` so that something is due.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.pair import Pair, edit_config, provision_pair
from tests.system.harness import wait_until
from tests.system.keys_helpers import fetched, ok, send, status

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def _configure(gateway_id: str, data: dict[str, Any]) -> None:
    if gateway_id == "frankfurt":
        data["keys"] = {"grace": {"transport": 0, "signing": "1d", "storage": 0}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = provision_pair(
        tmp_path_factory.mktemp("keys"), segment_size=1 << 16, configure=_configure
    )
    with made.running():
        yield made


def test_status_shows_one_active_version_per_purpose(pair: Pair) -> None:
    keys = status(pair.frankfurt)
    assert {k: v["state"] for k, v in keys.items()} == {
        "frankfurt/signing/1": "active",
        "frankfurt/storage/1": "active",
        "frankfurt/transport/1": "active",
    }
    table = ok(pair.frankfurt, "keys", "status")
    assert table.startswith(f"keys of frankfurt, from the daemon at {pair.frankfurt.paths.socket}")
    assert "in use for new work" in table


def test_rotating_transport_keeps_transfers_flowing(pair: Pair, tmp_path: Path) -> None:
    before = send(pair, tmp_path, 200_000)
    out = ok(pair.frankfurt, "keys", "rotate", "transport")
    assert out.splitlines()[0] == (
        "rotated   frankfurt/transport/2 is active; frankfurt/transport/1 is now decrypt-only"
    )
    keys = status(pair.frankfurt)
    assert keys["frankfurt/transport/2"]["state"] == "active"
    assert keys["frankfurt/transport/1"]["state"] == "decrypt-only"
    after = send(pair, tmp_path, 300_000)
    for transfer_id, digest in (before, after):
        assert fetched(pair.frankfurt, tmp_path, transfer_id) == digest
    # The daemon logged the step as one JSON line.
    assert '"key_ref":"frankfurt/transport/2"' in pair.frankfurt.log_text()


def test_retire_refuses_a_version_in_use_and_says_why(pair: Pair) -> None:
    active = pair.frankfurt.cli("keys", "retire", "storage", "1")
    assert active.returncode == 1
    assert "frankfurt/storage/1 is the active version; rotate storage first" in active.stderr
    grace = pair.frankfurt.cli("keys", "rotate", "signing")
    assert grace.returncode == 0, grace.stderr
    waiting = pair.frankfurt.cli("keys", "retire", "signing", "1")
    assert waiting.returncode == 1
    assert "grace period (keys.grace.signing) runs" in waiting.stderr
    assert status(pair.frankfurt)["frankfurt/signing/1"]["state"] == "verify-only"


def test_storage_rotation_rewrap_retire_destroy(pair: Pair, tmp_path: Path) -> None:
    old = [send(pair, tmp_path, size) for size in (1, 70_000, 500_000)]
    ok(pair.frankfurt, "keys", "rotate", "storage")
    refused = pair.frankfurt.cli("keys", "retire", "storage", "1")
    assert refused.returncode == 1
    assert "stored data key(s) are still wrapped to it (run 'xbgw keys rewrap')" in refused.stderr
    rewrap = ok(pair.frankfurt, "keys", "rewrap")
    assert "to storage v2" in rewrap
    assert "none remains under an older storage version" in rewrap
    assert ok(pair.frankfurt, "keys", "retire", "storage", "1").startswith(
        "retired   frankfurt/storage/1"
    )
    unconfirmed = pair.frankfurt.cli("keys", "destroy", "storage", "1")
    assert unconfirmed.returncode == 2
    assert "cannot be undone: confirm with --yes" in unconfirmed.stderr
    assert ok(pair.frankfurt, "keys", "destroy", "storage", "1", "--yes").startswith(
        "destroyed frankfurt/storage/1"
    )
    assert status(pair.frankfurt)["frankfurt/storage/1"]["state"] == "destroyed"
    for transfer_id, digest in old:
        assert fetched(pair.frankfurt, tmp_path, transfer_id) == digest
    new = send(pair, tmp_path, 123_456)
    assert fetched(pair.frankfurt, tmp_path, new[0]) == new[1]


def test_offline_with_the_daemon_stopped_and_refused_while_it_runs(pair: Pair) -> None:
    config = str(pair.lingang.paths.config)
    # The daemon holds the state directory: an offline run (no socket to reach) is refused.
    hidden = pair.lingang.cli("keys", "status", "-c", config, "--socket", "/nonexistent.sock")
    assert hidden.returncode != 0
    assert "is in use by xbgw serve (lingang)" in hidden.stderr
    assert "talk to the running daemon through its socket" in hidden.stderr
    pair.lingang.stop()
    try:
        out = ok(pair.lingang, "keys", "rotate", "transport", "-c", config)
        assert "lingang/transport/2 is active" in out
        keys = status(pair.lingang, "-c", config)
        assert keys["lingang/transport/2"]["state"] == "active"
        table = ok(pair.lingang, "keys", "status", "-c", config)
        assert "offline (daemon stopped)" in table.splitlines()[0]
    finally:
        pair.lingang.start()
    # The daemon uses what was rotated while it was stopped.
    assert status(pair.lingang)["lingang/transport/2"]["state"] == "active"


def test_the_scheduled_unit_rotates_what_is_due(pair: Pair, tmp_path: Path) -> None:
    """Run the ExecStart lines of xbgw-keys-rotate.service (the command and its arguments,
    with our config): with rotate_every 1 s for transport, transport is due and rotated;
    signing and storage are not."""
    unit = (SYSTEMD / "xbgw-keys-rotate.service").read_text()
    lines = [
        line.split("=", 1)[1].split() for line in unit.splitlines() if line.startswith("ExecStart=")
    ]
    assert [line[1:3] for line in lines] == [["keys", "rotate"], ["keys", "rewrap"]]

    def due_soon(data: dict[str, Any]) -> None:
        data.setdefault("keys", {})["rotate_every"] = {"transport": 1}

    reloads = pair.frankfurt.log_text().count("configuration reloaded")
    edit_config(pair.frankfurt.paths.config, due_soon)
    pair.frankfurt.signal(signal.SIGHUP)  # the daemon decides what is due: it must reload
    wait_until(
        lambda: pair.frankfurt.log_text().count("configuration reloaded") > reloads,
        30,
        "frankfurt to reload its configuration",
    )
    wait_until(
        lambda: "transport" in json.loads(ok(pair.frankfurt, "keys", "status", "--json"))["due"],
        30,
        "transport to be due for rotation",
    )
    before = status(pair.frankfurt)
    for line in lines:
        ok(pair.frankfurt, *line[1:-1], str(pair.frankfurt.paths.config))
    after = status(pair.frankfurt)
    newest = max(int(ref.rsplit("/", 1)[1]) for ref in before if "/transport/" in ref)
    expected = f"frankfurt/transport/{newest + 1}"
    made = set(after) - set(before)
    assert made == {expected}, made
    assert after[expected]["state"] == "active"
    transfer = send(pair, tmp_path, 4096)
    assert fetched(pair.frankfurt, tmp_path, transfer[0]) == transfer[1]

"""Striping against real daemons: one transfer over 4 TCP connections through a long path.

Two real gateways (SoftHSM, mutual TLS) with lingang's partner endpoint for frankfurt at
``bench.delay_proxy`` (60 ms round trip, 4 MiB in flight per connection) and
``connections: 4``. The proxy counts the TCP connections it relayed: exactly 4 for the
transfer -- the partner's usual channel carries stripe 0 and the short calls, three more
carry stripes 1-3 -- besides the reachability probe's own, and no more, so no connection
attempt was cut short and retried on the long path. A receiver killed mid-transfer and
restarted is resumed from its durable point by the next send.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.delay_proxy import DelayProxy
from devtools.pair import Pair, edit_config, provision_pair
from tests.system.test_resume import (
    SEGMENT,
    Rig,
    assert_delivered,
    dataset,
    durable_mid_stream,
    finished,
    inbound,
    new_transfer,
    send,
    sending,
)

RTT_MS = 60
SIZE = 4 << 20
PROBE_CONNECTIONS = 1


def _point_at(pair: Pair, proxy: DelayProxy, connections: int = 4) -> None:
    def change(data: dict[str, object]) -> None:
        partners = data["partners"]
        assert isinstance(partners, list)
        for partner in partners:
            if partner["id"] == "frankfurt":
                partner["endpoint"] = proxy.address
                partner["connections"] = connections

    edit_config(pair.lingang.paths.config, change)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = provision_pair(tmp_path / "pair", segment_size=SEGMENT, metrics=True)
    yield made
    made.stop()


def _rig(pair: Pair, proxy: DelayProxy) -> Rig:
    return Rig(pair, proxy, {g.id: g.metrics_url for g in pair.gateways})  # type: ignore[arg-type]


def test_four_connections_deliver_byte_identical(pair: Pair, tmp_path: Path) -> None:
    with DelayProxy(f"127.0.0.1:{pair.port('frankfurt')}", RTT_MS / 2, 4 << 20) as proxy:
        _point_at(pair, proxy)
        with pair.running():
            rig = _rig(pair, proxy)
            source = tmp_path / "data.bin"
            digest = dataset(source, SIZE)
            transfer_id, token = new_transfer(rig, "striped")
            sent = send(rig, source, token)
            assert sent.returncode == 0, sent.stderr + rig.logs()
            assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)
        report = proxy.stop()
    assert report is not None, proxy.stderr
    # 4 for the transfer, plus the daemon's reachability probe, which has a channel (and so
    # a connection) of its own (gateway/reachability.py).
    assert report.connections == 4 + PROBE_CONNECTIONS, report


def test_receiver_restart_mid_transfer_resumes(pair: Pair, tmp_path: Path) -> None:
    size = 4 * SIZE
    with DelayProxy(f"127.0.0.1:{pair.port('frankfurt')}", RTT_MS / 2, 4 << 20) as proxy:
        _point_at(pair, proxy)
        with pair.running():
            rig = _rig(pair, proxy)
            source = tmp_path / "data.bin"
            digest = dataset(source, size)
            transfer_id, token = new_transfer(rig, "striped-restart")
            with sending(rig, source, token) as cli:
                durable_mid_stream(rig, transfer_id)
                pair.frankfurt.kill()
                code, err = finished(cli)
            assert code != 0, err
            held = inbound(pair.frankfurt, transfer_id)
            assert held is not None and held.state == "receiving", held
            assert 0 < held.received_bytes < size, held
            pair.frankfurt.start()
            second: subprocess.CompletedProcess[str] = send(rig, source, token)
            assert second.returncode == 0, second.stderr + rig.logs()
            assert f"partner holds {held.received_bytes} bytes" in second.stderr + second.stdout
            assert_delivered(rig, transfer_id, digest, size, tmp_path)


def test_more_connections_than_the_partner_takes_go_on_over_fewer(
    pair: Pair, tmp_path: Path
) -> None:
    """frankfurt takes 2 uploads of lingang's at once, lingang stripes over 4: without a wait
    the send says what to change; with one, the stripes refused as busy are dropped from the
    next attempt and the transfer completes over 2."""

    def two_at_once(data: dict[str, object]) -> None:
        limits = data.setdefault("limits", {})
        assert isinstance(limits, dict)
        limits["max_concurrent_transfers"] = 2

    edit_config(pair.frankfurt.paths.config, two_at_once)
    with DelayProxy(f"127.0.0.1:{pair.port('frankfurt')}", RTT_MS / 2, 4 << 20) as proxy:
        _point_at(pair, proxy, connections=4)
        with pair.running():
            rig = _rig(pair, proxy)
            source = tmp_path / "data.bin"
            digest = dataset(source, SIZE)
            transfer_id, token = new_transfer(rig, "striped-busy")
            refused = send(rig, source, token)
            assert refused.returncode != 0
            assert "lower partners[frankfurt].connections" in refused.stderr, refused.stderr
            assert "send with --wait" in refused.stderr

            sent = send(rig, source, token, wait=60)
            assert sent.returncode == 0, sent.stderr + rig.logs()
            assert_delivered(rig, transfer_id, digest, SIZE, tmp_path)
            assert "refused some stripes as busy; the upload goes on over 2" in (
                pair.lingang.log_text()
            ), rig.logs()

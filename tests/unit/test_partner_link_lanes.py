"""Which TCP connection ("lane") each partner call takes (``partners[].connections``).

Real gRPC on 127.0.0.1 (an ephemeral port), the real ``GrpcPartnerLink``; only the channel
credentials are gRPC's local ones instead of mutual TLS (what is checked is which connection
a call rides, not the handshake: tests/system covers that). The partner is a stand-in that
notes the client's address of each call -- one address per TCP connection -- and refuses it.

What must hold: one-segment transfers (Deliver) take the lanes round robin, so a balancer in
front of several nodes spreads them; every call of one streamed transfer (offer, upload,
finish, status) takes that transfer's own lane; with one connection nothing changes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

import gateway.partner_link
from gateway import envelope
from gateway._proto.xbgw.v1 import partner_pb2_grpc
from gateway.config import Address, GatewayConfig, Limits, PartnerConfig
from gateway.errors import PartnerError
from gateway.keys import KeyRef, Purpose
from gateway.partner_link import GrpcPartnerLink, home_lane
from gateway.signed import Signed
from gateway.transfer import SegmentIn
from tests.fakes import SoftwareHsm
from tests.loopback import FRANKFURT, LINGANG, gateway_config


class Recorder(partner_pb2_grpc.PartnerGatewayServicer):
    """Notes (call, client address) and refuses every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, call: str, context: grpc.ServicerContext) -> NoReturn:
        with self._lock:
            self.calls.append((call, context.peer()))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{call} noted")
        raise AssertionError("abort returns only by raising")

    def Deliver(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("deliver", context)

    def Offer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("offer", context)

    def Finish(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("finish", context)

    def GetTransfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("status", context)

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        for _ in request_iterator:
            pass
        self._note("upload", context)

    def GetKeySet(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("key_set", context)

    def Cancel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("cancel", context)

    def GetCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("checkpoint", context)

    def Cosign(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._note("cosign", context)


class Rig:
    def __init__(self, config: GatewayConfig, recorder: Recorder, peer_keys: SoftwareHsm) -> None:
        self.config = config
        self.recorder = recorder
        self.peer_keys = peer_keys
        self.link = GrpcPartnerLink(config, b"")

    def partner(self, connections: int) -> PartnerConfig:
        return replace(self.config.partner("frankfurt"), connections=connections)

    def header(self, transfer_id: str) -> bytes:
        context = envelope.StreamContext(transfer_id, "lingang", "frankfurt", bytes(32))
        header, _ = envelope.seal_header(
            context,
            KeyRef("frankfurt", Purpose.TRANSPORT, 1),
            self.peer_keys.public_key(Purpose.TRANSPORT, 1),
            segment_size=1024,
        )
        return header.encode()

    def connections_of(self, call: str) -> list[str]:
        return [peer for name, peer in self.recorder.calls if name == call]


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    monkeypatch.setattr(gateway.partner_link, "channel_credentials", lambda *_: local)
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    partner_pb2_grpc.add_PartnerGatewayServicer_to_server(recorder, server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    )
    server.start()
    peer_keys, issuer = SoftwareHsm(), SoftwareHsm()
    config = gateway_config(tmp_path, LINGANG, FRANKFURT, peer_keys, issuer, Limits())
    partners = tuple(replace(p, endpoint=Address("127.0.0.1", port)) for p in config.partners)
    made = Rig(replace(config, partners=partners), recorder, peer_keys)
    try:
        yield made
    finally:
        made.link.close()
        server.stop(None)


def _deliver(rig: Rig, partner: PartnerConfig, transfer_id: str) -> None:
    segment = SegmentIn(transfer_id, 0, True, os.urandom(64))
    manifest = Signed(b"{}", b"", "lingang:signing:1")
    with pytest.raises(PartnerError, match="deliver noted"):
        rig.link.deliver(partner, "passport", rig.header(transfer_id), segment, manifest)


def test_deliveries_take_the_lanes_round_robin(rig: Rig) -> None:
    partner = rig.partner(3)
    for i in range(6):
        _deliver(rig, partner, f"dpo_t-{i}")
    used = rig.connections_of("deliver")
    assert len(set(used)) == 3  # three TCP connections
    assert used[3:] == used[:3]  # in turn: 0, 1, 2, 0, 1, 2


def test_one_connection_carries_every_call(rig: Rig) -> None:
    partner = rig.partner(1)
    for i in range(3):
        _deliver(rig, partner, f"dpo_one-{i}")
    with pytest.raises(PartnerError):
        rig.link.offer(partner, "passport", rig.header("dpo_one-x"))
    assert len({peer for _, peer in rig.recorder.calls}) == 1


def test_a_streamed_transfer_keeps_to_its_own_lane(rig: Rig) -> None:
    """Offer, upload, finish and status of one transfer on one connection: the one node
    that has its data key and running hash; another transfer may take another lane."""
    partner = rig.partner(4)
    ids = [f"dpo_stream-{i}" for i in range(8)]
    manifest = Signed(b"{}", b"", "lingang:signing:1")
    for transfer_id in ids:
        with pytest.raises(PartnerError):
            rig.link.offer(partner, "passport", rig.header(transfer_id))
        segments = iter([SegmentIn(transfer_id, 0, True, os.urandom(64))])
        with pytest.raises(PartnerError):
            rig.link.upload(partner, segments)
        with pytest.raises(PartnerError):
            rig.link.finish(partner, transfer_id, manifest)
        with pytest.raises(PartnerError):
            rig.link.status(partner, transfer_id)
    calls = rig.recorder.calls
    assert [name for name, _ in calls] == ["offer", "upload", "finish", "status"] * len(ids)
    per_transfer = [{peer for _, peer in calls[i : i + 4]} for i in range(0, len(calls), 4)]
    assert all(len(peers) == 1 for peers in per_transfer)
    lanes = [home_lane(transfer_id, 4) for transfer_id in ids]
    # Transfers of one lane share its connection; of different lanes, they do not.
    by_lane: dict[int, set[str]] = {}
    for lane, peers in zip(lanes, per_transfer, strict=True):
        by_lane.setdefault(lane, set()).update(peers)
    assert all(len(peers) == 1 for peers in by_lane.values())
    assert len({next(iter(p)) for p in by_lane.values()}) == len(by_lane) > 1


def test_home_lanes_are_stable_and_spread() -> None:
    ids = [f"dpo_{os.urandom(8).hex()}" for _ in range(2000)]
    assert all(home_lane(t, 1) == 0 for t in ids[:50])
    assert [home_lane(t, 4) for t in ids[:50]] == [home_lane(t, 4) for t in ids[:50]]
    counts = [0] * 4
    for transfer_id in ids:
        counts[home_lane(transfer_id, 4)] += 1
    assert min(counts) > 2000 / 4 * 0.8, counts

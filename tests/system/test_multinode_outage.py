"""A node cut from the shared PostgreSQL ledger: NOT_SERVING, offers refused with the reason,
and serving again by itself when the database answers (issue 16).

The rig is :mod:`tests.system.multinode` (frankfurt as real nodes A and B on one ledger and
spool, lingang sending through a proxy pointed at node A), with one change: node A reaches
the database through a :class:`~tests.system.faults.FaultProxy` of its own, so the test cuts
the database off for node A alone -- a silent black hole, as a dead route is -- while the
server, and node B, carry on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from psycopg.conninfo import conninfo_to_dict

from devtools.pair import Gateway, edit_config
from gateway.config import load_config
from gateway.keys import KeyRef, Purpose
from gateway.passport import inspect
from tests.postgres import Cluster, postgres  # noqa: F401
from tests.system import rogue
from tests.system.faults import FaultProxy
from tests.system.harness import wait_until
from tests.system.lifecycle_helpers import health_status, local_channel
from tests.system.multinode import MultiNode, provision_multinode
from tests.system.rogue import HandTransfer, RogueClient, TlsIdentity

SEGMENT = 4096
DEADLINE = 20.0
REFUSED = "the node refuses new transfers until it answers again"


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Cluster,  # noqa: F811
) -> Iterator[tuple[MultiNode, FaultProxy]]:
    """The two-node rig, node A's ledger behind ``FaultProxy`` (node B's direct)."""
    url = postgres.database("outage")
    dbname = conninfo_to_dict(url)["dbname"]
    with FaultProxy(("127.0.0.1", postgres.port)) as db_proxy:
        rig = provision_multinode(
            tmp_path_factory.mktemp("outage"),
            f"postgresql://xbgw@127.0.0.1:{db_proxy.port}/{dbname}",
            segment_size=SEGMENT,
        )

        def direct(data: dict[str, Any]) -> None:
            data["state"]["database"] = url

        edit_config(rig.b.paths.config, direct)
        rig.database = url  # the test's own reads go direct
        try:
            rig.a.start()
            rig.b.start()
            rig.lingang.start()
            yield rig, db_proxy
        finally:
            try:
                rig.stop()
            finally:
                rig.proxy.close()


def _health(node: Gateway) -> str:
    with local_channel(node.paths) as channel:
        try:
            return health_status(channel)
        except grpc.RpcError as exc:
            return f"no answer ({exc.code()})"


def _client(rig: MultiNode, node: Gateway) -> RogueClient:
    partner = load_config(rig.lingang.paths.config).partner(rig.a.id)
    identity = TlsIdentity.load(*rig.lingang.paths.stand_in())
    return RogueClient(rig.endpoint(node), partner.ca_pem, identity, server_name=partner.identity)


def _send(rig: MultiNode, tmp: Path, name: str) -> None:
    """lingang sends to frankfurt (through its proxy) and the data is committed intact."""
    data = os.urandom(50_000)
    source = tmp / f"{name}.bin"
    source.write_bytes(data)
    token = rig.pair.passport(byte_limit=1_000_000)
    sent = rig.lingang.cli("send", str(source), "--to", rig.a.id, "--passport", token)
    assert sent.returncode == 0, sent.stderr + rig.logs()
    jti = str(inspect(token)[1]["jti"])
    rows = rig.query("SELECT state, plaintext_sha256 FROM inbound WHERE transfer_id = %s", (jti,))
    assert rows == [("committed", hashlib.sha256(data).digest())], rows


def test_a_node_cut_from_the_ledger_is_not_serving_refuses_offers_and_recovers(
    outage: tuple[MultiNode, FaultProxy], tmp_path: Path
) -> None:
    rig, db_proxy = outage
    a, b = rig.a, rig.b
    pid = a.pid
    assert _health(a) == "SERVING"
    # An offer made by hand needs frankfurt's transport key: read while all is well.
    partner = load_config(rig.lingang.paths.config).partner(a.id)
    with _client(rig, a) as probe:
        version, public = rogue.transport_key(probe.key_set(a.id, partner.signing_public_key))
    token = rig.pair.passport(byte_limit=1_000_000)
    jti = str(inspect(token)[1]["jti"])
    hand = HandTransfer.seal(
        token, jti, rig.lingang.id, KeyRef(a.id, Purpose.TRANSPORT, version), public, SEGMENT
    )

    db_proxy.black_hole()
    try:
        wait_until(lambda: _health(a) == "NOT_SERVING", DEADLINE, "node A NOT_SERVING")
        where = f"postgresql://xbgw@127.0.0.1:{db_proxy.port}/"
        log = a.log_text()
        assert f"the shared ledger at {where}" in log and "is unreachable (" in log, log[-3000:]
        assert log.count("health is NOT_SERVING and the node refuses new transfers") == 1
        assert _health(b) == "SERVING"  # the other node carries on: a balancer sends there
        with _client(rig, a) as client, pytest.raises(grpc.RpcError) as refused:
            client.offer(token, hand.header_bytes)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        details = refused.value.details() or ""
        assert f"the shared ledger at 127.0.0.1:{db_proxy.port}/" in details, details
        assert "is unreachable (" in details and REFUSED in details, details
        rig.route_to(b)
        _send(rig, tmp_path, "via-b")  # the gateway goes on through node B meanwhile
    finally:
        db_proxy.release()
        rig.route_to(a)

    wait_until(lambda: _health(a) == "SERVING", DEADLINE, "node A SERVING again")
    assert "answers again; serving" in a.log_text()
    _send(rig, tmp_path, "via-a")
    assert a.pid == pid  # recovered by itself: no restart
    assert a.log_text().count("answers again; serving") == 1

"""Key rotation with two nodes of one gateway (frankfurt A and B on one PostgreSQL ledger,
one spool, the same SoftHSM token files), real daemons, each rotation made through one
node's socket:

* transport rotated on A: B -- the same process, not restarted -- reports the new version
  active within a few follow periods, logs the change once, and its key-set answer lists
  it as current; lingang, learning the key set afresh from B, seals a transfer to the new
  version, and B (whose HSM session never made that key) opens it and commits it;
* storage rotated on B: A follows, a transfer received on B is stored under the new
  storage version, and A fetches it byte-identical -- A's long-lived HSM session finds the
  key B's process made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.pair import Gateway
from gateway.config import load_config
from gateway.keyring import FOLLOW_SECONDS
from tests.postgres import Cluster, postgres  # noqa: F401
from tests.system import rogue
from tests.system.harness import wait_until
from tests.system.keys_helpers import fetched, ok, send
from tests.system.multinode import MultiNode, running_multinode
from tests.system.rogue import RogueClient, TlsIdentity

SEGMENT = 1 << 16
FOLLOWED_WITHIN = 5 * FOLLOW_SECONDS  # a few beats of the follower, on a loaded machine


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Cluster,  # noqa: F811
) -> Iterator[MultiNode]:
    root = tmp_path_factory.mktemp("multinode-keys")
    with running_multinode(root, postgres.database("multikeys"), segment_size=SEGMENT) as rig:
        yield rig


def _active(node: Gateway, purpose: str) -> int:
    """The active version ``xbgw status --json`` reports: the daemon's own view (unlike
    ``xbgw keys status``, which reads the ledger again first)."""
    return int(json.loads(ok(node, "status", "--json"))["keys"][purpose]["active"])


def _key_set_current(rig: MultiNode, node: Gateway) -> int:
    """The current transport version in ``node``'s key-set answer to lingang."""
    partner = load_config(rig.lingang.paths.config).partner(rig.a.id)
    identity = TlsIdentity.load(*rig.lingang.paths.stand_in())
    with RogueClient(
        rig.endpoint(node), partner.ca_pem, identity, server_name=partner.identity
    ) as client:
        version, _public = rogue.transport_key(client.key_set(rig.a.id, partner.signing_public_key))
    return version


def test_transport_rotated_on_a_is_used_through_b_without_restart(
    rig: MultiNode, tmp_path: Path
) -> None:
    assert (_active(rig.a, "transport"), _active(rig.b, "transport")) == (1, 1)
    assert rig.b.process is not None
    pid_b = rig.b.process.pid
    out = ok(rig.a, "keys", "rotate", "transport")
    assert out.startswith("rotated   frankfurt/transport/2 is active"), out
    followed = "key states changed on another node: transport v2 active, transport v1 decrypt-only"
    # The node adopts the new view, then logs it: both are waited for.
    wait_until(
        lambda: _active(rig.b, "transport") == 2 and followed in rig.b.log_text(),
        FOLLOWED_WITHIN,
        "node B to report transport v2 active and log it" + rig.logs(),
    )
    assert rig.b.process.pid == pid_b and rig.b.is_running()
    assert rig.b.log_text().count(followed) == 1, rig.logs()
    assert _key_set_current(rig, rig.b) == 2

    # Lingang learns the key set afresh (its cache is in memory: a restart), from node B.
    rig.route_to(rig.b)
    rig.lingang.stop()
    rig.lingang.start()
    transfer_id, digest = send(rig.pair, tmp_path, 300_000)
    rows = rig.query("SELECT transport_version FROM inbound WHERE transfer_id = %s", (transfer_id,))
    assert rows == [(2,)]
    assert transfer_id in rig.b.log_text()
    assert transfer_id not in rig.a.log_text()
    assert fetched(rig.b, tmp_path, transfer_id) == digest


def test_storage_rotated_on_b_is_followed_and_fetched_on_a(rig: MultiNode, tmp_path: Path) -> None:
    rig.route_to(rig.b)
    assert rig.a.process is not None
    pid_a = rig.a.process.pid
    out = ok(rig.b, "keys", "rotate", "storage")
    assert out.startswith("rotated   frankfurt/storage/2 is active"), out
    followed = "key states changed on another node: storage v2 active"
    wait_until(
        lambda: _active(rig.a, "storage") == 2 and followed in rig.a.log_text(),
        FOLLOWED_WITHIN,
        "node A to report storage v2 active and log it" + rig.logs(),
    )
    assert rig.a.process.pid == pid_a
    transfer_id, digest = send(rig.pair, tmp_path, 200_000)
    rows = rig.query("SELECT storage_version FROM inbound WHERE transfer_id = %s", (transfer_id,))
    assert rows == [(2,)]
    assert transfer_id in rig.b.log_text()
    assert fetched(rig.a, tmp_path, transfer_id) == digest

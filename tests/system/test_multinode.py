"""Two nodes of one gateway (frankfurt) on one PostgreSQL ledger and one spool, real daemons.

The rig is :mod:`tests.system.multinode`: frankfurt run as nodes A and B (same identity,
token files, certificate and spool; each its own ports, socket and state directory), and
lingang sending to frankfurt through a real HAProxy over both nodes (``balancer=True``:
gRPC health checks on each node's ``listen.health``), with a proxy in front of it that can
hold lingang's bytes.

* the same passport offered at both nodes at the same moment, 100 rounds, each with its own
  envelope (a replay, not a resume): exactly one node accepts, the other refuses;
* the node HAProxy gave an upload killed (SIGKILL by PID) mid-upload: HAProxy's checks
  take it DOWN, and lingang resumes through HAProxy on the other node from the durable point
  -- once the dead node's lease on the transfer expires -- and the data arrives
  byte-identical, committed once;
* the audit log both nodes wrote verifies as one log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bench.passports import issue_many
from gateway.audit.checkpoint import EcdsaVerifier
from gateway.audit.verify import verify_log
from gateway.config import load_config
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger
from gateway.passport import inspect
from gateway.receiver.intake import SYNC_EVERY_SEGMENTS
from gateway.store.postgres import PostgresDatabase
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.system import rogue
from tests.system.harness import Gateway, wait_until
from tests.system.multinode import LEASE_SECONDS, MultiNode, running_multinode
from tests.system.rogue import HandTransfer, RogueClient, TlsIdentity

SEGMENT = 4096
SIZE = 2 << 20  # 512 segments
ROUNDS = 100
DEADLINE = 30.0
XBGW = [sys.executable, "-m", "gateway.cli"]
RESUMING = re.compile(r"resuming (\S+): partner holds (\d+) bytes")


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Cluster,  # noqa: F811
) -> Iterator[MultiNode]:
    root = tmp_path_factory.mktemp("multinode")
    with running_multinode(
        root, postgres.database("multinode"), segment_size=SEGMENT, balancer=True
    ) as rig:
        yield rig


@pytest.fixture
def nodes_up(rig: MultiNode) -> MultiNode:
    """Every daemon running (a test that killed one may have failed), HAProxy seeing both
    nodes UP, the proxy passing everything."""
    for gateway in (rig.a, rig.b, rig.lingang):
        if gateway.process is None or gateway.process.poll() is not None:
            gateway.start()
    rig.proxy.release()
    assert rig.balancer is not None
    for node in rig.nodes:
        rig.balancer.wait_state(rig.balanced_name(node), "UP", DEADLINE)
    return rig


# -- (a) one passport, two nodes at once ------------------------------------------------------


def _client(rig: MultiNode, node: Gateway) -> RogueClient:
    """A partner connection to ``node`` as lingang (its stand-in identity: same name, CA)."""
    partner = load_config(rig.lingang.paths.config).partner(rig.a.id)
    identity = TlsIdentity.load(*rig.lingang.paths.stand_in())
    return RogueClient(rig.endpoint(node), partner.ca_pem, identity, server_name=partner.identity)


def test_the_same_passport_at_both_nodes_at_once_is_accepted_once(nodes_up: MultiNode) -> None:
    """Each round: one passport, two envelopes (two data keys), offered to nodes A and B at
    the same moment (a barrier). Exactly one offer is accepted; the other is refused --
    ALREADY_EXISTS, or FAILED_PRECONDITION (busy, or in progress with another header) --
    and the shared ledger holds the winner's header."""
    rig = nodes_up
    partner = load_config(rig.lingang.paths.config).partner(rig.a.id)
    with _client(rig, rig.a) as probe:
        version, public = rogue.transport_key(probe.key_set(rig.a.id, partner.signing_public_key))
    ref = KeyRef(rig.a.id, Purpose.TRANSPORT, version)
    lingang, frankfurt = rig.lingang.spec, rig.a.spec

    # One child process signs them all (``xbgw passport issue`` per round would cost a
    # process start each); each has its own random jti.
    tokens = issue_many(rig.pair.issuer, lingang, frankfurt, ROUNDS, 1 << 20)
    passports = [(str(inspect(token)[1]["jti"]), token) for token in tokens]
    assert len({jti for jti, _token in passports}) == ROUNDS
    clients = {"a": _client(rig, rig.a), "b": _client(rig, rig.b)}
    barrier = threading.Barrier(2)
    outcomes: dict[str, list[str]] = {"a": [], "b": []}
    offers: dict[str, list[HandTransfer]] = {"a": [], "b": []}
    for name in clients:
        for jti, token in passports:
            offers[name].append(HandTransfer.seal(token, jti, lingang.id, ref, public, SEGMENT))

    def node(name: str) -> None:
        for round_, (_jti, token) in enumerate(passports):
            transfer = offers[name][round_]
            barrier.wait(timeout=DEADLINE)
            try:
                clients[name].offer(token, transfer.header_bytes)
            except grpc.RpcError as exc:
                outcomes[name].append(f"{exc.code().name}: {exc.details()}")
            else:
                outcomes[name].append("accepted")

    try:
        threads = [threading.Thread(target=node, args=(name,)) for name in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for client in clients.values():
            client.close()
    refused = re.compile(
        r"^(ALREADY_EXISTS: passport \S+ was already used"
        r"|FAILED_PRECONDITION: transfer \S+ is (busy on another stream; "
        r"|in progress with a different envelope header))"
    )
    winners = []
    for round_, (jti, _token) in enumerate(passports):
        results = {name: outcomes[name][round_] for name in clients}
        won = [name for name, result in results.items() if result == "accepted"]
        assert len(won) == 1, (round_, results)
        lost = "b" if won == ["a"] else "a"
        assert refused.match(results[lost]), (round_, results)
        winners.append(won[0])
        stored = rig.query(
            "SELECT offered_header_digest FROM inbound WHERE transfer_id = %s", (jti,)
        )
        digest = hashlib.sha256(offers[won[0]][round_].header_bytes).digest()
        assert stored == [(digest,)], round_
    print(f"winners over {ROUNDS} rounds: a {winners.count('a')}, b {winners.count('b')}")


# -- (b) a node killed mid-upload: the other takes the transfer over --------------------------


def _inbound(rig: MultiNode, transfer_id: str) -> tuple[str, int, int] | None:
    rows = rig.query(
        "SELECT state, next_segment, received_bytes FROM inbound WHERE transfer_id = %s",
        (transfer_id,),
    )
    return None if not rows else (str(rows[0][0]), int(rows[0][1]), int(rows[0][2]))


def _send(rig: MultiNode, source: Path, token: str, wait: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*XBGW, "send", str(source), "--to", rig.a.id, "--passport", token, "--wait", str(wait)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**rig.lingang.cli_env()},
    )


def test_a_node_killed_mid_upload_is_taken_over_by_the_other(
    nodes_up: MultiNode, tmp_path: Path
) -> None:
    """Through HAProxy: the upload goes to the node it picks (found by the lease's holder),
    which is killed with its stream open; HAProxy's health checks take it DOWN, and the
    retried send reaches the other node through HAProxy and is taken over there."""
    rig = nodes_up
    balancer = rig.balancer
    assert balancer is not None
    data = os.urandom(SIZE)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    transfer_id = f"dpo_takeover-{uuid.uuid4().hex[:12]}"
    token = rig.pair.passport(byte_limit=4 * SIZE, jti=transfer_id)

    rig.proxy.hold_after(SIZE // 4)
    first = _send(rig, source, token, wait=0)
    try:
        rig.proxy.wait_tripped(DEADLINE)

        def durable() -> bool:
            row = _inbound(rig, transfer_id)
            return row is not None and row[1] >= SYNC_EVERY_SEGMENTS

        wait_until(durable, DEADLINE, f"a durable resume point for {transfer_id}")
        holders = rig.query(
            "SELECT holder FROM transfer_leases WHERE lease LIKE %s", (f"%{transfer_id}",)
        )
        assert len(holders) == 1, holders
        victim = rig.holder(int(str(holders[0][0]).rsplit(":", 1)[1]))
        survivor = rig.b if victim is rig.a else rig.a
        victim.kill()  # SIGKILL by PID, the upload stream still open there
        _out, err = first.communicate(timeout=DEADLINE)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=10)
    assert first.returncode != 0, err
    row = _inbound(rig, transfer_id)
    assert row is not None and row[0] == "receiving", row
    held = row[2]
    assert 0 < held < SIZE and held == row[1] * SEGMENT, row
    # The dead node's lease on the transfer outlives it by up to its lifetime: the other
    # answers busy until then, and the send retries (its wait covers it).
    assert rig.query(
        "SELECT count(*) FROM transfer_leases WHERE lease LIKE %s", (f"%{transfer_id}",)
    ) == [(1,)]

    # HAProxy's checks find the dead node: its health listener is gone with it.
    balancer.wait_state(rig.balanced_name(victim), "DOWN", DEADLINE)
    assert balancer.state(rig.balanced_name(survivor)) == "UP"
    given = balancer.connections()
    rig.proxy.release()
    sent = rig.proxy.upstream_bytes
    second = _send(rig, source, token, wait=int(4 * LEASE_SECONDS))
    _out, err = second.communicate(timeout=6 * LEASE_SECONDS)
    assert second.returncode == 0, err + rig.logs()
    match = RESUMING.search(err)
    assert match is not None and int(match.group(2)) == held, err
    # Refused as busy while node A's lease lived, then taken over.
    assert "(another node of this gateway is writing it); retrying" in err, err
    on_wire = rig.proxy.upstream_bytes - sent
    assert SIZE - held <= on_wire, (on_wire, held)
    # Through HAProxy, to the survivor only.
    now = balancer.connections()
    assert now[rig.balanced_name(victim)] == given[rig.balanced_name(victim)], (given, now)
    assert now[rig.balanced_name(survivor)] > given[rig.balanced_name(survivor)], (given, now)

    # Committed once, in the shared ledger; the data byte-identical through the survivor.
    assert _inbound(rig, transfer_id) == ("committed", -(-SIZE // SEGMENT), SIZE)
    listed = survivor.cli("inbox")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()].count(transfer_id) == 1
    target = tmp_path / "fetched.bin"
    fetched = survivor.cli("fetch", transfer_id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not (rig.spool / "incoming" / f"{transfer_id}.part").exists()
    assert rig.query(
        "SELECT count(*) FROM transfer_leases WHERE lease LIKE %s", (f"%{transfer_id}",)
    ) == [(0,)]
    # One receipt at the sender: lingang's outbound row, delivered.
    path = rig.lingang.paths.state_dir / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        sent_rows = db.execute(
            "SELECT state, receipt_body IS NOT NULL FROM outbound WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchall()
    assert sent_rows == [("delivered", 1)]


# -- (c) one audit log across nodes -----------------------------------------------------------


def test_the_audit_log_both_nodes_wrote_verifies_as_one(nodes_up: MultiNode) -> None:
    rig = nodes_up
    writers = {str(row[0]) for row in rig.query("SELECT DISTINCT node FROM nodes")}
    assert len(writers) >= 2, writers  # both nodes are alive on the database
    key = load_pem_public_key(rig.a.paths.signing_public_key.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    ledger = Ledger(PostgresDatabase(rig.database, PASSWORD))
    try:
        size = ledger.audit_size()
        assert size > 0
        report = verify_log(ledger, [EcdsaVerifier(rig.a.id, key)], origin=rig.a.id)
    finally:
        ledger.close()
    assert report.ok, report.problems
    assert report.leaves == size
    # And through the program, with either node's config (keys from the shared token).
    for node in rig.nodes:
        done = node.cli("audit", "verify", "-c", str(node.paths.config))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ledger database postgresql://xbgw@" in done.stdout, done.stdout
        assert "): verified" in done.stdout and "leaves: " in done.stdout, done.stdout


def test_check_of_a_node_reaches_the_shared_ledger_and_writes_nothing(nodes_up: MultiNode) -> None:
    """``xbgw check -c`` of a node: the shared database reached and at this schema, its key
    states checked on a private copy (nothing written to the shared database)."""
    rig = nodes_up
    before = rig.query("SELECT purpose, version, state FROM key_versions ORDER BY 1, 2")
    done = rig.b.cli("check", "-c", str(rig.b.paths.config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ledger database postgresql://xbgw@127.0.0.1" in done.stdout, done.stdout
    assert "schema version" in done.stdout and "(current)" in done.stdout, done.stdout
    assert rig.query("SELECT purpose, version, state FROM key_versions ORDER BY 1, 2") == before
    assert before, "the nodes recorded no key states"

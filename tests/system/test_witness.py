"""``xbgw witness run|status|acknowledge`` on a running demo pair, and a partner that rewrites
its history caught by the other gateway.

One pair, one test (the steps build on each other): after a transfer lingang -> frankfurt,
``witness run`` on lingang stores frankfurt's checkpoint and hands back its cosignature, which
frankfurt then shows (and the reverse). Then frankfurt is stopped, its audit log cut back on
disk by its last leaves -- records, nodes, frontier, checkpoints, cosignatures: the rewrite a
careful operator would make -- and restarted; it signs a checkpoint of the shorter log. The
next ``witness run`` on lingang reports the rollback: exit status 1, an ERROR line in its
log, ``xbgw_witness_alarms_total{partner="frankfurt"}``, the ``xbgw.witness`` health service
NOT_SERVING; ``witness acknowledge frankfurt`` ends it. (That frankfurt's offers are refused
meanwhile is checked in tests/unit/test_loopback_witness.py: in the demo pair frankfurt
only receives.)
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.pair import Gateway, provision_pair
from gateway.audit.checkpoint import CosignatureVerifier, EcdsaVerifier, open_checkpoint
from gateway.ledger import Ledger
from tests.system.harness import wait_until
from tests.system.keys_helpers import ok, send
from tests.unit.test_loopback_witness import rewind_log

TIMEOUT = 60.0
LEDGER = "ledger.sqlite3"
CUT = 1  # leaves frankfurt's rewritten log loses


def witness(gateway: Gateway, *args: str, status: int = 0) -> dict[str, Any]:
    """``xbgw witness ARGS --json`` against ``gateway``, with exit status ``status``."""
    done = gateway.cli("witness", *args, "--json")
    assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def partner(report: dict[str, Any], partner_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(p for p in report["partners"] if p["partner"] == partner_id)
    return entry


def covered(gateway: Gateway) -> Callable[[], bool]:
    """Whether a signed checkpoint covers the gateway's whole log (signed within ~1 s)."""

    def check() -> bool:
        ledger = Ledger.read_only(gateway.paths.state_dir / LEDGER)
        try:
            latest = ledger.latest_checkpoint()
            return latest is not None and latest[0] >= ledger.audit_size()
        finally:
            ledger.close()

    return check


def health(gateway: Gateway, service: str) -> int:
    channel = grpc.insecure_channel(f"unix:{gateway.paths.socket}")
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
        return status
    finally:
        channel.close()


def alarms_counted(gateway: Gateway) -> float:
    with urllib.request.urlopen(gateway.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith('xbgw_witness_alarms_total{partner="frankfurt"}'):
            return float(line.split()[-1])
    return 0.0


def cut_back(gateway: Gateway, leaves: int) -> int:
    """Rewrite the stopped gateway's history: drop its last ``leaves`` leaves and all that
    vouched for them; the new size."""
    path = gateway.paths.state_dir / LEDGER
    db = sqlite3.connect(path)
    try:
        (size,) = db.execute("SELECT COUNT(*) FROM audit_records").fetchone()
    finally:
        db.close()
    rewind_log(path, size - leaves)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DELETE FROM cosignatures WHERE size > ?", (size - leaves,))
    finally:
        db.close()
    return int(size) - leaves


def test_partners_witness_each_other_and_a_rollback_is_caught(tmp_path: Path) -> None:
    pair = provision_pair(tmp_path / "pair")
    pair.enable_metrics()
    lingang, frankfurt = pair.lingang, pair.frankfurt
    with pair.running():
        send(pair, tmp_path, 3000)
        for gateway in (lingang, frankfurt):
            wait_until(covered(gateway), TIMEOUT, f"a checkpoint covering {gateway.id}'s log")

        # --- lingang witnesses frankfurt, frankfurt holds lingang's cosignature
        report = witness(lingang, "run")
        seen = partner(report, "frankfurt")
        # (the 60 s witness thread may have been first: then this round had nothing new)
        assert seen["outcome"] in ("cosigned", "unchanged"), seen
        assert seen["alarm"] is None and seen["size"] > 0
        size = seen["size"]
        held = witness(frankfurt, "status")
        assert {"witness": "lingang", "size": size} in [
            {k: c[k] for k in ("witness", "size")} for c in held["cosignatures"]
        ]
        # The cosigned checkpoint verifies with nothing but the two public keys.
        keys = {}
        for gateway in (lingang, frankfurt):
            pem = tmp_path / f"{gateway.id}-signing.pem"
            ok(gateway, "keys", "public", "-c", str(gateway.paths.config), "-o", str(pem))
            key = load_pem_public_key(pem.read_bytes())
            assert isinstance(key, ec.EllipticCurvePublicKey)
            keys[gateway.id] = key
        opened = open_checkpoint(
            held["cosigned_checkpoint"],
            [EcdsaVerifier("frankfurt", keys["frankfurt"])],
            cosigners=[CosignatureVerifier("lingang", keys["lingang"])],
            origin="frankfurt",
        )
        assert opened.checkpoint.size == size
        assert [s.name for s in opened.cosignatures] == ["lingang"]
        # ... and the other way round.
        back = partner(witness(frankfurt, "run"), "lingang")
        assert back["outcome"] in ("cosigned", "unchanged") and back["alarm"] is None
        text = ok(frankfurt, "witness", "status")
        assert "log of frankfurt witnessed by:\n  lingang " in text

        # --- frankfurt rewrites its history: its log rolls back
        frankfurt.stop()
        short = cut_back(frankfurt, CUT)
        assert short == size - CUT  # nothing was appended after lingang's round
        frankfurt.start()
        wait_until(covered(frankfurt), TIMEOUT, "frankfurt's checkpoint of its rewritten log")

        report = witness(lingang, "run", status=1)
        alarmed = partner(report, "frankfurt")
        assert alarmed["alarm"] is not None, alarmed
        reason = alarmed["alarm"]["reason"]
        assert reason == f"rollback: a checkpoint of size {short} after one of size {size}"
        assert alarmed["size"] == size  # the base stands
        assert "witness alarm: the audit log of frankfurt shows a rollback" in lingang.log_text()
        assert alarms_counted(lingang) == 1.0
        assert health(lingang, "xbgw.witness") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health(lingang, "") == health_pb2.HealthCheckResponse.SERVING
        text = ok(lingang, "witness", "status")
        assert "ALARM since " in text and reason in text
        assert "until `xbgw witness acknowledge frankfurt`" in text
        again = witness(lingang, "run", status=1)
        assert partner(again, "frankfurt")["outcome"] == "alarmed"

        # --- the operator acknowledges: the rewritten log is the new base
        done = lingang.cli("witness", "acknowledge", "frankfurt")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("alarm of frankfurt acknowledged: its offers are accepted")
        after = partner(witness(lingang, "status"), "frankfurt")
        assert after["alarm"] is None and after["size"] >= short
        assert health(lingang, "xbgw.witness") == health_pb2.HealthCheckResponse.SERVING
        assert partner(witness(lingang, "run"), "frankfurt")["alarm"] is None
        refused = lingang.cli("witness", "acknowledge", "frankfurt")
        assert refused.returncode == 1
        assert "partner frankfurt is not under a witness alarm" in refused.stderr

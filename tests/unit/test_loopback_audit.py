"""The audit trail of a transfer, in process: records on both sides, the receipt's commit
proof, and a commit that cannot exist without its record.

The loopback of ``tests.loopback`` (real Sender, Receiver, ledgers, spools, envelope,
passports, manifests, receipts; ``SoftwareHsm`` and a direct link stand in) with frankfurt's
receiver given a real :class:`Checkpointer` over its ledger and keys, as the daemon gives it:
Finish then answers with the proof that the commit is in frankfurt's log, and lingang keeps
it with the receipt as its evidence (``xbgw receipt export`` writes that evidence out).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.audit import store as audit_store
from gateway.audit.checkpoint import EcdsaVerifier, verify_note
from gateway.audit.checkpointer import Checkpointer
from gateway.audit.evidence import Evidence
from gateway.audit.merkle import ProofError, leaf_hash, root
from gateway.audit.proof import check_commit_proof
from gateway.audit.records import decode
from gateway.config import PartnerConfig
from gateway.errors import PartnerError
from gateway.keys import Purpose
from gateway.ledger import Ledger
from gateway.signed import Signed
from gateway.transfer import FinishResult, TransferState
from tests.loopback import SEGMENT, Loopback, make_loopback
from tests.loopback_rig import assert_delivered, assert_partner_error

KEYS_ACTIVATED = ["key.changed"] * 3  # each side's ring activates version 1 of every purpose
#: A payload that would be easy to spot in a record, raw, as hex or as base64.
PAYLOAD = b"PERSONAL-DATA:Zhang San,+86-21-5555-0101;" * 9


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[Loopback]:
    made = make_loopback(tmp_path)
    side = made.frankfurt
    checkpointer = Checkpointer(
        side.id, side.ledger, side.keys, lambda: side.ring.signing, interval=0.05
    )
    side.receiver.checkpointer = checkpointer
    checkpointer.start()
    try:
        yield made
    finally:
        checkpointer.stop()
        made.close()


def records(ledger: Ledger) -> list[bytes]:
    return [record for _, record in ledger.audit_records(0, ledger.audit_size())]


def kinds(ledger: Ledger) -> list[str]:
    return [str(decode(record)["kind"]) for record in records(ledger)]


def evidence_of(lb: Loopback, transfer_id: str) -> Evidence:
    row = lb.lingang.ledger.outbound(transfer_id)
    assert row is not None and row.evidence is not None
    return Evidence.from_json(row.evidence)


# -- the proof in the receipt ------------------------------------------------------------------


def test_a_delivered_transfer_keeps_a_commit_proof_that_checks(lb: Loopback) -> None:
    summary = lb.send("dpo_audit-proof", PAYLOAD)
    assert_delivered(lb, "dpo_audit-proof", PAYLOAD, summary)
    inbound = lb.frankfurt.ledger.inbound("dpo_audit-proof")
    outbound = lb.lingang.ledger.outbound("dpo_audit-proof")
    assert inbound is not None and outbound is not None
    assert inbound.audit_leaf is not None and outbound.audit_leaf is not None

    evidence = evidence_of(lb, "dpo_audit-proof")
    assert (evidence.transfer_id, evidence.sender, evidence.receiver) == (
        "dpo_audit-proof",
        "lingang",
        "frankfurt",
    )
    assert evidence.receipt == outbound.receipt == inbound.receipt
    assert evidence.manifest.kid == "lingang/signing/1"
    proof = evidence.proof
    assert proof is not None
    # The proof is of frankfurt's commit record, at the leaf its ledger noted ...
    assert proof.leaf == inbound.audit_leaf
    [(_, stored)] = lb.frankfurt.ledger.audit_records(proof.leaf, proof.leaf + 1)
    assert proof.record == stored
    # ... under a checkpoint frankfurt signed of its log as it was ...
    key = lb.frankfurt.keys.public_key(Purpose.SIGNING, 1)
    checkpoint = verify_note(
        proof.checkpoint, [EcdsaVerifier("frankfurt", key)], origin="frankfurt"
    )
    assert checkpoint.size > proof.leaf
    assert checkpoint.root_hash == root([leaf_hash(r) for r in records(lb.frankfurt.ledger)])
    # ... and it checks as the sender and the offline verifier check it.
    assert check_commit_proof(proof, evidence.receipt, "frankfurt", "dpo_audit-proof", [key]) == (
        checkpoint.size
    )
    # Under lingang's key it is nobody's checkpoint.
    with pytest.raises(ProofError, match="has no signature by a known log key"):
        check_commit_proof(
            proof,
            evidence.receipt,
            "frankfurt",
            "dpo_audit-proof",
            [lb.lingang.keys.public_key(Purpose.SIGNING, 1)],
        )


def test_without_a_checkpointer_the_receipt_comes_without_a_proof(lb: Loopback) -> None:
    lb.frankfurt.receiver.checkpointer = None
    summary = lb.send("dpo_audit-no-proof", PAYLOAD)
    assert_delivered(lb, "dpo_audit-no-proof", PAYLOAD, summary)
    assert evidence_of(lb, "dpo_audit-no-proof").proof is None


def test_consecutive_transfers_each_get_their_own_proof(lb: Loopback) -> None:
    for n in range(3):
        lb.send(f"dpo_audit-seq-{n}", os.urandom(2 * SEGMENT + n))
    key = lb.frankfurt.keys.public_key(Purpose.SIGNING, 1)
    leaves = []
    for n in range(3):
        evidence = evidence_of(lb, f"dpo_audit-seq-{n}")
        assert evidence.proof is not None
        check_commit_proof(
            evidence.proof, evidence.receipt, "frankfurt", f"dpo_audit-seq-{n}", [key]
        )
        leaves.append(evidence.proof.leaf)
    assert leaves == sorted(leaves) and len(set(leaves)) == 3


# -- the records -------------------------------------------------------------------------------


def test_the_records_on_both_sides_are_the_expected_kinds_in_order(lb: Loopback) -> None:
    summary = lb.send("dpo_audit-kinds", PAYLOAD)
    assert kinds(lb.frankfurt.ledger) == [*KEYS_ACTIVATED, "offer.accepted", "transfer.committed"]
    assert kinds(lb.lingang.ledger) == [*KEYS_ACTIVATED, "transfer.delivered"]

    committed = decode(records(lb.frankfurt.ledger)[-1])
    delivered = decode(records(lb.lingang.ledger)[-1])
    offer = decode(records(lb.frankfurt.ledger)[-2])
    assert (offer["gw"], offer["partner"], offer["transfer_id"]) == (
        "frankfurt",
        "lingang",
        "dpo_audit-kinds",
    )
    assert (committed["gw"], committed["partner"]) == ("frankfurt", "lingang")
    assert (delivered["gw"], delivered["partner"]) == ("lingang", "frankfurt")
    # The two sides' records describe the same transfer, byte for byte, as the receipt does.
    same = [
        "transfer_id",
        "passport_digest",
        "manifest_digest",
        "plaintext_sha256",
        "plaintext_size",
        "receipt_digest",
        "receipt_key",
    ]
    assert {k: committed[k] for k in same} == {k: delivered[k] for k in same}
    assert committed["plaintext_sha256"] == summary.plaintext_sha256.hex()
    assert committed["plaintext_size"] == len(PAYLOAD)
    assert committed["receipt_digest"] == summary.receipt.digest.hex()
    assert offer["passport_digest"] == committed["passport_digest"]
    # Each side's ledger row names its record's leaf.
    inbound = lb.frankfurt.ledger.inbound("dpo_audit-kinds")
    outbound = lb.lingang.ledger.outbound("dpo_audit-kinds")
    assert inbound is not None and outbound is not None
    assert inbound.audit_leaf == len(KEYS_ACTIVATED) + 1
    assert outbound.audit_leaf == len(KEYS_ACTIVATED)


def test_no_record_holds_payload_bytes(lb: Loopback) -> None:
    lb.send("dpo_audit-no-payload", PAYLOAD)
    lb.send("dpo_audit-no-payload-2", PAYLOAD[: SEGMENT + 3])
    kept = records(lb.frankfurt.ledger) + records(lb.lingang.ledger)
    assert len(kept) == 2 * len(KEYS_ACTIVATED) + 3 * 2
    needles = [b"PERSONAL-DATA", b"Zhang San", b"5555-0101"]
    needles += [n.hex().encode() for n in needles]
    needles += [base64.b64encode(PAYLOAD[i : i + 30]) for i in range(3)]
    for record in kept:
        for needle in needles:
            assert needle not in record, (needle, record)
    # And nothing but the documented members (v, gw, kind, at and the kind's own).
    for record in kept:
        document = decode(record)
        assert set(document) >= {"v", "gw", "kind", "at"}
        assert not any(isinstance(v, str) and len(v) > 64 for v in document.values())


# -- atomicity -----------------------------------------------------------------------------------


def test_a_commit_whose_record_cannot_be_written_is_not_committed(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    append = audit_store.append
    failed: list[bytes] = []

    def failing_append(db: sqlite3.Connection, record: bytes) -> int:
        if decode(record)["kind"] == "transfer.committed":
            failed.append(record)
            raise sqlite3.OperationalError("disk I/O error")
        return append(db, record)

    monkeypatch.setattr(audit_store, "append", failing_append)
    token = lb.passport("dpo_audit-atomic")
    with pytest.raises(PartnerError) as first:
        lb.resend(token, PAYLOAD)
    assert_partner_error(first.value, "UNAVAILABLE", "disk I/O error")
    assert len(failed) == 1
    # Neither the commit nor its record: the transfer is still being received ...
    inbound = lb.frankfurt.ledger.inbound("dpo_audit-atomic")
    assert inbound is not None
    assert inbound.state is TransferState.RECEIVING
    assert (inbound.receipt, inbound.audit_leaf, inbound.committed_at) == (None, None, None)
    assert "dpo_audit-atomic" not in [
        r.transfer_id for r in lb.frankfurt.ledger.committed_inbound()
    ]
    assert kinds(lb.frankfurt.ledger) == [*KEYS_ACTIVATED, "offer.accepted"]
    # ... nothing counted, and the sender still sending.
    outbound = lb.lingang.ledger.outbound("dpo_audit-atomic")
    assert outbound is not None and outbound.state is TransferState.SENDING
    assert kinds(lb.lingang.ledger) == KEYS_ACTIVATED

    monkeypatch.undo()
    summary = lb.resend(token, PAYLOAD)
    assert_delivered(lb, "dpo_audit-atomic", PAYLOAD, summary)
    assert kinds(lb.frankfurt.ledger) == [*KEYS_ACTIVATED, "offer.accepted", "transfer.committed"]
    inbound = lb.frankfurt.ledger.inbound("dpo_audit-atomic")
    assert inbound is not None and inbound.audit_leaf == len(KEYS_ACTIVATED) + 1
    assert kinds(lb.lingang.ledger) == [*KEYS_ACTIVATED, "transfer.delivered"]
    evidence = evidence_of(lb, "dpo_audit-atomic")
    assert evidence.proof is not None and evidence.proof.leaf == inbound.audit_leaf
    key = lb.frankfurt.keys.public_key(Purpose.SIGNING, 1)
    check_commit_proof(evidence.proof, evidence.receipt, "frankfurt", "dpo_audit-atomic", [key])


# -- a partner's bad proof -----------------------------------------------------------------------


def test_a_tampered_proof_is_logged_and_not_kept_the_transfer_is_delivered(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    finish = lb.link.finish
    sent: list[FinishResult] = []

    def tampering_finish(
        partner: PartnerConfig, transfer_id: str, manifest: Signed
    ) -> FinishResult:
        result = finish(partner, transfer_id, manifest)
        assert result.proof is not None and result.proof.inclusion
        first = bytearray(result.proof.inclusion[0])
        first[0] ^= 0x01
        proof = replace(result.proof, inclusion=(bytes(first), *result.proof.inclusion[1:]))
        sent.append(replace(result, proof=proof))
        return sent[-1]

    monkeypatch.setattr(lb.link, "finish", tampering_finish)
    caplog.set_level(logging.INFO, logger="xbgw")
    summary = lb.send("dpo_audit-tampered", PAYLOAD)

    assert_delivered(lb, "dpo_audit-tampered", PAYLOAD, summary)
    assert evidence_of(lb, "dpo_audit-tampered").proof is None
    row = lb.lingang.ledger.outbound("dpo_audit-tampered")
    assert row is not None and row.evidence is not None
    assert json.loads(row.evidence)["proof"] is None
    assert kinds(lb.lingang.ledger) == [*KEYS_ACTIVATED, "transfer.delivered"]

    [proof] = [s.proof for s in sent]
    assert proof is not None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage().split(": root mismatch")[0]) for r in errors] == [
        ("xbgw.sender", "the commit proof of frankfurt does not check out")
    ]
    message = errors[0].getMessage()
    assert message.startswith(
        "the commit proof of frankfurt does not check out: root mismatch: the inclusion "
        f"proof for leaf {proof.leaf} of "
    )
    assert getattr(errors[0], "outcome", None) == "bad-proof"
    assert getattr(errors[0], "transfer_id", None) == "dpo_audit-tampered"
    # The delivery itself was logged as usual.
    assert any(
        r.name == "xbgw.sender" and r.getMessage() == "transfer delivered" for r in caplog.records
    )


def test_a_proof_signed_by_an_unknown_key_is_not_kept(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Frankfurt's checkpoint signed with a key lingang does not know for it."""
    side = lb.frankfurt
    assert side.receiver.checkpointer is not None
    side.receiver.checkpointer.stop()
    version = side.keys.generate(Purpose.SIGNING)  # on the token, never published
    rogue = Checkpointer(side.id, side.ledger, side.keys, lambda: version, interval=0.05)
    side.receiver.checkpointer = rogue
    rogue.start()
    try:
        caplog.set_level(logging.ERROR, logger="xbgw")
        summary = lb.send("dpo_audit-unknown-key", PAYLOAD)
    finally:
        rogue.stop()
    assert_delivered(lb, "dpo_audit-unknown-key", PAYLOAD, summary)
    assert evidence_of(lb, "dpo_audit-unknown-key").proof is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "the commit proof of frankfurt does not check out: the checkpoint of frankfurt does "
        "not verify: checkpoint of 'frankfurt' has no signature by a known log key"
    ]

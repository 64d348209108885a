"""Cross-witnessing between the two loopback gateways, with real transfers and real logs.

Each side gets what the daemon wires: a checkpointer over its audit log and a witness that
serves it and witnesses the partner, over :class:`LoopbackWitnessLink` (the partner's witness
called in-process, its refusals turned into ``PartnerError`` as the gRPC link does). Then
frankfurt's log is rewritten behind its back -- cut back and grown with other records, then
checkpointed again by a fresh checkpointer (a restart) -- and lingang's next round raises the
alarm; frankfurt's offers to lingang are refused with the verb to run, until lingang
acknowledges.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import merkle
from gateway.audit.checkpoint import CosignatureVerifier, EcdsaVerifier, open_checkpoint
from gateway.audit.checkpointer import Checkpointer
from gateway.audit.records import AuditRecord, decode
from gateway.audit.witness import Outcome, ServedCheckpoint, Witness, alarm_refusal
from gateway.config import PartnerConfig
from gateway.errors import PartnerError, XbgwError
from gateway.keys import Purpose
from gateway.partner_keys import PartnerKeys
from gateway.transfer import refused_by
from tests.loopback import Loopback, Side, make_loopback

ME, PARTNER = "lingang", "frankfurt"


def rewind_log(ledger_path: Path, size: int) -> None:
    """Cut a gateway's audit log on disk back to its first ``size`` leaves -- records, nodes,
    frontier and the checkpoints beyond it -- as an operator rewriting history would."""
    db = sqlite3.connect(ledger_path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM audit_records WHERE idx >= ?", (size,))
        # A node at (level, idx) covers leaves [idx << level, (idx + 1) << level).
        db.execute("DELETE FROM audit_nodes WHERE ((idx + 1) << level) > ?", (size,))
        db.execute("DELETE FROM audit_checkpoints WHERE size > ?", (size,))

        def hash_at(level: int, index: int) -> bytes:
            row = db.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
            return bytes(row[0])

        frontier = merkle.Frontier.at(hash_at, size)
        db.execute("UPDATE audit_frontier SET frontier = ? WHERE id = 0", (frontier.to_bytes(),))
        db.execute("COMMIT")
    finally:
        db.close()


@dataclass
class LoopbackWitnessLink:
    """A witness link to the partner's witness in this process: ``peers[partner id]`` is that
    partner's witness and its configuration of the caller (as mutual TLS would name it)."""

    peers: dict[str, tuple[Witness, PartnerConfig]]

    def checkpoint(self, partner: PartnerConfig, known_size: int) -> ServedCheckpoint:
        witness, _caller = self.peers[partner.id]
        try:
            return witness.serve_checkpoint(known_size)
        except XbgwError as error:
            raise refused_by(partner.id, "status", error.grpc_status, str(error)) from None

    def cosign(self, partner: PartnerConfig, checkpoint: str, cosignature: str) -> None:
        witness, caller = self.peers[partner.id]
        try:
            witness.accept_cosignature(caller, checkpoint, cosignature)
        except XbgwError as error:
            raise refused_by(partner.id, "status", error.grpc_status, str(error)) from None


@dataclass
class Witnessing:
    lb: Loopback
    witnesses: dict[str, Witness]
    checkpointers: dict[str, Checkpointer]
    links: dict[str, LoopbackWitnessLink]

    def side(self, gateway: str) -> Side:
        return self.lb.lingang if gateway == ME else self.lb.frankfurt

    def make(self, gateway: str) -> None:
        """(Re)build ``gateway``'s checkpointer and witness, as a daemon start does."""
        side = self.side(gateway)
        checkpointer = Checkpointer(
            gateway, side.ledger, side.keys, lambda: side.ring.signing, clock=self.clock
        )
        self.checkpointers[gateway] = checkpointer
        self.witnesses[gateway] = Witness(
            lambda: side.config,
            side.ledger,
            side.keys,
            lambda: side.ring.signing,
            PartnerKeys(side.config, side.ledger, self.lb.link.key_set),
            self.links[gateway],
            checkpointer,
            clock=self.clock,
        )
        other = PARTNER if gateway == ME else ME
        self.links[other].peers[gateway] = (
            self.witnesses[gateway],
            side.config.partner(other),
        )

    def clock(self) -> float:
        return self.lb.now[0]

    def checkpoint(self, gateway: str) -> int:
        return self.checkpointers[gateway].sign_now().size

    def round(self, gateway: str) -> Outcome:
        [done] = self.witnesses[gateway].round()
        return done.outcome


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Witnessing]:
    lb = make_loopback(tmp_path)
    made = Witnessing(lb, {}, {}, {ME: LoopbackWitnessLink({}), PARTNER: LoopbackWitnessLink({})})
    made.make(ME)
    made.make(PARTNER)
    yield made
    lb.close()


def send_back(pair: Witnessing, jti: str) -> str:
    """frankfurt sends to lingang (the other way round from the loopback's usual)."""
    lb = pair.lb
    token = lb.passport(jti, sender=PARTNER, to=ME, terms={"src": "EU-DE", "dst": "CN-SH"})
    data = os.urandom(300)
    return lb.frankfurt.sender.send(ME, token, iter([data]), len(data)).transfer_id


def test_partners_witness_each_other_and_cosign(pair: Witnessing) -> None:
    pair.lb.send("dpo_t-1", os.urandom(500))
    size = pair.checkpoint(PARTNER)
    pair.checkpoint(ME)
    assert pair.round(ME) is Outcome.COSIGNED
    assert pair.round(PARTNER) is Outcome.COSIGNED
    stored = pair.lb.lingang.ledger.partner_checkpoint(PARTNER)
    assert stored is not None and stored.size == size
    # frankfurt can show that lingang witnessed its log: a note with both signatures.
    report = pair.witnesses[PARTNER].report()
    assert [(c.witness, c.size) for c in report.cosignatures] == [(ME, size)]
    opened = open_checkpoint(
        report.cosigned_checkpoint,
        [EcdsaVerifier(PARTNER, pair.lb.frankfurt.keys.public_key(Purpose.SIGNING, 1))],
        cosigners=[CosignatureVerifier(ME, pair.lb.lingang.keys.public_key(Purpose.SIGNING, 1))],
        origin=PARTNER,
    )
    assert opened.checkpoint.size == size
    assert [s.name for s in opened.cosignatures] == [ME]
    # Growth on both sides keeps being witnessed.
    pair.lb.send("dpo_t-2", os.urandom(500))
    send_back(pair, "dpo_t-3")
    pair.checkpoint(PARTNER)
    pair.checkpoint(ME)
    assert (pair.round(ME), pair.round(PARTNER)) == (Outcome.COSIGNED, Outcome.COSIGNED)


def test_a_rewritten_log_is_caught_and_offers_refused_until_acknowledged(
    pair: Witnessing, tmp_path: Path
) -> None:
    lb = pair.lb
    lb.send("dpo_t-1", os.urandom(500))
    first = pair.checkpoint(PARTNER)
    lb.send("dpo_t-2", os.urandom(500))
    seen = pair.checkpoint(PARTNER)
    assert pair.round(ME) is Outcome.COSIGNED
    send_back(pair, "dpo_t-back-1")  # frankfurt's offers are welcome

    # frankfurt's history is rewritten: cut back to its first checkpoint, other records
    # appended past the size lingang saw, and a fresh checkpointer (a restart) signs it.
    rewind_log(tmp_path / PARTNER / "ledger.sqlite3", first)
    for n in range(seen - first + 2):
        record = AuditRecord("config.reloaded", int(lb.now[0]), {"config_sha256": f"{n:064x}"})
        lb.frankfurt.ledger.append_audit(record.encode(PARTNER))
    pair.make(PARTNER)
    assert pair.checkpoint(PARTNER) > seen

    assert pair.round(ME) is Outcome.ALARM
    alarm = lb.lingang.ledger.witness_alarm(PARTNER)
    assert alarm is not None
    assert alarm.reason.startswith(f"fork: no proof that size {seen + 2} extends the size {seen}")

    # Offers from frankfurt are refused, with the verb that ends it ...
    with pytest.raises(PartnerError) as refused:
        send_back(pair, "dpo_t-back-2")
    assert str(refused.value) == (
        f"partner lingang refused the offer (FAILED_PRECONDITION): {alarm_refusal(ME, alarm)}"
    )
    assert "run `xbgw witness acknowledge frankfurt`" in str(refused.value)
    records = [decode(r) for _, r in lb.lingang.ledger.audit_records(0, 10_000)]
    assert any(r["kind"] == "offer.refused" and r["error"] == "WitnessAlarmError" for r in records)
    # ... while lingang's sends to frankfurt go on, and frankfurt keeps witnessing lingang.
    lb.send("dpo_t-3", os.urandom(200))
    pair.checkpoint(ME)
    assert pair.round(PARTNER) is Outcome.COSIGNED
    assert pair.round(ME) is Outcome.ALARMED

    # The operator acknowledges: offers accepted again, the rewritten log is the new base.
    pair.witnesses[ME].acknowledge(PARTNER)
    send_back(pair, "dpo_t-back-3")
    pair.checkpoint(PARTNER)
    assert pair.round(ME) is Outcome.COSIGNED
    assert lb.lingang.ledger.witness_alarm(PARTNER) is None

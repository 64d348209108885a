"""The witness on a real ledger, against a partner log the test controls.

lingang witnesses frankfurt. frankfurt's log is a list of leaf hashes here, its checkpoints
signed with its key in a :class:`SoftwareHsm`, served by :class:`FakeLink` with a correct
RFC 9162 consistency proof unless a test serves something else -- a smaller tree
(rollback), another tree of the same size (fork), a longer one that does not extend what was
seen, a bad proof, a note signed by a key lingang does not know.

Decided and checked here: only a checkpoint the partner signed can raise an alarm; a note
that does not verify is *rejected* (warning, nothing stored, no alarm), and so is a partner
that cannot be reached.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit import merkle
from gateway.audit.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    EcdsaVerifier,
    NoteSignature,
    digest_signer,
    key_id,
    open_checkpoint,
    sign_note,
    verify_cosignature,
)
from gateway.audit.checkpointer import Checkpointer
from gateway.audit.records import AuditRecord, decode
from gateway.audit.witness import (
    Outcome,
    ServedCheckpoint,
    Witness,
    WitnessAlarmError,
    WitnessError,
    alarm_refusal,
    check_offers,
)
from gateway.config import GatewayConfig, Limits, PartnerConfig
from gateway.errors import ConfigError, PartnerError, SignatureError
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger, PartnerCheckpoint
from gateway.metrics import Metrics
from gateway.partner_keys import PartnerKeys
from gateway.transfer import unreachable
from tests.fakes import SoftwareHsm
from tests.loopback import FRANKFURT, LINGANG, gateway_config

NOW = 1_750_000_000  # 2025-06-15T15:06:40Z
ME, PARTNER = LINGANG[0], FRANKFURT[0]


def leaves(count: int, tag: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(tag + f"record {i}".encode()) for i in range(count)]


def signed(keys: SoftwareHsm, hashes: list[bytes], origin: str = PARTNER) -> str:
    """A checkpoint note of the tree of ``hashes``, signed as ``origin`` by ``keys``."""
    body = Checkpoint(origin, len(hashes), merkle.root(hashes)).body()
    public = keys.public_key(Purpose.SIGNING, 1)
    signer = digest_signer(keys, KeyRef(origin, Purpose.SIGNING, 1))
    return sign_note(body, origin, key_id(origin, public), signer)


@dataclass
class FakeLink:
    """frankfurt as lingang's witness link sees it: serves ``hashes`` (its log) honestly
    unless ``serve`` is set; records what was asked and cosigned."""

    keys: SoftwareHsm
    hashes: list[bytes] = field(default_factory=list)
    serve: Callable[[int], ServedCheckpoint] | None = None
    down: PartnerError | None = None
    refuse_cosign: PartnerError | None = None
    asked: list[int] = field(default_factory=list)
    cosigned: list[tuple[str, str]] = field(default_factory=list)
    during: Callable[[], None] | None = None  # runs inside the checkpoint call

    def checkpoint(self, partner: PartnerConfig, known_size: int) -> ServedCheckpoint:
        assert partner.id == PARTNER
        self.asked.append(known_size)
        if self.during is not None:
            self.during()
        if self.down is not None:
            raise self.down
        if self.serve is not None:
            return self.serve(known_size)
        size = len(self.hashes)
        proof = (
            merkle.consistency_proof(self.hashes, known_size, size) if 0 < known_size < size else []
        )
        return ServedCheckpoint(signed(self.keys, self.hashes), tuple(proof))

    def cosign(self, partner: PartnerConfig, checkpoint: str, cosignature: str) -> None:
        if self.refuse_cosign is not None:
            raise self.refuse_cosign
        self.cosigned.append((checkpoint, cosignature))


@dataclass
class Setup:
    witness: Witness
    ledger: Ledger
    link: FakeLink
    mine: SoftwareHsm  # lingang's keys
    theirs: SoftwareHsm  # frankfurt's keys
    config: GatewayConfig
    alarms: list[str]
    health: list[frozenset[str]]

    @property
    def partner(self) -> PartnerConfig:
        return self.config.partner(PARTNER)

    def stored(self) -> PartnerCheckpoint | None:
        return self.ledger.partner_checkpoint(PARTNER)

    def outcome(self) -> Outcome:
        [done] = self.witness.round()
        return done.outcome


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    mine, theirs, issuer = SoftwareHsm(), SoftwareHsm(), SoftwareHsm()
    config = gateway_config(tmp_path, LINGANG, FRANKFURT, theirs, issuer, Limits())
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    link = FakeLink(theirs)
    alarms: list[str] = []
    health: list[frozenset[str]] = []
    witness = Witness(
        lambda: config,
        ledger,
        mine,
        lambda: 1,
        PartnerKeys(config, ledger, None),
        link,
        on_alarm=alarms.append,
        on_change=health.append,
        clock=lambda: NOW,
    )
    yield Setup(witness, ledger, link, mine, theirs, config, alarms, health)
    ledger.close()


def assert_cosignature(setup: Setup, size: int) -> None:
    """The last cosignature handed back is lingang's, of frankfurt's checkpoint of ``size``."""
    note, line = setup.link.cosigned[-1]
    checkpoint = open_checkpoint(
        note, [EcdsaVerifier(PARTNER, setup.theirs.public_key(Purpose.SIGNING, 1))]
    ).checkpoint
    assert checkpoint.size == size
    verifier = CosignatureVerifier(ME, setup.mine.public_key(Purpose.SIGNING, 1))
    signature = NoteSignature.from_line(line)
    assert verify_cosignature(checkpoint, signature, verifier) == NOW


# --- growth -------------------------------------------------------------------------------


def test_a_growing_log_is_stored_and_cosigned_at_each_size(setup: Setup) -> None:
    setup.link.hashes = leaves(3)
    assert setup.outcome() is Outcome.COSIGNED  # first sight: trusted, nothing to prove
    stored = setup.stored()
    assert stored is not None
    assert (stored.size, stored.root, stored.seen_at) == (3, merkle.root(leaves(3)), NOW)
    assert_cosignature(setup, 3)

    setup.link.hashes = leaves(11)
    assert setup.outcome() is Outcome.COSIGNED
    assert setup.link.asked == [0, 3]  # the proof was asked from the size stored
    stored = setup.stored()
    assert stored is not None and stored.size == 11
    assert_cosignature(setup, 11)
    assert setup.alarms == [] and setup.health[-1] == frozenset()


def test_the_same_checkpoint_is_not_cosigned_twice(setup: Setup) -> None:
    setup.link.hashes = leaves(5)
    assert setup.outcome() is Outcome.COSIGNED
    assert setup.outcome() is Outcome.UNCHANGED
    assert len(setup.link.cosigned) == 1


def test_a_cosignature_not_delivered_is_signed_again_next_round(setup: Setup) -> None:
    setup.link.hashes = leaves(4)
    setup.link.refuse_cosign = unreachable(PARTNER, "status", "connection refused")
    [done] = setup.witness.round()
    assert done.outcome is Outcome.STORED
    assert "the cosignature was not delivered" in done.detail
    stored = setup.stored()
    assert stored is not None and stored.size == 4  # verified: kept even so
    setup.link.refuse_cosign = None
    assert setup.outcome() is Outcome.COSIGNED
    assert_cosignature(setup, 4)


def test_an_empty_log_then_its_growth(setup: Setup) -> None:
    assert setup.outcome() is Outcome.COSIGNED
    setup.link.hashes = leaves(2)
    assert setup.outcome() is Outcome.COSIGNED
    assert setup.link.asked == [0, 0]  # nothing to prove from the empty tree


# --- alarms -------------------------------------------------------------------------------


def alarm_of(setup: Setup) -> str:
    alarm = setup.ledger.witness_alarm(PARTNER)
    assert alarm is not None
    return alarm.reason


def test_a_rollback_raises_an_alarm(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    setup.link.hashes = leaves(7)
    assert setup.outcome() is Outcome.COSIGNED
    setup.link.hashes = leaves(5)  # the log lost its last two leaves, and was re-signed
    with caplog.at_level(logging.ERROR, logger="xbgw.audit"):
        [done] = setup.witness.round()
    assert (done.outcome, done.size) == (Outcome.ALARM, 5)
    reason = "rollback: a checkpoint of size 5 after one of size 7"
    assert done.detail == alarm_of(setup) == reason
    [line] = [r for r in caplog.records if r.name == "xbgw.audit" and r.levelno == logging.ERROR]
    assert line.getMessage() == (
        f"witness alarm: the audit log of frankfurt shows a {reason}; its offers are refused "
        "until an operator runs `xbgw witness acknowledge frankfurt`"
    )
    assert (getattr(line, "partner", None), getattr(line, "reason", None)) == (PARTNER, reason)
    assert setup.alarms == [PARTNER]
    assert setup.health[-1] == frozenset({PARTNER})
    stored = setup.stored()
    assert stored is not None and stored.size == 7  # the base is kept, not replaced
    assert len(setup.link.cosigned) == 1  # nothing cosigned after the alarm


def test_a_fork_at_the_same_size_raises_an_alarm(setup: Setup) -> None:
    setup.link.hashes = leaves(6)
    assert setup.outcome() is Outcome.COSIGNED
    setup.link.hashes = leaves(6, tag=b"rewritten ")
    assert setup.outcome() is Outcome.ALARM
    assert alarm_of(setup).startswith("fork: a checkpoint of size 6 with root ")
    assert alarm_of(setup).endswith(f"not the root {merkle.root(leaves(6)).hex()[:16]} seen before")


def test_a_longer_log_that_does_not_extend_the_one_seen_raises_an_alarm(setup: Setup) -> None:
    setup.link.hashes = leaves(6)
    assert setup.outcome() is Outcome.COSIGNED
    other = leaves(6, tag=b"rewritten ") + leaves(4, tag=b"new ")
    setup.link.hashes = other  # an honest proof of the other history, from size 6
    assert setup.outcome() is Outcome.ALARM
    assert alarm_of(setup).startswith("fork: no proof that size 10 extends the size 6 seen before")


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda p: [p[0][:-1] + bytes([p[0][-1] ^ 1]), *p[1:]], id="flipped-bit"),
        pytest.param(lambda p: p[:-1], id="missing-node"),
        pytest.param(lambda p: [*p, p[0]], id="extra-node"),
        pytest.param(lambda p: [], id="no-proof"),
    ],
)
def test_a_bad_consistency_proof_raises_an_alarm(
    setup: Setup, corrupt: Callable[[list[bytes]], list[bytes]]
) -> None:
    setup.link.hashes = leaves(6)
    assert setup.outcome() is Outcome.COSIGNED
    grown = leaves(13)
    good = merkle.consistency_proof(grown, 6, 13)
    setup.link.serve = lambda _known: ServedCheckpoint(
        signed(setup.theirs, grown), tuple(corrupt(good))
    )
    assert setup.outcome() is Outcome.ALARM
    assert alarm_of(setup).startswith("fork: no proof that size 13 extends the size 6 seen before")


def test_a_partner_under_alarm_is_not_asked_until_acknowledged(setup: Setup) -> None:
    setup.link.hashes = leaves(7)
    setup.witness.round()
    setup.link.hashes = leaves(5)
    assert setup.outcome() is Outcome.ALARM
    asked = len(setup.link.asked)
    [done] = setup.witness.round()
    assert (done.outcome, done.size) == (Outcome.ALARMED, 5)
    assert len(setup.link.asked) == asked
    assert setup.alarms == [PARTNER]  # one alarm, counted once


def test_acknowledge_clears_the_alarm_and_rebases_on_its_checkpoint(setup: Setup) -> None:
    setup.link.hashes = leaves(7)
    setup.witness.round()
    setup.link.hashes = leaves(5, tag=b"rewritten ")
    assert setup.outcome() is Outcome.ALARM
    alarm = setup.witness.acknowledge(PARTNER)
    assert alarm.size == 5
    assert setup.ledger.witness_alarm(PARTNER) is None
    # Both steps are in this gateway's own audit log, with the alarm's kind and size.
    kinds = [decode(r) for _, r in setup.ledger.audit_records(0, setup.ledger.audit_size())]
    assert [(k["kind"], k["partner"]) for k in kinds if str(k["kind"]).startswith("witness.")] == [
        ("witness.alarm", PARTNER),
        ("witness.acknowledged", PARTNER),
    ]
    assert [k["reason"] for k in kinds if k["kind"] == "witness.alarm"] == ["rollback"]
    assert setup.health[-1] == frozenset()
    stored = setup.stored()
    assert stored is not None
    assert (stored.size, stored.root) == (5, merkle.root(leaves(5, tag=b"rewritten ")))
    check_offers(setup.ledger, ME, PARTNER)  # offers accepted again
    # The next checkpoint must extend the acknowledged one (asked from size 5).
    setup.link.hashes = leaves(5, tag=b"rewritten ") + leaves(3, tag=b"new ")
    assert setup.outcome() is Outcome.COSIGNED
    assert setup.link.asked[-1] == 5
    assert_cosignature(setup, 8)
    # ... and a later rollback is an alarm again.
    setup.link.hashes = leaves(2)
    assert setup.outcome() is Outcome.ALARM
    assert setup.alarms == [PARTNER, PARTNER]


def test_acknowledge_without_an_alarm_is_refused(setup: Setup) -> None:
    with pytest.raises(WitnessError, match="partner frankfurt is not under a witness alarm"):
        setup.witness.acknowledge(PARTNER)


def test_offers_are_refused_while_the_partner_is_under_alarm(setup: Setup) -> None:
    check_offers(setup.ledger, ME, PARTNER)
    setup.link.hashes = leaves(3)
    setup.witness.round()
    setup.link.hashes = leaves(2)
    setup.witness.round()
    with pytest.raises(WitnessAlarmError) as refused:
        check_offers(setup.ledger, ME, PARTNER)
    assert str(refused.value) == (
        "lingang refuses offers from frankfurt: witnessing its audit log found a rollback: a "
        "checkpoint of size 2 after one of size 3 (at 2025-06-15T15:06:40Z); an operator of "
        "lingang must check it and run `xbgw witness acknowledge frankfurt`"
    )
    assert refused.value.grpc_status == "FAILED_PRECONDITION"
    alarm = setup.ledger.witness_alarm(PARTNER)
    assert alarm is not None and alarm_refusal(ME, alarm) == str(refused.value)
    check_offers(setup.ledger, ME, "someone-else")  # only that partner


# --- what is no alarm ---------------------------------------------------------------------


def test_a_note_signed_by_an_unknown_key_is_rejected_without_alarm(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.link.hashes = leaves(7)
    setup.witness.round()
    stranger = SoftwareHsm()
    setup.link.serve = lambda _known: ServedCheckpoint(signed(stranger, leaves(2)))
    with caplog.at_level(logging.WARNING, logger="xbgw.audit"):
        [done] = setup.witness.round()
    assert done.outcome is Outcome.REJECTED
    assert "no signature by a known log key" in done.detail
    assert "its key set did not help" in done.detail  # a rotation was looked for first
    assert setup.ledger.witness_alarm(PARTNER) is None and setup.alarms == []
    stored = setup.stored()
    assert stored is not None and stored.size == 7
    assert any(r.levelno == logging.WARNING and PARTNER in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(lambda keys: signed(keys, leaves(2), origin="lingang"), id="other-origin"),
        pytest.param(lambda keys: signed(keys, leaves(2)).replace("\n2\n", "\n3\n"), id="edited"),
        pytest.param(lambda _keys: "not a note\n", id="garbage"),
    ],
)
def test_a_note_that_does_not_verify_is_rejected_without_alarm(
    setup: Setup, note: Callable[[SoftwareHsm], str]
) -> None:
    setup.link.hashes = leaves(7)
    setup.witness.round()
    setup.link.serve = lambda _known: ServedCheckpoint(note(setup.theirs))
    assert setup.outcome() is Outcome.REJECTED
    assert setup.ledger.witness_alarm(PARTNER) is None


def test_an_unreachable_partner_is_no_alarm(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    setup.link.down = unreachable(PARTNER, "status", "failed to connect to all addresses")
    with caplog.at_level(logging.WARNING, logger="xbgw.audit"):
        [done] = setup.witness.round()
    assert done.outcome is Outcome.UNREACHABLE
    assert "failed to connect" in done.detail
    assert setup.stored() is None and setup.alarms == []
    assert [r.levelname for r in caplog.records if r.name == "xbgw.audit"] == ["WARNING"]


def test_a_learnt_signing_key_verifies_after_a_rotation(setup: Setup) -> None:
    """A partner's signing key learnt from its key set (v2) verifies its checkpoints; the
    configured root is no longer needed."""
    setup.theirs.generate(Purpose.SIGNING)  # version 2
    public = setup.theirs.public_key(Purpose.SIGNING, 2)
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    setup.ledger.learn_partner_key(PARTNER, Purpose.SIGNING, 2, point, "active", "key set v1", 1)
    body = Checkpoint(PARTNER, 3, merkle.root(leaves(3))).body()
    signer = digest_signer(setup.theirs, KeyRef(PARTNER, Purpose.SIGNING, 2))
    note = sign_note(body, PARTNER, key_id(PARTNER, public), signer)
    setup.link.serve = lambda _known: ServedCheckpoint(note)
    assert setup.outcome() is Outcome.COSIGNED


def test_a_round_that_loses_the_race_stores_nothing(setup: Setup) -> None:
    """Another round stored a checkpoint while this one talked to the partner: the store is
    refused (its base changed) and this round skips."""
    setup.link.hashes = leaves(4)
    other = PartnerCheckpoint(
        PARTNER, 4, merkle.root(leaves(4)), signed(setup.theirs, leaves(4)), 1
    )

    def concurrent_round() -> None:
        assert setup.ledger.store_partner_checkpoint(other, None)

    setup.link.during = concurrent_round
    [done] = setup.witness.round()
    assert done.outcome is Outcome.SKIPPED
    stored = setup.stored()
    assert stored is not None and stored.seen_at == 1


def test_a_round_of_an_unknown_partner_is_refused(setup: Setup) -> None:
    with pytest.raises(ConfigError, match="no partner 'nobody'"):
        setup.witness.round(["nobody"])


def test_the_thread_witnesses_each_interval_until_stopped(setup: Setup) -> None:
    setup.link.hashes = leaves(3)
    witness = Witness(
        lambda: setup.config,
        setup.ledger,
        setup.mine,
        lambda: 1,
        PartnerKeys(setup.config, setup.ledger, None),
        setup.link,
        on_change=setup.health.append,
        clock=lambda: NOW,
        interval=0.01,
    )
    witness.start()
    try:
        deadline = time.monotonic() + 10
        while len(setup.link.asked) < 2:  # two rounds: the second finds nothing new
            assert time.monotonic() < deadline, "the witness thread made no rounds"
            threading.Event().wait(0.01)
    finally:
        witness.stop()
        witness.join(10)
    assert setup.health[0] == frozenset()  # health set at start
    assert len(setup.link.cosigned) == 1
    asked = len(setup.link.asked)
    threading.Event().wait(0.05)
    assert len(setup.link.asked) == asked  # stopped


def test_the_alarm_metric(setup: Setup) -> None:
    metrics = Metrics()
    metrics.witness_alarm(PARTNER)
    value = metrics.registry.get_sample_value("xbgw_witness_alarms_total", {"partner": PARTNER})
    assert value == 1.0


# --- serving our own log ------------------------------------------------------------------


@dataclass
class Served:
    """frankfurt's side: a real log and checkpointer, and its witness serving them."""

    witness: Witness
    ledger: Ledger
    keys: SoftwareHsm
    checkpointer: Checkpointer
    lingang: PartnerConfig  # frankfurt's view of lingang


@pytest.fixture
def served(tmp_path: Path, setup: Setup) -> Iterator[Served]:
    issuer = SoftwareHsm()
    config = gateway_config(tmp_path / "f", FRANKFURT, LINGANG, setup.mine, issuer, Limits())
    ledger = Ledger(tmp_path / "f" / "ledger.sqlite3")
    checkpointer = Checkpointer(PARTNER, ledger, setup.theirs, lambda: 1, clock=lambda: NOW)
    witness = Witness(
        lambda: config,
        ledger,
        setup.theirs,
        lambda: 1,
        PartnerKeys(config, ledger, None),
        None,
        checkpointer,
        clock=lambda: NOW,
    )
    yield Served(witness, ledger, setup.theirs, checkpointer, config.partner(ME))
    ledger.close()


def grow(ledger: Ledger, count: int) -> None:
    for _ in range(count):
        n = ledger.audit_size()
        record = AuditRecord("config.reloaded", NOW + n, {"config_sha256": os.urandom(32).hex()})
        ledger.append_audit(record.encode(PARTNER))


def test_get_checkpoint_serves_the_newest_and_a_proof_from_the_size_known(served: Served) -> None:
    grow(served.ledger, 3)
    first = served.witness.serve_checkpoint(0)  # none signed yet: signed now
    assert first.consistency == ()
    verifier = EcdsaVerifier(PARTNER, served.keys.public_key(Purpose.SIGNING, 1))
    old = open_checkpoint(first.note, [verifier], origin=PARTNER).checkpoint
    assert old.size == 3
    grow(served.ledger, 6)
    served.checkpointer.sign_now()
    later = served.witness.serve_checkpoint(3)
    new = open_checkpoint(later.note, [verifier], origin=PARTNER).checkpoint
    assert new.size == 9
    merkle.verify_consistency(3, 9, old.root_hash, new.root_hash, list(later.consistency))
    assert served.witness.serve_checkpoint(9).consistency == ()
    assert served.witness.serve_checkpoint(12).consistency == ()  # we are smaller: no proof


def test_a_cosignature_is_verified_and_kept(setup: Setup, served: Served) -> None:
    grow(served.ledger, 5)
    note = served.witness.serve_checkpoint(0).note
    checkpoint = open_checkpoint(
        note, [EcdsaVerifier(PARTNER, served.keys.public_key(Purpose.SIGNING, 1))]
    ).checkpoint
    line = setup.witness.cosignature(checkpoint).line()
    kept = served.witness.accept_cosignature(served.lingang, note, line)
    assert (kept.size, kept.witness, kept.at) == (5, ME, NOW)
    report = served.witness.report()
    assert [(c.witness, c.size) for c in report.cosignatures] == [(ME, 5)]
    # The cosigned note carries frankfurt's signature and lingang's cosignature, both valid.
    opened = open_checkpoint(
        report.cosigned_checkpoint,
        [EcdsaVerifier(PARTNER, served.keys.public_key(Purpose.SIGNING, 1))],
        cosigners=[CosignatureVerifier(ME, setup.mine.public_key(Purpose.SIGNING, 1))],
    )
    assert [s.name for s in opened.cosignatures] == [ME]


def test_a_cosignature_that_is_not_right_is_refused(setup: Setup, served: Served) -> None:
    grow(served.ledger, 4)
    note = served.witness.serve_checkpoint(0).note
    checkpoint = open_checkpoint(
        note, [EcdsaVerifier(PARTNER, served.keys.public_key(Purpose.SIGNING, 1))]
    ).checkpoint
    good = setup.witness.cosignature(checkpoint)
    # By a key lingang does not have (another witness's, or a forged one).
    stranger = SoftwareHsm()
    stranger_line = Witness(
        lambda: setup.config,
        setup.ledger,
        stranger,
        lambda: 1,
        PartnerKeys(setup.config, setup.ledger, None),
        clock=lambda: NOW,
    ).cosignature(checkpoint)
    with pytest.raises(SignatureError, match="is not a signing key of lingang"):
        served.witness.accept_cosignature(served.lingang, note, stranger_line.line())
    # A bit flipped in the signature.
    flipped = NoteSignature(good.name, good.key_id, good.signature[:-1] + b"\x00")
    with pytest.raises(SignatureError, match="does not verify"):
        served.witness.accept_cosignature(served.lingang, note, flipped.line())
    # Named for another gateway than the caller.
    renamed = NoteSignature("mallory", good.key_id, good.signature)
    with pytest.raises(SignatureError, match="by 'mallory', but the connection is from"):
        served.witness.accept_cosignature(served.lingang, note, renamed.line())
    # Of a checkpoint that is not one of our log.
    forged = signed(served.keys, leaves(4))
    with pytest.raises(WitnessError, match="is not one of the audit log of frankfurt"):
        served.witness.accept_cosignature(served.lingang, forged, good.line())
    with pytest.raises(WitnessError, match="cosignature refused"):
        served.witness.accept_cosignature(served.lingang, note, "— lingang !!")
    assert served.ledger.cosignatures() == []
    served.witness.accept_cosignature(served.lingang, note, good.line())
    assert len(served.ledger.cosignatures()) == 1

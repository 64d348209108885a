"""Key rotation between two real gateways in one process (``tests.loopback``).

Frankfurt rotates and retires its keys with its real ``KeyRing``; lingang's real sender meets
the result: an offer sealed to a transport key frankfurt no longer accepts is refused with the
words that make lingang fetch a fresh key set and seal again -- once, and only while no segment
of the transfer has left; a decrypt-only transport key is still accepted until it is retired;
a new signing key is followed from the pinned one through frankfurt's key set (no change to
lingang's configuration), and old receipts still verify from lingang's stored history. The
grace periods are set to what each case needs on frankfurt's ring (``KeysConfig.grace``); the
clock is ``lb.now``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.config import PartnerConfig
from gateway.documents import EndorsedKeySet
from gateway.envelope import Header
from gateway.errors import KeyLifecycleError, PartnerError, PassportReplayError, SignatureError
from gateway.keys import KeyRef, Purpose
from gateway.partner_keys import PartnerKeys
from gateway.receiver import Receiver
from gateway.sender import Sender
from gateway.signed import Signed
from gateway.transfer import FinishResult, OfferResult, TransferState
from tests.loopback import Loopback, Side, make_loopback
from tests.loopback_rig import (
    Rig,
    assert_delivered,
    broken_after,
    record_uploads,
)

DATA = bytes(range(256)) * 2 + b"tail"  # 9 segments of 64 bytes
REFRESH = 300  # KeysConfig.key_set_refresh, the default
STALE_V1 = (
    "partner frankfurt refused the offer (FAILED_PRECONDITION): the data key is wrapped to "
    "frankfurt/transport/1, which this gateway does not accept (transport versions in service: "
    "[2], active: 2); fetch a fresh key set"
)
RESEAL = "offer refused as sealed to a stale transport key; sealing again to a fresh key set"


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    lb = make_loopback(tmp_path)
    made = Rig(lb)
    record_uploads(made, monkeypatch)
    try:
        yield made
    finally:
        lb.close()


def grace(lb: Loopback, seconds: int) -> None:
    """Frankfurt's ``keys.grace`` for every purpose (its ring reads the policy at retire)."""
    ring = lb.frankfurt.ring
    ring.policy = replace(ring.policy, grace=dict.fromkeys(Purpose, seconds))


Offers = list[OfferResult | PartnerError]


def record_offers(lb: Loopback, monkeypatch: pytest.MonkeyPatch) -> Offers:
    """What each offer came back with: the partner's answer or its refusal."""
    outcomes: Offers = []
    original = lb.link.offer

    def offer(partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        try:
            result = original(partner, passport, header)
        except PartnerError as error:
            outcomes.append(error)
            raise
        outcomes.append(result)
        return result

    monkeypatch.setattr(lb.link, "offer", offer)
    return outcomes


def sealed_to(lb: Loopback, transfer_id: str) -> list[str]:
    """The key references lingang's stored outbound header wraps the data key to."""
    row = lb.lingang.ledger.outbound(transfer_id)
    assert row is not None
    return [str(w.key_ref) for w in Header.decode(row.sent_header).wrapped_keys]


def learnt(lb: Loopback, partner: str = "frankfurt", of: Side | None = None) -> list[str]:
    """``ref state source`` of every key version of ``partner`` in a gateway's ledger."""
    ledger = (of or lb.lingang).ledger
    return [
        f"{partner}/{purpose.value}/{version} {state} ({source})"
        for purpose, version, _point, state, _at, source in ledger.partner_keys(partner)
    ]


def history(lb: Loopback) -> PartnerKeys:
    """Lingang's view of its partners' keys from its ledger alone (no link, as after a
    restart with the partner unreachable)."""
    return PartnerKeys(lb.lingang.config, lb.lingang.ledger, None, clock=lambda: lb.now[0])


def forget_inbound(lb: Loopback, transfer_id: str) -> None:
    """Frankfurt loses its record of a transfer (its ledger restored from an older backup)."""
    path = lb.frankfurt.config.state_dir / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db, db:
        deleted = db.execute("DELETE FROM inbound WHERE transfer_id = ?", (transfer_id,))
        assert deleted.rowcount == 1


# --- what frankfurt serves ------------------------------------------------------------------


def served_states(blob: Signed) -> tuple[str, list[str], dict[int, str], dict[int, str]]:
    """(signed by, endorsed by, transport states, signing states) of a served key set, each
    signature checked with ``cryptography`` alone under the key the body lists for it."""
    assert isinstance(blob, EndorsedKeySet)
    body = partner_pb2.KeySet.FromString(blob.body)
    listed = {k.version: k.public_point for k in body.signing_keys}
    for signed in (blob, *blob.endorsements):
        assert signed.body == blob.body
        version = int(signed.kid.rsplit("/", 1)[1])
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), listed[version])
        r, s = (int.from_bytes(signed.signature[i : i + 32], "big") for i in (0, 32))
        public.verify(encode_dss_signature(r, s), signed.body, ec.ECDSA(hashes.SHA256()))
    return (
        blob.kid,
        [e.kid for e in blob.endorsements],
        {k.version: k.state for k in body.keys},
        {k.version: k.state for k in body.signing_keys},
    )


def test_frankfurts_served_key_set_follows_its_ring(rig: Rig) -> None:
    lb = rig.lb
    grace(lb, 0)
    ring = lb.frankfurt.ring
    assert served_states(lb.frankfurt.receiver.key_set()) == (
        "frankfurt/signing/1",
        [],
        {1: "active"},
        {1: "active"},
    )
    ring.rotate(Purpose.TRANSPORT)
    ring.rotate(Purpose.SIGNING)
    assert served_states(lb.frankfurt.receiver.key_set()) == (
        "frankfurt/signing/2",
        ["frankfurt/signing/1"],
        {1: "decrypt-only", 2: "active"},
        {1: "verify-only", 2: "active"},
    )
    ring.retire(Purpose.TRANSPORT, 1)
    ring.retire(Purpose.SIGNING, 1)
    served = lb.frankfurt.receiver.key_set()
    assert served_states(served) == ("frankfurt/signing/2", [], {2: "active"}, {2: "active"})
    assert partner_pb2.KeySet.FromString(served.body).issued_at == int(lb.now[0])


# --- transport ------------------------------------------------------------------------------


def test_a_retired_transport_key_in_a_cached_key_set_is_resealed_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lb = rig.lb
    offers = record_offers(lb, monkeypatch)
    assert_delivered(lb, "dpo_t-1", DATA, rig.send(lb.passport("dpo_t-1"), DATA))
    assert sealed_to(lb, "dpo_t-1") == ["frankfurt/transport/1"]
    grace(lb, 0)
    lb.frankfurt.ring.rotate(Purpose.TRANSPORT)
    lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)

    caplog.set_level(logging.INFO, logger="xbgw.sender")
    summary = rig.send(lb.passport("dpo_t-2"), DATA)  # lingang's key set is 0 s old: cached

    assert lb.link.calls == [
        *["key_set", "offer", "upload", "finish"],  # dpo_t-1
        *[
            "offer",
            "key_set",
            "offer",
            "upload",
            "finish",
        ],  # dpo_t-2: refused, fetched, sealed again
    ]
    assert_delivered(lb, "dpo_t-2", DATA, summary)
    assert sealed_to(lb, "dpo_t-2") == ["frankfurt/transport/2"]
    # The refused offer spent nothing: the second offer of the same passport was a new one.
    refused, accepted = offers[1:]
    assert isinstance(refused, PartnerError) and str(refused) == STALE_V1
    assert isinstance(accepted, OfferResult) and not accepted.resumed
    resealed = [r for r in caplog.records if r.name == "xbgw.sender" and r.getMessage() == RESEAL]
    assert len(resealed) == 1 and getattr(resealed[0], "transfer_id", None) == "dpo_t-2"
    # Spent once, by the delivery.
    with pytest.raises(PassportReplayError, match="transfer dpo_t-2 was already delivered"):
        rig.send(lb.passport("dpo_t-2"), DATA)


def test_the_stale_key_refusal_names_the_key_and_is_resealed_only_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    lb = rig.lb
    rig.send(lb.passport("dpo_t-1"), DATA)
    stale = lb.link.key_set(lb.lingang.config.partner("frankfurt"))  # lists transport v1 only
    grace(lb, 0)
    lb.frankfurt.ring.rotate(Purpose.TRANSPORT)
    lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)
    # The fresh key set lingang fetches is the stale one again (a cache on the way, say).
    monkeypatch.setattr(lb.link, "key_set", lambda partner: stale)
    token = lb.passport("dpo_t-2")
    with pytest.raises(PartnerError) as caught:
        rig.send(token, DATA)
    assert str(caught.value) == STALE_V1
    assert caught.value.grpc_status == "FAILED_PRECONDITION"
    assert rig.last_calls == ["offer", "offer"]  # sealed again once, to v1 again: given up
    assert lb.frankfurt.ledger.inbound("dpo_t-2") is None
    row = lb.lingang.ledger.outbound("dpo_t-2")
    assert row is not None and row.state is TransferState.SENDING
    # With the real key set back, the same passport goes through: nothing was spent. The
    # resend offers the header it kept (sealed to v1), is refused, and seals again.
    monkeypatch.undo()
    record_uploads(rig, monkeypatch)
    summary = rig.send(token, DATA)
    assert rig.last_calls == ["offer", "key_set", "offer", "upload", "finish"]
    assert_delivered(lb, "dpo_t-2", DATA, summary)
    assert sealed_to(lb, "dpo_t-2") == ["frankfurt/transport/2"]


def test_a_decrypt_only_transport_key_is_accepted_until_it_is_retired(rig: Rig) -> None:
    lb = rig.lb
    grace(lb, 600)
    rig.send(lb.passport("dpo_t-1"), DATA)
    rotated_at = int(lb.now[0])
    lb.frankfurt.ring.rotate(Purpose.TRANSPORT)  # v1 decrypt-only for the grace period

    # Lingang still holds the key set that lists v1 active: frankfurt opens it all the same.
    summary = rig.send(lb.passport("dpo_t-2"), DATA)
    assert rig.last_calls == ["offer", "upload", "finish"]
    assert sealed_to(lb, "dpo_t-2") == ["frankfurt/transport/1"]
    assert_delivered(lb, "dpo_t-2", DATA, summary)

    # A transfer sealed to v1 is half received when the grace period runs out.
    token = lb.passport("dpo_t-3")
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError, match="connection reset"):
        rig.send(token, DATA)
    with pytest.raises(KeyLifecycleError) as early:
        lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)
    until = lb.frankfurt.ring.find(Purpose.TRANSPORT, 1)
    assert until is not None and until.deactivated_at == rotated_at
    assert str(early.value).startswith(
        "frankfurt/transport/1 cannot be retired: its grace period (keys.grace.transport) runs "
        "600 s more, until "
    )
    assert str(early.value).endswith("; 1 transfer(s) offered to it are still being received")
    lb.now[0] += 600
    with pytest.raises(KeyLifecycleError) as busy:
        lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)
    assert str(busy.value) == (
        "frankfurt/transport/1 cannot be retired: 1 transfer(s) offered to it are still being "
        "received"
    )
    # The resume goes on under v1 (a known transfer is resumed, never re-opened) ...
    summary = rig.send(token, DATA)
    assert rig.last_calls == ["offer", "upload", "finish"]
    assert sealed_to(lb, "dpo_t-3") == ["frankfurt/transport/1"]
    assert_delivered(lb, "dpo_t-3", DATA, summary)
    # ... and then v1 can go; the next send learns v2 (the cached key set is stale by now).
    lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)
    summary = rig.send(lb.passport("dpo_t-4"), DATA)
    assert rig.last_calls == ["key_set", "offer", "upload", "finish"]
    assert sealed_to(lb, "dpo_t-4") == ["frankfurt/transport/2"]
    assert_delivered(lb, "dpo_t-4", DATA, summary)


def test_a_transfer_with_segments_sent_is_never_resealed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    lb = rig.lb
    token = lb.passport("dpo_t-1")
    lb.link.tamper = broken_after(2)
    with pytest.raises(PartnerError, match="connection reset"):
        rig.send(token, DATA)
    before = lb.lingang.ledger.outbound("dpo_t-1")
    assert before is not None
    tags = lb.lingang.ledger.segment_tags("dpo_t-1", 0, 1 << 32)
    assert tags  # segments left under this header
    # Frankfurt forgets the transfer (restored from a backup), rotates and retires v1: the
    # resumed offer is refused as stale -- but its segments went out sealed to v1.
    forget_inbound(lb, "dpo_t-1")
    grace(lb, 0)
    lb.frankfurt.ring.rotate(Purpose.TRANSPORT)
    lb.frankfurt.ring.retire(Purpose.TRANSPORT, 1)
    caplog.set_level(logging.INFO, logger="xbgw.sender")
    with pytest.raises(PartnerError) as caught:
        rig.send(token, DATA)
    assert str(caught.value) == STALE_V1
    assert rig.last_calls == ["offer"]
    assert lb.lingang.ledger.outbound("dpo_t-1") == before  # the same header, not sealed again
    assert lb.lingang.ledger.segment_tags("dpo_t-1", 0, 1 << 32) == tags
    assert RESEAL not in [r.getMessage() for r in caplog.records]


def test_a_refusal_that_only_looks_stale_is_not_resealed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the offer's FAILED_PRECONDITION ending in the words re-seals: the same words in
    another refusal (another status) are not taken for a stale key."""
    lb = rig.lb
    original = lb.link.offer

    def offer(partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        raise PartnerError(
            "partner frankfurt refused the offer (PERMISSION_DENIED): no; fetch a fresh key set",
            "PERMISSION_DENIED",
        )

    monkeypatch.setattr(lb.link, "offer", offer)
    token = lb.passport("dpo_t-1")
    with pytest.raises(PartnerError, match="PERMISSION_DENIED"):
        rig.send(token, DATA)
    assert rig.last_calls == ["key_set"]  # the fake offer records no call
    monkeypatch.setattr(lb.link, "offer", original)
    assert_delivered(lb, "dpo_t-1", DATA, rig.send(token, DATA))
    assert rig.last_calls == ["offer", "upload", "finish"]  # the header kept, not sealed again


# --- signing --------------------------------------------------------------------------------


def test_a_signing_rotation_is_followed_with_no_configuration_change(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    lb = rig.lb
    partner = lb.lingang.config.partner("frankfurt")
    pinned = partner.signing_public_key
    assert (
        pinned.public_numbers() == lb.frankfurt.keys.public_key(Purpose.SIGNING, 1).public_numbers()
    )
    old = rig.send(lb.passport("dpo_t-1"), DATA)
    assert old.signed_by == old.receipt.kid == "frankfurt/signing/1"
    assert learnt(lb)[0] == "frankfurt/signing/1 active (config)"

    caplog.set_level(logging.INFO, logger="xbgw.keys")
    lb.frankfurt.ring.rotate(Purpose.SIGNING)
    new = rig.send(lb.passport("dpo_t-2"), DATA)
    # The receipt names a version lingang had not learnt: one fetch of the key set, signed by
    # frankfurt/signing/2 and endorsed by frankfurt/signing/1, the key lingang pins.
    assert rig.last_calls == ["offer", "upload", "finish", "key_set"]
    assert new.signed_by == new.receipt.kid == "frankfurt/signing/2"
    assert_delivered(lb, "dpo_t-2", DATA, new)
    assert learnt(lb) == [
        "frankfurt/signing/1 verify-only (config)",
        "frankfurt/signing/2 active (key set v1)",
        "frankfurt/transport/1 active (key set v1)",
    ]
    pin = history(lb).pinned("frankfurt")
    assert pin is not None and str(pin.ref) == "frankfurt/signing/2"
    assert [r.getMessage() for r in caplog.records if r.name == "xbgw.keys"] == [
        "key rotated: frankfurt/signing/2 (replaces v1)",  # frankfurt's own ring
        "partner signing key followed: frankfurt/signing/2 (endorsed by frankfurt/signing/1)",
    ]
    assert lb.lingang.config.partner("frankfurt").signing_public_key is pinned

    # The old receipt still verifies, from the history.
    ref1 = KeyRef("frankfurt", Purpose.SIGNING, 1)
    assert history(lb).verify(partner, old.receipt, "receipt") == ref1

    # Frankfurt retires signing v1; lingang learns it at its next fetch (the cache ran out),
    # from a key set signed by v2 alone.
    grace(lb, 0)
    lb.frankfurt.ring.retire(Purpose.SIGNING, 1)
    lb.now[0] += REFRESH
    third = rig.send(lb.passport("dpo_t-3"), DATA)
    assert rig.last_calls == ["key_set", "offer", "upload", "finish"]
    assert third.signed_by == "frankfurt/signing/2"
    assert learnt(lb)[:2] == [
        "frankfurt/signing/1 retired (config)",
        "frankfurt/signing/2 active (key set v1)",
    ]
    assert history(lb).verify(partner, old.receipt, "receipt") == ref1
    stored = lb.lingang.ledger.outbound("dpo_t-1")
    assert stored is not None and stored.receipt == old.receipt
    # A resend of dpo_t-1's passport is still refused as delivered (its receipt stands).
    with pytest.raises(PassportReplayError, match="transfer dpo_t-1 was already delivered"):
        rig.send(lb.passport("dpo_t-1"), DATA)


def test_a_receipt_that_fails_under_its_key_fetches_the_key_set_once_before_giving_up(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receipt path: a receipt whose signature does not verify under the version it names
    makes one fetch; the transfer stays sending (frankfurt committed it) and resumes."""
    lb = rig.lb
    rig.send(lb.passport("dpo_t-1"), DATA)
    original = lb.link.finish

    def finish(partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        receipt = original(partner, transfer_id, manifest).receipt  # frankfurt commits, signs
        return FinishResult(replace(receipt, signature=bytes(reversed(receipt.signature))))

    monkeypatch.setattr(lb.link, "finish", finish)
    token = lb.passport("dpo_t-2")
    with pytest.raises(SignatureError) as caught:
        rig.send(token, DATA)
    assert str(caught.value) == (
        "receipt signature does not verify under the pinned key of frankfurt "
        "(frankfurt/signing/1, pinned in gateway.yaml); frankfurt may have committed transfer "
        "dpo_t-2: once its key is trusted, send again to collect the receipt"
    )
    assert rig.last_calls == ["offer", "upload", "finish", "key_set"]
    row = lb.lingang.ledger.outbound("dpo_t-2")
    assert row is not None and row.state is TransferState.SENDING
    monkeypatch.setattr(lb.link, "finish", original)
    summary = rig.send(token, DATA)
    assert rig.last_calls == ["offer", "finish"]  # committed there: the manifest alone
    assert_delivered(lb, "dpo_t-2", DATA, summary)


def share_partner_keys(lb: Loopback, side: Side) -> PartnerKeys:
    """Wire ``side`` as the daemon does: one PartnerKeys shared by its sender and receiver,
    fetching key sets through the link."""
    clock = lambda: lb.now[0]  # noqa: E731
    keys = PartnerKeys(side.config, side.ledger, lb.link.key_set, clock)
    side.sender = Sender(
        side.config, side.keys, side.ring, side.ledger, lb.link, clock=clock, partner_keys=keys
    )
    side.receiver = Receiver(
        side.config, side.keys, side.ring, side.ledger, side.spool, clock=clock, partner_keys=keys
    )
    peer = "lingang" if side.id == "frankfurt" else "frankfurt"
    lb.link.receivers[side.id] = (side.receiver, side.config.partner(peer))
    return keys


def test_the_receiver_follows_the_senders_signing_rotation_on_its_manifest(rig: Rig) -> None:
    lb = rig.lb
    share_partner_keys(lb, lb.frankfurt)
    rig.send(lb.passport("dpo_t-1"), DATA)
    assert learnt(lb, "lingang", lb.frankfurt) == ["lingang/signing/1 active (config)"]
    lb.lingang.ring.rotate(Purpose.SIGNING)
    summary = rig.send(lb.passport("dpo_t-2"), DATA)
    # Frankfurt fetched lingang's key set while it checked the manifest.
    assert rig.last_calls == ["offer", "upload", "finish", "key_set"]
    assert_delivered(lb, "dpo_t-2", DATA, summary)
    assert learnt(lb, "lingang", lb.frankfurt) == [
        "lingang/signing/1 verify-only (config)",
        "lingang/signing/2 active (key set v1)",
        "lingang/transport/1 active (key set v1)",
    ]

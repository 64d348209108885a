"""Refusals, in process: every data-path refusal, its status, its reason, and what is left.

Two ways in: the real lingang ``Sender`` (``tests.loopback``; a partner's refusal reaches it
as the ``PartnerError`` the gRPC link would give, status name and reason attached), and a
sender played by hand against frankfurt's ``Receiver`` (``Hand``: a header sealed here,
segments encrypted here, manifests signed with lingang's key or another), which can send
exactly the wrong thing. Each case checks the error class or status name and a fragment of
the reason, and what is left: the ledger row and resume point, the spool files, an inbox
with nothing partial in it, and for the refusals a sender can fix by resuming, the data then
fetched byte-identical. The status a servicer maps an error to, and its log line, are the
servicer's: they stay in tests/system.

What each case replaces in tests/system/test_refusals.py:

* ``test_hand_driven_transfer_is_accepted`` -- ``test_hand_driven_transfer_is_accepted``.
* ``test_forged_passport`` -- ``test_forged_passport_is_refused``.
* ``test_expired_passport`` -- ``test_expired_passport_is_refused`` (and
  ``test_passport_expiring_mid_transfer_stops_the_resume``).
* ``test_replayed_passport`` -- ``test_replay_of_a_committed_passport_is_refused_by_the_receiver``.
* ``test_misaddressed_passport`` -- ``test_misaddressed_passport_is_refused``.
* ``test_sender_is_not_the_passports_sender`` -- ``test_passport_for_another_sender``.
* ``test_segment_out_of_order``, ``test_duplicated_segment``, ``test_segment_after_the_final_one``,
  ``test_bit_flipped_segment`` -- ``test_stream_fault_keeps_what_verified`` (reorder,
  duplicate, trailing, flip-body; also drop, flip-tag, forged final flag, ...).
* ``test_stream_longer_than_the_passport_allows`` --
  ``test_byte_limit_exceeded_in_stream_refuses_for_good``.
* ``test_manifest_digest_mismatch`` -- ``test_manifest_mismatch_refuses_for_good`` (every field).
* ``test_manifest_not_signed_by_the_sender`` -- ``test_manifest_not_signed_by_the_sender``.
* ``test_unknown_key_version`` -- ``test_unknown_key_version_spends_nothing``.
* Not replaced (need TLS or gRPC itself): ``test_no_client_certificate``,
  ``test_certificate_from_an_unknown_ca``, ``test_certificate_of_no_partner``,
  ``test_oversized_message``.

And in tests/system/test_resume.py: ``test_delivered_passport_is_refused_by_the_sender`` --
``test_replay_of_a_delivered_passport_is_refused_by_the_sender``;
``test_spent_passport_is_refused_by_the_receiver`` --
``test_replay_of_a_committed_passport_is_refused_by_the_receiver``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.config import PartnerConfig
from gateway.documents import (
    KeySet,
    Manifest,
    open_manifest,
    open_receipt,
    sign_key_set,
    sign_manifest,
)
from gateway.envelope import (
    Header,
    StreamContext,
    StreamEncryptor,
    cut_segments,
    rewrap_for_storage,
    seal_header,
)
from gateway.errors import (
    ByteLimitError,
    ManifestError,
    NoUsableWrappedKeyError,
    OfferMismatchError,
    PartnerError,
    PassportAudienceError,
    PassportExpiredError,
    PassportReplayError,
    PassportSignatureError,
    PeerNotAuthorizedError,
    SignatureError,
    TrailingDataError,
    TransferConflictError,
    UnknownTransferError,
    XbgwError,
)
from gateway.keys import KeyRef, Purpose
from gateway.passport import passport_digest
from gateway.signed import Signed
from gateway.transfer import (
    FinishResult,
    OfferResult,
    SegmentIn,
    TransferState,
    UploadResult,
    unreachable,
)
from tests.fakes import SoftwareHsm
from tests.loopback import SEGMENT, Loopback, flip, make_loopback, rewrite
from tests.loopback_rig import (
    SEGMENT_LEN,
    SHORT_FINAL,
    Rig,
    assert_delivered,
    assert_held,
    assert_not_visible,
    assert_partner_error,
    broken_after,
    count_segments,
    record_uploads,
)

ONE_HOUR = 3600


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    lb = make_loopback(tmp_path)
    made = Rig(lb)
    record_uploads(made, monkeypatch)
    try:
        yield made
    finally:
        lb.close()


# -- a sender played by hand -----------------------------------------------------------------


def peer_of(lb: Loopback, partner_id: str = "lingang") -> PartnerConfig:
    """Frankfurt's view of lingang, or of a third partner made from it (same keys, other id)."""
    lingang = lb.frankfurt.config.partner("lingang")
    if partner_id == "lingang":
        return lingang
    return replace(lingang, id=partner_id, identity=f"{partner_id}.example")


def seal(
    lb: Loopback,
    token: str,
    jti: str,
    *,
    sender: str = "lingang",
    receiver: str = "frankfurt",
    digest: bytes | None = None,
    version: int = 1,
) -> tuple[Header, bytes]:
    """A header for ``token`` wrapped to frankfurt's transport key (``version`` claimed)."""
    context = StreamContext(jti, sender, receiver, digest or passport_digest(token))
    return seal_header(
        context,
        KeyRef(receiver, Purpose.TRANSPORT, version),
        lb.frankfurt.keys.public_key(Purpose.TRANSPORT, 1),
        segment_size=SEGMENT,
    )


@dataclass
class Hand:
    """One transfer driven by hand against frankfurt's receiver as ``peer``."""

    lb: Loopback
    token: str
    header: Header
    data_key: bytes
    peer: PartnerConfig

    @property
    def transfer_id(self) -> str:
        return self.header.context.transfer_id

    def offer(self) -> OfferResult:
        return self.lb.frankfurt.receiver.offer(self.peer, self.token, self.header.encode())

    def segments(self, data: bytes) -> list[SegmentIn]:
        encryptor = StreamEncryptor(self.header, self.data_key)
        return [
            SegmentIn(self.transfer_id, i, final, encryptor.encrypt_segment(i, plain, final))
            for i, final, plain in cut_segments([data], SEGMENT)
        ]

    def upload(self, segments: list[SegmentIn]) -> UploadResult:
        return self.lb.frankfurt.receiver.upload(self.peer, segments)

    def manifest(self, data: bytes) -> Manifest:
        return Manifest(
            transfer_id=self.transfer_id,
            sender="lingang",
            receiver="frankfurt",
            header_core_digest=self.header.core_digest(),
            passport_digest=passport_digest(self.token),
            plaintext_sha256=hashlib.sha256(data).digest(),
            plaintext_size=len(data),
            segment_count=count_segments(len(data)),
        )

    def finish(self, manifest: Signed) -> Signed:
        return self.lb.frankfurt.receiver.finish(self.peer, self.transfer_id, manifest).receipt


def hand(lb: Loopback, jti: str) -> Hand:
    """A passport for ``jti``, a header for it, offered by lingang and accepted by frankfurt."""
    token = lb.passport(jti)
    header, data_key = seal(lb, token, jti)
    made = Hand(lb, token, header, data_key, peer_of(lb))
    accepted = made.offer()
    assert (accepted.transfer_id, accepted.next_segment, accepted.resumed) == (jti, 0, False)
    return made


def lingang_signs(lb: Loopback, manifest: Manifest) -> Signed:
    return sign_manifest(lb.lingang.keys, KeyRef("lingang", Purpose.SIGNING, 1), manifest)


# -- checks ----------------------------------------------------------------------------------


def assert_error(error: BaseException, kind: type[XbgwError], status: str, *words: str) -> None:
    assert isinstance(error, kind), repr(error)
    assert error.grpc_status == status, f"{error.grpc_status}: {error}"
    for word in words:
        assert word in str(error), f"{word!r} not in {str(error)!r}"


def assert_not_recorded(lb: Loopback, transfer_id: str) -> None:
    """No trace at frankfurt: no row (NOT_FOUND to its sender), no spool file, nothing listed."""
    assert lb.frankfurt.ledger.inbound(transfer_id) is None
    with pytest.raises(UnknownTransferError):
        lb.frankfurt.receiver.status(peer_of(lb), transfer_id)
    assert not lb.frankfurt.spool.partial_path(transfer_id).exists()
    assert_not_visible(lb, transfer_id)


def assert_nothing_spent(rig: Rig, transfer_id: str) -> None:
    """The sender refused before the offer: no partner call, no row on either side."""
    assert rig.last_calls == []
    assert rig.lb.lingang.ledger.outbound(transfer_id) is None
    assert_not_recorded(rig.lb, transfer_id)


def assert_refused_for_good(lb: Loopback, transfer_id: str, reason: str) -> None:
    """Over: the reason kept, no partial data, nothing committed, the passport spent."""
    row = lb.frankfurt.ledger.inbound(transfer_id)
    assert row is not None and row.state is TransferState.REFUSED
    assert row.refusal is not None and reason in row.refusal, row.refusal
    assert not lb.frankfurt.spool.partial_path(transfer_id).exists()
    assert_not_visible(lb, transfer_id)
    status = lb.frankfurt.receiver.status(peer_of(lb), transfer_id)
    assert (status.state, status.receipt) == (TransferState.REFUSED, None)
    header, _key = seal(lb, row.passport, transfer_id)  # the passport again, a fresh header
    with pytest.raises(PassportReplayError) as again:
        lb.frankfurt.receiver.offer(peer_of(lb), row.passport, header.encode())
    assert_error(again.value, PassportReplayError, "ALREADY_EXISTS", "already used", "refused")


def held_back_manifest(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, token: str, data: bytes
) -> Signed:
    """Send everything but stop the manifest on the way: frankfurt holds the whole upload and
    the sender's real signed manifest is returned (a misbehaving sender's starting point)."""
    lb = rig.lb
    original = lb.link.finish
    captured: list[Signed] = []

    def finish(partner: PartnerConfig, transfer_id: str, manifest: Signed) -> Signed:
        captured.append(manifest)
        raise unreachable(partner.id, "finish", "held back by the test")

    monkeypatch.setattr(lb.link, "finish", finish)
    with pytest.raises(PartnerError, match="held back by the test"):
        rig.send(token, data)
    monkeypatch.setattr(lb.link, "finish", original)
    assert len(captured) == 1
    return captured[0]


def delete_outbound(lb: Loopback, transfer_id: str) -> None:
    """Lingang forgets a transfer (an old backup restored): its row and segment tags go."""
    path = lb.lingang.config.state_dir / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db, db:
        deleted = db.execute("DELETE FROM outbound WHERE transfer_id = ?", (transfer_id,))
        assert deleted.rowcount == 1
        db.execute("DELETE FROM outbound_segments WHERE transfer_id = ?", (transfer_id,))


# -- the control -----------------------------------------------------------------------------


def test_hand_driven_transfer_is_accepted(rig: Rig) -> None:
    """The hand-driven sender below is right when it means to be: a refusal is the answer to
    the one thing a test breaks."""
    lb = rig.lb
    transfer = hand(lb, "dpo_hand-ok")
    data = os.urandom(2 * SEGMENT + 23)
    uploaded = transfer.upload(transfer.segments(data))
    assert (uploaded.next_segment, uploaded.received_bytes, uploaded.final_received) == (
        3,
        len(data),
        True,
    )
    signed = lingang_signs(lb, transfer.manifest(data))
    receipt_blob = transfer.finish(signed)
    frankfurt_key = lb.lingang.config.partner("frankfurt").signing_public_key
    receipt, kid = open_receipt(receipt_blob, frankfurt_key, "frankfurt")
    assert str(kid) == "frankfurt/signing/1"
    assert receipt.confirms(transfer.manifest(data), signed.digest)
    assert [r.transfer_id for r in lb.frankfurt.ledger.committed_inbound()] == ["dpo_hand-ok"]
    assert lb.frankfurt.spool.committed_path("dpo_hand-ok").exists()
    assert not lb.frankfurt.spool.partial_path("dpo_hand-ok").exists()
    assert lb.fetch("dpo_hand-ok") == data
    assert transfer.finish(signed) == receipt_blob  # Finish again: the same receipt


def test_empty_transfer_end_to_end(rig: Rig) -> None:
    """Zero bytes: one empty final segment 0, committed, fetched empty; resumable too."""
    lb = rig.lb
    lb.link.no_deliver.add("frankfurt")  # the three calls (Deliver: test_loopback_oneshot)
    summary = rig.send(lb.passport("dpo_empty"), b"")
    assert rig.last_uploaded == [0]
    assert [len(s.ciphertext) for s in rig.uploads[-1]] == [16]
    assert_delivered(lb, "dpo_empty", b"", summary)

    token = lb.passport("dpo_empty-broken")
    lb.link.tamper = broken_after(0)
    with pytest.raises(PartnerError):
        rig.send(token, b"")
    assert_held(lb, "dpo_empty-broken", [])
    summary = rig.send(token, b"")
    assert (rig.last_held, rig.last_uploaded) == (0, [0])
    assert_delivered(lb, "dpo_empty-broken", b"", summary)


# -- the passport ----------------------------------------------------------------------------


def test_forged_passport_is_refused(rig: Rig) -> None:
    """Signed by a key that is not the issuer's, under the issuer's key id."""
    lb = rig.lb
    issuer, lb.issuer = lb.issuer, SoftwareHsm()
    token = lb.passport("dpo_forged")
    lb.issuer = issuer
    words = ("passport signature does not verify with key dpo/signing/1",)
    with pytest.raises(PassportSignatureError) as local:
        rig.send(token, b"data")
    assert_error(local.value, PassportSignatureError, "PERMISSION_DENIED", *words)
    assert_nothing_spent(rig, "dpo_forged")

    header, _key = seal(lb, token, "dpo_forged")
    with pytest.raises(PassportSignatureError) as remote:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(remote.value, PassportSignatureError, "PERMISSION_DENIED", *words)
    assert_not_recorded(lb, "dpo_forged")


def test_expired_passport_is_refused(rig: Rig) -> None:
    lb = rig.lb
    token = lb.passport("dpo_late", ttl=ONE_HOUR)
    expires = int(lb.now[0]) + ONE_HOUR
    lb.now[0] += ONE_HOUR + lb.frankfurt.config.limits.passport_leeway_seconds
    words = (f"passport dpo_late expired at {expires}",)
    with pytest.raises(PassportExpiredError) as local:
        rig.send(token, b"data")
    assert_error(local.value, PassportExpiredError, "PERMISSION_DENIED", *words)
    assert_nothing_spent(rig, "dpo_late")

    header, _key = seal(lb, token, "dpo_late")
    with pytest.raises(PassportExpiredError) as remote:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(remote.value, PassportExpiredError, "PERMISSION_DENIED", *words)
    assert_not_recorded(lb, "dpo_late")


def test_passport_expiring_mid_transfer_stops_the_resume(rig: Rig) -> None:
    """A break, then the passport runs out: both sides refuse the resume (it is checked at
    every offer); frankfurt keeps the partial transfer as it was, never committed."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_expiring", ttl=ONE_HOUR)
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    lb.now[0] += ONE_HOUR + lb.frankfurt.config.limits.passport_leeway_seconds

    with pytest.raises(PassportExpiredError, match="expired"):
        rig.send(token, data)
    assert rig.last_calls == []
    outbound = lb.lingang.ledger.outbound("dpo_expiring")
    assert outbound is not None
    with pytest.raises(PassportExpiredError, match="expired"):
        lb.frankfurt.receiver.offer(peer_of(lb), token, outbound.sent_header)
    assert_held(lb, "dpo_expiring", rig.sent(0)[:3])


def test_misaddressed_passport_is_refused(rig: Rig) -> None:
    """The passport's audience is another gateway; the header is sealed to frankfurt."""
    lb = rig.lb
    token = lb.passport("dpo_misaddressed", to="paris")
    words = ("passport dpo_misaddressed is for 'paris', not for 'frankfurt'",)
    with pytest.raises(PassportAudienceError) as local:
        rig.send(token, b"data")
    assert_error(local.value, PassportAudienceError, "PERMISSION_DENIED", *words)
    assert_nothing_spent(rig, "dpo_misaddressed")

    header, _key = seal(lb, token, "dpo_misaddressed")
    with pytest.raises(PassportAudienceError) as remote:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(remote.value, PassportAudienceError, "PERMISSION_DENIED", *words)
    assert_not_recorded(lb, "dpo_misaddressed")


def test_passport_for_another_sender(rig: Rig) -> None:
    """The passport authorises paris to send; lingang's sender and frankfurt both refuse."""
    lb = rig.lb
    token = lb.passport("dpo_not-lingangs", sender="paris")
    with pytest.raises(PeerNotAuthorizedError) as local:
        rig.send(token, b"data")
    assert_error(
        local.value,
        PeerNotAuthorizedError,
        "PERMISSION_DENIED",
        "is for sender 'paris', not this gateway (lingang)",
    )
    assert_nothing_spent(rig, "dpo_not-lingangs")

    header, _key = seal(lb, token, "dpo_not-lingangs")
    with pytest.raises(PeerNotAuthorizedError) as remote:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(
        remote.value,
        PeerNotAuthorizedError,
        "PERMISSION_DENIED",
        "names sender 'paris', but the connection is from partner 'lingang'",
    )
    assert_not_recorded(lb, "dpo_not-lingangs")


# -- the envelope header at the offer --------------------------------------------------------


def test_unknown_key_version_spends_nothing(rig: Rig) -> None:
    """The data key is wrapped to frankfurt/transport/99, which frankfurt does not hold:
    nothing recorded, the passport not spent -- the right header is accepted afterwards."""
    lb = rig.lb
    token = lb.passport("dpo_key-version")
    header, _key = seal(lb, token, "dpo_key-version", version=99)
    with pytest.raises(NoUsableWrappedKeyError) as refused:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(
        refused.value,
        NoUsableWrappedKeyError,
        "FAILED_PRECONDITION",
        "frankfurt/transport/99",
        "versions in service: [1]",
        "fetch a fresh key set",
    )
    assert_not_recorded(lb, "dpo_key-version")

    summary = rig.send(token, b"now with the current key")
    assert_delivered(lb, "dpo_key-version", b"now with the current key", summary)


def test_header_wrapped_only_to_our_storage_key_is_refused(rig: Rig) -> None:
    """A partner's header may use frankfurt's transport keys only, never its storage key."""
    lb = rig.lb
    token = lb.passport("dpo_storage-wrap")
    header, data_key = seal(lb, token, "dpo_storage-wrap")
    storage = KeyRef("frankfurt", Purpose.STORAGE, 1)
    stored = rewrap_for_storage(header, data_key, storage, lb.frankfurt.keys)
    with pytest.raises(NoUsableWrappedKeyError) as refused:
        lb.frankfurt.receiver.offer(peer_of(lb), token, stored.encode())
    assert_error(
        refused.value, NoUsableWrappedKeyError, "FAILED_PRECONDITION", "frankfurt/storage/1"
    )
    assert_not_recorded(lb, "dpo_storage-wrap")


@pytest.mark.parametrize(
    ("jti", "sender", "receiver", "digest", "words"),
    [
        pytest.param(
            "someone-else",
            "lingang",
            "frankfurt",
            None,
            "header transfer id 'someone-else' is not the passport's jti 'dpo_context'",
            id="transfer-id",
        ),
        pytest.param(
            "dpo_context",
            "paris",
            "frankfurt",
            None,
            "header sender 'paris' is not 'lingang'",
            id="sender",
        ),
        pytest.param(
            "dpo_context",
            "lingang",
            "paris",
            None,
            "header receiver 'paris' is not 'frankfurt'",
            id="receiver",
        ),
        pytest.param(
            "dpo_context",
            "lingang",
            "frankfurt",
            hashlib.sha256(b"another passport").digest(),
            "header passport digest does not match the passport offered",
            id="passport-digest",
        ),
    ],
)
def test_header_not_matching_the_passport(
    rig: Rig, jti: str, sender: str, receiver: str, digest: bytes | None, words: str
) -> None:
    """The header's context must be the passport's: refused before anything is stored."""
    lb = rig.lb
    token = lb.passport("dpo_context")
    header, _key = seal(lb, token, jti, sender=sender, receiver=receiver, digest=digest)
    with pytest.raises(OfferMismatchError) as refused:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(refused.value, OfferMismatchError, "INVALID_ARGUMENT", words)
    assert_not_recorded(lb, "dpo_context")


# -- single use ------------------------------------------------------------------------------


def test_replay_of_a_delivered_passport_is_refused_by_the_sender(rig: Rig) -> None:
    """Lingang's own record says delivered: refused before any partner call; inbox unchanged."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_replay-sender")
    summary = rig.send(token, data)
    committed = lb.frankfurt.spool.committed_path("dpo_replay-sender").read_bytes()

    with pytest.raises(PassportReplayError) as again:
        rig.send(token, data)
    assert_error(
        again.value, PassportReplayError, "ALREADY_EXISTS", "already delivered to frankfurt"
    )
    assert rig.last_calls == []
    assert lb.frankfurt.spool.committed_path("dpo_replay-sender").read_bytes() == committed
    assert_delivered(lb, "dpo_replay-sender", data, summary)


def test_replay_of_a_committed_passport_is_refused_by_the_receiver(rig: Rig) -> None:
    """Lingang lost its record (old backup), so it offers the passport again under a fresh
    header: frankfurt refuses it as spent; nothing partial appears, the inbox is unchanged."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_replay-receiver")
    summary = rig.send(token, data)
    committed = lb.frankfurt.spool.committed_path("dpo_replay-receiver").read_bytes()
    delete_outbound(lb, "dpo_replay-receiver")

    with pytest.raises(PartnerError) as again:
        rig.send(token, data)
    assert_partner_error(
        again.value,
        "ALREADY_EXISTS",
        "refused the offer",
        "passport dpo_replay-receiver was already used: the transfer was committed",
    )
    assert "upload" not in rig.last_calls and "finish" not in rig.last_calls
    assert not lb.frankfurt.spool.partial_path("dpo_replay-receiver").exists()
    assert lb.frankfurt.spool.committed_path("dpo_replay-receiver").read_bytes() == committed
    row = lb.frankfurt.ledger.inbound("dpo_replay-receiver")
    assert row is not None and row.receipt == summary.receipt
    assert [r.transfer_id for r in lb.frankfurt.ledger.committed_inbound()] == [
        "dpo_replay-receiver"
    ]
    assert lb.fetch("dpo_replay-receiver") == data


def test_replay_of_a_refused_passport(rig: Rig) -> None:
    """Refused for good stays refused: the same sender (same header) and a fresh header."""
    lb = rig.lb
    receiver, peer = lb.link.receivers["frankfurt"]
    lb.link.receivers["frankfurt"] = (receiver, replace(peer, max_transfer_bytes=100))
    token = lb.passport("dpo_replay-refused")
    data = os.urandom(SHORT_FINAL)
    with pytest.raises(PartnerError, match="RESOURCE_EXHAUSTED"):
        rig.send(token, data)
    lb.link.receivers["frankfurt"] = (receiver, peer)

    with pytest.raises(PartnerError) as again:
        rig.send(token, data)
    assert_partner_error(
        again.value,
        "ALREADY_EXISTS",
        "passport dpo_replay-refused was already used: the transfer was refused (transfer "
        "dpo_replay-refused exceeds its limit of 100 bytes",
    )
    assert rig.last_calls == ["offer"]
    assert_refused_for_good(lb, "dpo_replay-refused", "exceeds its limit of 100 bytes")


def test_same_passport_from_another_partner(rig: Rig) -> None:
    """Lingang's transfer is in progress. Paris offering lingang's passport is not lingang;
    a passport for paris with the same id finds it spent. Lingang's transfer is untouched."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_shared-id")
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    paris = peer_of(lb, "paris")

    header, _key = seal(lb, token, "dpo_shared-id", sender="paris")
    with pytest.raises(PeerNotAuthorizedError) as stolen:
        lb.frankfurt.receiver.offer(paris, token, header.encode())
    assert_error(
        stolen.value,
        PeerNotAuthorizedError,
        "PERMISSION_DENIED",
        "names sender 'lingang', but the connection is from partner 'paris'",
    )
    theirs = lb.passport("dpo_shared-id", sender="paris")
    header, _key = seal(lb, theirs, "dpo_shared-id", sender="paris")
    with pytest.raises(PassportReplayError) as spent:
        lb.frankfurt.receiver.offer(paris, theirs, header.encode())
    assert_error(
        spent.value,
        PassportReplayError,
        "ALREADY_EXISTS",
        "passport dpo_shared-id was already used",
    )
    assert_held(lb, "dpo_shared-id", rig.sent(0)[:3])

    summary = rig.send(token, data)
    assert rig.last_held == 3 * SEGMENT
    assert_delivered(lb, "dpo_shared-id", data, summary)


def test_different_header_for_a_transfer_in_progress(rig: Rig) -> None:
    """A resumed send must offer the same header: a fresh one (by hand, or from a sender that
    lost its record) is FAILED_PRECONDITION and changes nothing held."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_other-header")
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    before = lb.frankfurt.ledger.inbound("dpo_other-header")
    assert before is not None

    header, _key = seal(lb, token, "dpo_other-header")
    with pytest.raises(TransferConflictError) as by_hand:
        lb.frankfurt.receiver.offer(peer_of(lb), token, header.encode())
    assert_error(
        by_hand.value,
        TransferConflictError,
        "FAILED_PRECONDITION",
        "transfer dpo_other-header is in progress with a different envelope header",
    )
    outbound = lb.lingang.ledger.outbound("dpo_other-header")
    assert outbound is not None
    delete_outbound(lb, "dpo_other-header")
    with pytest.raises(PartnerError) as forgetful:
        rig.send(token, data)
    assert_partner_error(
        forgetful.value, "FAILED_PRECONDITION", "in progress with a different envelope header"
    )
    after = lb.frankfurt.ledger.inbound("dpo_other-header")
    assert after == before

    # The sender's record back (as it was), the original header resumes.
    path = lb.lingang.config.state_dir / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db, db:
        db.execute("DELETE FROM outbound WHERE transfer_id = ?", ("dpo_other-header",))
    restored = lb.lingang.ledger.create_outbound(
        transfer_id="dpo_other-header",
        partner="frankfurt",
        passport_digest=outbound.passport_digest,
        sent_header=outbound.sent_header,
        stored_header=outbound.stored_header,
    )
    assert restored.sent_header == outbound.sent_header
    summary = rig.send(token, data)
    assert rig.last_held == 3 * SEGMENT
    assert_delivered(lb, "dpo_other-header", data, summary)


# -- the segment stream ----------------------------------------------------------------------

Change = Callable[[list[SegmentIn]], list[SegmentIn]]


def _with(segments: list[SegmentIn], index: int, replacement: SegmentIn) -> list[SegmentIn]:
    return [*segments[:index], replacement, *segments[index + 1 :]]


def _relabel(
    segment: SegmentIn,
    *,
    transfer_id: str | None = None,
    index: int | None = None,
    final: bool | None = None,
    ciphertext: bytes | None = None,
) -> SegmentIn:
    return SegmentIn(
        segment.transfer_id if transfer_id is None else transfer_id,
        segment.index if index is None else index,
        segment.final if final is None else final,
        segment.ciphertext if ciphertext is None else ciphertext,
    )


STREAM_FAULTS = [
    pytest.param(
        lambda s: [s[0], s[2], s[1], *s[3:]],
        "OUT_OF_RANGE",
        "expected segment 1, got 2 (an earlier segment is missing or out of order)",
        1,
        id="reorder",
    ),
    pytest.param(
        lambda s: [*s[:2], *s[3:]],
        "OUT_OF_RANGE",
        "expected segment 2, got 3",
        2,
        id="drop",
    ),
    pytest.param(
        lambda s: [*s[:2], s[1], *s[2:]],
        "OUT_OF_RANGE",
        "expected segment 2, got 1 (a repeat or a replay)",
        2,
        id="duplicate",
    ),
    pytest.param(
        lambda s: _with(s, 2, flip(s[2], 8 * 10 + 3)),
        "DATA_LOSS",
        "segment 2 failed authentication",
        2,
        id="flip-body",
    ),
    pytest.param(
        lambda s: _with(s, 2, flip(s[2], 8 * (SEGMENT_LEN - 1))),
        "DATA_LOSS",
        "segment 2 failed authentication",
        2,
        id="flip-tag",
    ),
    pytest.param(
        lambda s: _with(s, 6, flip(s[6], 5)),
        "DATA_LOSS",
        "segment 6 (final) failed authentication",
        6,
        id="flip-final-segment",
    ),
    pytest.param(
        lambda s: [*s[:2], _relabel(s[2], final=True)],
        "DATA_LOSS",
        "segment 2 (final) failed authentication",
        2,
        id="forged-final-flag",
    ),
    pytest.param(
        lambda s: _with(s, 2, _relabel(s[2], ciphertext=os.urandom(SEGMENT_LEN))),
        "DATA_LOSS",
        "segment 2 failed authentication",
        2,
        id="foreign-ciphertext",
    ),
    pytest.param(
        lambda s: _with(s, 2, _relabel(s[2], ciphertext=s[2].ciphertext[:-1])),
        "INVALID_ARGUMENT",
        f"segment 2 has {SEGMENT_LEN - 1} bytes; a non-final segment has {SEGMENT_LEN}",
        2,
        id="cut-short",
    ),
    pytest.param(
        lambda s: _with(s, 2, _relabel(s[2], transfer_id="someone-elses")),
        "INVALID_ARGUMENT",
        "segment for 'someone-elses' inside the upload of 'dpo_stream-fault'",
        2,
        id="other-transfer-id",
    ),
    pytest.param(
        lambda s: [*s, _relabel(s[6], index=7)],
        "OUT_OF_RANGE",
        "segment 7 arrived after the final segment",
        7,
        id="trailing-after-final",
    ),
]


@pytest.mark.parametrize(("change", "status", "words", "kept"), STREAM_FAULTS)
def test_stream_fault_keeps_what_verified(
    rig: Rig, change: Change, status: str, words: str, kept: int
) -> None:
    """The link reorders, drops, repeats, flips, cuts, splices or extends the upload: refused
    at the first bad segment; the resume point stays before it and exactly the segments that
    verified are held; nothing is in the inbox. A resend delivers the data."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_stream-fault")
    lb.link.tamper = rewrite(change)
    with pytest.raises(PartnerError) as refused:
        rig.send(token, data)
    assert_partner_error(refused.value, status, "partner frankfurt refused the upload", words)
    assert rig.last_calls == ["key_set", "offer", "upload"]
    assert_held(lb, "dpo_stream-fault", rig.sent(0)[:kept])
    status_now = lb.frankfurt.receiver.status(peer_of(lb), "dpo_stream-fault")
    assert (status_now.state, status_now.next_segment) == (TransferState.RECEIVING, kept)
    assert status_now.receipt is None

    summary = rig.send(token, data)
    assert rig.last_held == min(kept * SEGMENT, len(data))
    assert rig.last_uploaded == list(range(kept, 7))
    assert_delivered(lb, "dpo_stream-fault", data, summary)


def test_truncated_stream_then_finish_says_incomplete(rig: Rig) -> None:
    """The upload ends cleanly without its final segment; the manifest is refused as
    incomplete (not for good), and a resend sends only what is missing."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_truncated")
    lb.link.tamper = rewrite(lambda s: s[:-1])
    with pytest.raises(PartnerError) as refused:
        rig.send(token, data)
    assert_partner_error(
        refused.value,
        "FAILED_PRECONDITION",
        "refused the manifest",
        "transfer dpo_truncated is incomplete: next segment is 6; resume the upload",
    )
    assert rig.last_calls == ["key_set", "offer", "upload", "finish"]
    assert_held(lb, "dpo_truncated", rig.sent(0)[:6])

    summary = rig.send(token, data)
    assert rig.last_uploaded == [6]
    assert_delivered(lb, "dpo_truncated", data, summary)


def test_empty_upload_and_upload_after_the_final_segment_are_refused(rig: Rig) -> None:
    lb = rig.lb
    transfer = hand(lb, "dpo_hand-upload")
    with pytest.raises(OfferMismatchError) as empty:
        transfer.upload([])
    assert_error(
        empty.value, OfferMismatchError, "INVALID_ARGUMENT", "must carry at least one segment"
    )
    data = os.urandom(2 * SEGMENT + 1)
    segments = transfer.segments(data)
    assert transfer.upload(segments).final_received
    for again in ([segments[-1]], [_relabel(segments[-1], index=3)]):
        with pytest.raises(TrailingDataError) as trailing:
            transfer.upload(again)
        assert_error(
            trailing.value,
            TrailingDataError,
            "OUT_OF_RANGE",
            "already received its final segment; send the manifest",
        )
    row = lb.frankfurt.ledger.inbound("dpo_hand-upload")
    assert row is not None and (row.next_segment, row.received_bytes) == (3, len(data))
    transfer.finish(lingang_signs(lb, transfer.manifest(data)))
    assert lb.fetch("dpo_hand-upload") == data


def test_second_writer_is_refused_while_a_stream_runs(rig: Rig) -> None:
    """While an upload streams, a second upload or a Finish of the same transfer is refused at
    once (FAILED_PRECONDITION, "dpo_busy"); the first stream is not disturbed."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    peer = peer_of(lb)
    refusals: list[XbgwError] = []

    def intrude(action: Callable[[], object]) -> None:
        try:
            action()
        except XbgwError as error:
            refusals.append(error)

    def meddle(segments: Iterator[SegmentIn]) -> Iterator[SegmentIn]:
        for segment in segments:
            if segment.index == 2:  # frankfurt is inside this upload, holding the transfer
                receiver = lb.frankfurt.receiver
                intrude(lambda: receiver.upload(peer, [segment]))  # noqa: B023
                # Signed for real: the signature is checked before the guard is taken.
                early = lingang_signs(
                    lb,
                    Manifest(
                        "dpo_busy", "lingang", "frankfurt", bytes(32), bytes(32), bytes(32), 0, 1
                    ),
                )
                intrude(lambda: receiver.finish(peer, "dpo_busy", early))  # noqa: B023
            yield segment

    lb.link.tamper = meddle
    summary = rig.send(lb.passport("dpo_busy"), data)
    assert [type(r) for r in refusals] == [TransferConflictError, TransferConflictError]
    assert_error(
        refusals[0], TransferConflictError, "FAILED_PRECONDITION", "busy on another stream"
    )
    assert "upload again shortly" in str(refusals[0])
    assert "finish again shortly" in str(refusals[1])
    assert_delivered(lb, "dpo_busy", data, summary)


# -- the manifest ----------------------------------------------------------------------------

MANIFEST_FIELDS = [
    pytest.param(
        lambda m: replace(m, transfer_id="someone-else"),
        "transfer id 'someone-else' (expected 'dpo_manifest-field')",
        id="transfer-id",
    ),
    pytest.param(
        lambda m: replace(m, sender="paris"), "sender 'paris' (expected 'lingang')", id="sender"
    ),
    pytest.param(
        lambda m: replace(m, receiver="paris"),
        "receiver 'paris' (expected 'frankfurt')",
        id="receiver",
    ),
    pytest.param(
        lambda m: replace(m, header_core_digest=hashlib.sha256(b"other").digest()),
        "header digest",
        id="header-digest",
    ),
    pytest.param(
        lambda m: replace(m, passport_digest=hashlib.sha256(b"other").digest()),
        "passport digest",
        id="passport-digest",
    ),
    pytest.param(
        lambda m: replace(m, plaintext_sha256=hashlib.sha256(b"other").digest()),
        "plaintext SHA-256",
        id="sha256",
    ),
    pytest.param(
        lambda m: replace(m, plaintext_size=m.plaintext_size + 1),
        f"size {SHORT_FINAL + 1} (received {SHORT_FINAL})",
        id="size",
    ),
    pytest.param(
        lambda m: replace(m, segment_count=m.segment_count + 1),
        "segment count 8 (received 7)",
        id="segment-count",
    ),
]


@pytest.mark.parametrize(("change", "words"), MANIFEST_FIELDS)
def test_manifest_mismatch_refuses_for_good(
    rig: Rig,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Manifest], Manifest],
    words: str,
) -> None:
    """A manifest signed by lingang's real key that disagrees with what arrived in one field:
    INVALID_ARGUMENT, refused for good, partial deleted, passport spent."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_manifest-field")
    real = held_back_manifest(rig, monkeypatch, token, data)
    assert_held(lb, "dpo_manifest-field", rig.sent(0))
    lingang_key = lb.frankfurt.config.partner("lingang").signing_public_key
    forged = lingang_signs(lb, change(open_manifest(real, lingang_key, "lingang")))

    with pytest.raises(ManifestError) as refused:
        lb.frankfurt.receiver.finish(peer_of(lb), "dpo_manifest-field", forged)
    assert_error(
        refused.value,
        ManifestError,
        "INVALID_ARGUMENT",
        "manifest disagrees with what arrived: " + words,
    )
    assert_refused_for_good(lb, "dpo_manifest-field", "manifest disagrees with what arrived")
    with pytest.raises(PartnerError) as again:
        rig.send(token, data)
    assert_partner_error(again.value, "ALREADY_EXISTS", "the transfer was refused (manifest")


@pytest.mark.parametrize(
    ("signer", "owner", "words"),
    [
        pytest.param(
            "another-key", "lingang", "does not verify under the pinned key of lingang", id="key"
        ),
        pytest.param(
            "lingang",
            "paris",
            "signed by paris/signing/1, expected a signing key of lingang",
            id="kid",
        ),
    ],
)
def test_manifest_not_signed_by_the_sender(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, signer: str, owner: str, words: str
) -> None:
    """A correct manifest under another key (or another key id): UNAUTHENTICATED and not
    final -- the transfer stays receiving and the real sender then finishes it."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_manifest-signer")
    real = held_back_manifest(rig, monkeypatch, token, data)
    keys = SoftwareHsm() if signer == "another-key" else lb.lingang.keys
    lingang_key = lb.frankfurt.config.partner("lingang").signing_public_key
    manifest = open_manifest(real, lingang_key, "lingang")
    forged = sign_manifest(keys, KeyRef(owner, Purpose.SIGNING, 1), manifest)

    with pytest.raises(SignatureError) as refused:
        lb.frankfurt.receiver.finish(peer_of(lb), "dpo_manifest-signer", forged)
    assert_error(refused.value, SignatureError, "UNAUTHENTICATED", words)
    assert_held(lb, "dpo_manifest-signer", rig.sent(0))

    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert_delivered(lb, "dpo_manifest-signer", data, summary)


def test_finish_with_another_manifest_after_commit(rig: Rig) -> None:
    """Once committed, a different (validly signed) manifest is refused; the commit stands."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_after-commit")
    summary = rig.send(token, data)
    outbound = lb.lingang.ledger.outbound("dpo_after-commit")
    assert outbound is not None
    manifest = Manifest(
        transfer_id="dpo_after-commit",
        sender="lingang",
        receiver="frankfurt",
        header_core_digest=Header.decode(outbound.sent_header).core_digest(),
        passport_digest=passport_digest(token),
        plaintext_sha256=hashlib.sha256(data).digest(),
        plaintext_size=len(data),
        segment_count=7,
    )
    same = lb.frankfurt.receiver.finish(
        peer_of(lb), "dpo_after-commit", lingang_signs(lb, manifest)
    )
    assert same.receipt == summary.receipt
    other = lingang_signs(lb, replace(manifest, plaintext_size=1))
    with pytest.raises(ManifestError) as refused:
        lb.frankfurt.receiver.finish(peer_of(lb), "dpo_after-commit", other)
    assert_error(
        refused.value,
        ManifestError,
        "INVALID_ARGUMENT",
        "transfer dpo_after-commit was committed with another manifest",
    )
    assert_delivered(lb, "dpo_after-commit", data, summary)


def test_sub_not_matching_the_data(rig: Rig) -> None:
    """The passport names another data set (``sub``). Lingang refuses before Finish, so
    nothing commits; a sender that sends Finish anyway -- with a manifest true to the data --
    is refused for good by frankfurt's own check."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    named = hashlib.sha256(b"the data set the DPO approved").hexdigest()
    token = lb.passport("dpo_sub-mismatch", sub=named)
    with pytest.raises(ManifestError) as local:
        rig.send(token, data)
    assert_error(
        local.value,
        ManifestError,
        "INVALID_ARGUMENT",
        "the data sent is not the data set passport dpo_sub-mismatch names",
        f"sub {named[:16]}...",
        "nothing was committed",
    )
    assert rig.last_calls == ["key_set", "offer", "upload"]
    assert_held(lb, "dpo_sub-mismatch", rig.sent(0))

    outbound = lb.lingang.ledger.outbound("dpo_sub-mismatch")
    assert outbound is not None
    truthful = Manifest(
        transfer_id="dpo_sub-mismatch",
        sender="lingang",
        receiver="frankfurt",
        header_core_digest=Header.decode(outbound.sent_header).core_digest(),
        passport_digest=passport_digest(token),
        plaintext_sha256=hashlib.sha256(data).digest(),
        plaintext_size=len(data),
        segment_count=7,
    )
    with pytest.raises(ManifestError) as remote:
        lb.frankfurt.receiver.finish(peer_of(lb), "dpo_sub-mismatch", lingang_signs(lb, truthful))
    assert_error(
        remote.value,
        ManifestError,
        "INVALID_ARGUMENT",
        "manifest disagrees with what arrived: data set SHA-256 is not the passport's sub",
    )
    assert_refused_for_good(lb, "dpo_sub-mismatch", "data set SHA-256 is not the passport's sub")

    summary = rig.send(lb.passport("dpo_sub-match", sub=hashlib.sha256(data).hexdigest()), data)
    assert_delivered(lb, "dpo_sub-match", data, summary)


# -- the byte limit --------------------------------------------------------------------------


def test_declared_size_over_the_limit_is_refused_before_the_offer(rig: Rig) -> None:
    """Nothing spent: no partner call, no row; the same passport then carries data that fits
    (exactly at the limit)."""
    lb = rig.lb
    token = lb.passport("dpo_too-big", byte_limit=400)
    with pytest.raises(ByteLimitError) as refused:
        rig.send(token, os.urandom(401))
    assert_error(
        refused.value,
        ByteLimitError,
        "RESOURCE_EXHAUSTED",
        "the data is 401 bytes; passport dpo_too-big allows 400",
    )
    assert_nothing_spent(rig, "dpo_too-big")

    data = os.urandom(400)
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_too-big", data, summary)


@pytest.mark.parametrize("how", ["partner-limit", "understated-size"])
def test_byte_limit_exceeded_in_stream_refuses_for_good(rig: Rig, how: str) -> None:
    """The stream grows past the limit frankfurt applies (its own partner limit, or the
    passport's when the size was not declared ahead): RESOURCE_EXHAUSTED in-stream, refused for
    good, partial deleted, passport spent."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    if how == "partner-limit":
        receiver, peer = lb.link.receivers["frankfurt"]
        lb.link.receivers["frankfurt"] = (receiver, replace(peer, max_transfer_bytes=200))
        token, limit = lb.passport("dpo_over-limit"), 200
    else:
        token, limit = lb.passport("dpo_over-limit", byte_limit=300), 300
    with pytest.raises(PartnerError) as refused:
        if how == "partner-limit":
            rig.send(token, data)
        else:  # the size not declared (a local stream of unknown length): all 401 go
            rig.send_chunks(token, iter([data]), None)
    assert_partner_error(
        refused.value,
        "RESOURCE_EXHAUSTED",
        "refused the upload",
        f"transfer dpo_over-limit exceeds its limit of {limit} bytes",
    )
    assert_refused_for_good(lb, "dpo_over-limit", f"exceeds its limit of {limit} bytes")


# -- unknown transfers -----------------------------------------------------------------------


def _ask(lb: Loopback, peer: PartnerConfig, call: str, transfer_id: str) -> UnknownTransferError:
    receiver = lb.frankfurt.receiver
    with pytest.raises(UnknownTransferError) as caught:
        if call == "upload":
            receiver.upload(peer, [SegmentIn(transfer_id, 0, True, bytes(16))])
        elif call == "finish":
            receiver.finish(peer, transfer_id, Signed(b"", b"", f"{peer.id}/signing/1"))
        else:
            receiver.status(peer, transfer_id)
    return caught.value


@pytest.mark.parametrize("call", ["upload", "finish", "status"])
def test_unknown_transfer_is_not_found(rig: Rig, call: str) -> None:
    lb = rig.lb
    error = _ask(lb, peer_of(lb), call, "nobody")
    hint = "; offer it first" if call == "upload" else ""
    assert_error(
        error, UnknownTransferError, "NOT_FOUND", f"no transfer 'nobody' from lingang{hint}"
    )
    assert lb.frankfurt.ledger.inbound("nobody") is None


@pytest.mark.parametrize("call", ["upload", "finish", "status"])
@pytest.mark.parametrize("stage", ["in-progress", "committed"])
def test_transfer_of_lingang_is_not_found_for_another_partner(
    rig: Rig, call: str, stage: str
) -> None:
    """Paris asking about lingang's transfer gets the very answer it gets for no transfer at
    all (no oracle for others' ids), and lingang's transfer is untouched."""
    lb = rig.lb
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_lingangs")
    if stage == "in-progress":
        lb.link.tamper = broken_after(3)
        with pytest.raises(PartnerError):
            rig.send(token, data)
    else:
        summary = rig.send(token, data)
    paris = peer_of(lb, "paris")

    theirs = _ask(lb, paris, call, "dpo_lingangs")
    none = _ask(lb, paris, call, "nobody")
    assert_error(theirs, UnknownTransferError, "NOT_FOUND", "no transfer 'dpo_lingangs' from paris")
    assert str(theirs).replace("dpo_lingangs", "ID") == str(none).replace("nobody", "ID")

    if stage == "in-progress":
        assert_held(lb, "dpo_lingangs", rig.sent(0)[:3])
        summary = rig.send(token, data)
    assert_delivered(lb, "dpo_lingangs", data, summary)


# -- signed documents on the way back -------------------------------------------------------


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("tamper", "error", "words"),
    [
        pytest.param(
            "body",
            SignatureError,
            "receipt signature does not verify under the pinned key of frankfurt",
            id="body",
        ),
        pytest.param(
            "signature", SignatureError, "receipt signature does not verify", id="signature"
        ),
        pytest.param("kid", SignatureError, "receipt is signed by paris/signing/1", id="kid"),
        pytest.param(
            "other-transfer",
            ManifestError,
            "receipt from frankfurt does not match what was sent",
            id="another-transfers-receipt",
        ),
    ],
)
def test_tampered_receipt_is_not_recorded_as_delivered(
    rig: Rig,
    monkeypatch: pytest.MonkeyPatch,
    tamper: str,
    error: type[XbgwError],
    words: str,
) -> None:
    """Frankfurt committed; the receipt is changed on the way back. Lingang refuses it and
    does not record the transfer delivered; a resend fetches the true receipt."""
    lb = rig.lb
    other = rig.send(lb.passport("dpo_earlier"), b"an earlier transfer").receipt
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_receipt")
    original = lb.link.finish

    def finish(partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        receipt = original(partner, transfer_id, manifest).receipt
        if tamper == "body":
            return FinishResult(replace(receipt, body=_flip_byte(receipt.body, 3)))
        if tamper == "signature":
            return FinishResult(replace(receipt, signature=_flip_byte(receipt.signature, 40)))
        if tamper == "kid":
            return FinishResult(replace(receipt, kid="paris/signing/1"))
        return FinishResult(other)

    monkeypatch.setattr(lb.link, "finish", finish)
    with pytest.raises(error) as refused:
        rig.send(token, data)
    assert words in str(refused.value)
    outbound = lb.lingang.ledger.outbound("dpo_receipt")
    assert outbound is not None
    assert (outbound.state, outbound.receipt) == (TransferState.SENDING, None)
    row = lb.frankfurt.ledger.inbound("dpo_receipt")
    assert row is not None and row.state is TransferState.COMMITTED

    monkeypatch.setattr(lb.link, "finish", original)
    summary = rig.send(token, data)
    assert rig.last_calls == ["offer", "finish"]
    assert summary.receipt == row.receipt
    assert_delivered(lb, "dpo_receipt", data, summary)


@pytest.mark.parametrize("forgery", ["wrong-key", "other-gateway"])
def test_key_set_not_signed_by_the_partner_is_refused(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, forgery: str
) -> None:
    """A key set that does not verify under frankfurt's pinned key (a transport key slipped in
    on the way), or that names another gateway: refused before the offer; nothing spent."""
    lb = rig.lb
    original = lb.link.key_set
    attacker = SoftwareHsm()

    def key_set(partner: PartnerConfig) -> Signed:
        original(partner)  # the call happens (and is recorded); its answer is replaced
        if forgery == "wrong-key":
            signer, gateway_id = attacker, "frankfurt"
        else:
            signer, gateway_id = lb.frankfurt.keys, "paris"
        return sign_key_set(
            signer,
            KeyRef("frankfurt", Purpose.SIGNING, 1),
            KeySet(
                gateway_id=gateway_id,
                keys={1: attacker.public_key(Purpose.TRANSPORT, 1)},
                current_version=1,
                issued_at=int(lb.now[0]),
            ),
        )

    monkeypatch.setattr(lb.link, "key_set", key_set)
    token = lb.passport("dpo_key-set")
    with pytest.raises(SignatureError) as refused:
        rig.send(token, b"data")
    words = (
        "key set of frankfurt signature does not verify under the pinned key of frankfurt"
        if forgery == "wrong-key"
        else "key set names 'paris', expected 'frankfurt'"
    )
    assert_error(refused.value, SignatureError, "UNAUTHENTICATED", words)
    assert rig.last_calls == ["key_set"]
    assert lb.lingang.ledger.outbound("dpo_key-set") is None
    assert_not_recorded(lb, "dpo_key-set")

    monkeypatch.setattr(lb.link, "key_set", original)
    summary = rig.send(token, b"data")
    assert_delivered(lb, "dpo_key-set", b"data", summary)

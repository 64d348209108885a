"""A small transfer in one partner call (Deliver), in process: the real Sender and Receiver.

What is checked: one partner call per small transfer, delivered byte-identical with the
usual receipt checks; every refusal reached through Deliver is the refusal the three calls
give (type, status, message); a lost reply then a resend -- by either path -- commits once;
a partner without Deliver gets the three calls, and is asked once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from gateway.documents import Manifest, sign_manifest
from gateway.envelope import StreamContext, StreamEncryptor, seal_header
from gateway.errors import PartnerError, XbgwError
from gateway.keys import KeyRef, Purpose
from gateway.passport import passport_digest
from gateway.signed import Signed
from gateway.transfer import SegmentIn, TransferState
from tests.loopback import SEGMENT, Loopback, flip
from tests.loopback_rig import assert_delivered


def test_a_small_send_is_one_partner_call(lb: Loopback) -> None:
    data = b"x" * SEGMENT
    lb.send("warm", b"warm")  # the key set is fetched once, then cached
    lb.link.calls.clear()
    summary = lb.send("one", data)
    assert lb.link.calls == ["deliver"]
    assert_delivered(lb, "dpo_one", data, summary)
    row = lb.lingang.ledger.outbound("dpo_one")
    assert row is not None and row.state is TransferState.DELIVERED


def test_a_delivery_reads_the_transfer_row_once_per_step(lb: Loopback) -> None:
    # The offer's own lookup made the ownership plain: the upload and the finish read the row
    # again only under the transfer's guard, where its state is checked.
    lb.send("warm", b"warm")
    reads: list[str] = []
    lb.frankfurt.ledger._db.set_trace_callback(
        lambda sql: reads.append(sql) if sql.startswith("SELECT * FROM inbound WHERE") else None
    )
    try:
        lb.send("counted", b"counted")
    finally:
        lb.frankfurt.ledger._db.set_trace_callback(None)
    assert len(reads) == 3, reads


def test_a_larger_send_takes_the_three_calls(lb: Loopback) -> None:
    data = b"y" * (SEGMENT + 1)
    summary = lb.send("two", data)
    assert lb.link.calls == ["key_set", "offer", "upload", "finish"]
    assert_delivered(lb, "dpo_two", data, summary)


def test_a_partner_without_deliver_gets_the_three_calls_once_asked(lb: Loopback) -> None:
    lb.link.no_deliver.add("frankfurt")
    summary = lb.send("old", b"old partner")
    assert lb.link.calls == ["key_set", "deliver", "offer", "upload", "finish"]
    assert_delivered(lb, "dpo_old", b"old partner", summary)
    lb.link.calls.clear()
    lb.send("old2", b"again")
    assert lb.link.calls == ["offer", "upload", "finish"]  # remembered: not asked again


@pytest.mark.parametrize("then", ["deliver", "three-calls"])
def test_a_lost_reply_then_a_resend_commits_once(lb: Loopback, then: str) -> None:
    data = b"lost reply"
    token = lb.passport("lost")
    lb.link.lose_reply.add("deliver")
    with pytest.raises(PartnerError, match="connection reset before the reply"):
        lb.resend(token, data)
    row = lb.frankfurt.ledger.inbound("dpo_lost")
    assert row is not None and row.state is TransferState.COMMITTED
    first_receipt = row.receipt
    if then == "three-calls":
        lb.link.no_deliver.add("frankfurt")
    lb.link.calls.clear()
    summary = lb.resend(token, data)
    assert summary.receipt == first_receipt  # the same receipt, not a second commit
    assert_delivered(lb, "dpo_lost", data, summary)
    if then == "three-calls":  # the offer says "committed": only the manifest is left
        assert lb.link.calls == ["deliver", "offer", "finish"]


def test_a_cut_delivery_resumes_by_the_three_calls(lb: Loopback) -> None:
    """The reply lost after the offer step only: an offered transfer, resumed as ever."""
    data = b"cut"
    token = lb.passport("cut")
    real = lb.frankfurt.receiver.upload

    def cut(*_args: object) -> object:
        raise PartnerError("cut", "UNAVAILABLE")  # not an XbgwError: the link sees a cut

    lb.frankfurt.receiver.upload = cut  # type: ignore[method-assign,assignment]
    with pytest.raises(Exception, match="cut"):
        lb.resend(token, data)
    lb.frankfurt.receiver.upload = real  # type: ignore[method-assign]
    row = lb.frankfurt.ledger.inbound("dpo_cut")
    assert row is not None and (row.state, row.next_segment) == (TransferState.RECEIVING, 0)
    lb.link.no_deliver.add("frankfurt")
    summary = lb.resend(token, data)
    assert_delivered(lb, "dpo_cut", data, summary)


# -- every refusal through Deliver is the three calls' -----------------------------------------


def _parts(
    lb: Loopback, jti: str, data: bytes, byte_limit: int = 1 << 20
) -> tuple[str, bytes, SegmentIn, Signed]:
    """What lingang would send for ``jti``: passport, header, the one segment, manifest."""
    token = lb.passport(jti, byte_limit=byte_limit)
    tid = f"dpo_{jti}"
    context = StreamContext(tid, "lingang", "frankfurt", passport_digest(token))
    header, data_key = seal_header(
        context,
        KeyRef("frankfurt", Purpose.TRANSPORT, 1),
        lb.frankfurt.keys.public_key(Purpose.TRANSPORT, 1),
        segment_size=SEGMENT,
    )
    ciphertext = StreamEncryptor(header, data_key).encrypt_segment(0, data, True)
    manifest = Manifest(
        transfer_id=tid,
        sender="lingang",
        receiver="frankfurt",
        header_core_digest=header.core_digest(),
        passport_digest=passport_digest(token),
        plaintext_sha256=hashlib.sha256(data).digest(),
        plaintext_size=len(data),
        segment_count=1,
    )
    signed = sign_manifest(lb.lingang.keys, KeyRef("lingang", Purpose.SIGNING, 1), manifest)
    return token, header.encode(), SegmentIn(tid, 0, True, ciphertext), signed


Parts = tuple[str, bytes, SegmentIn, Signed]
Change = Callable[[Loopback, Parts], Parts]


def _other_header(lb: Loopback, parts: Parts) -> Parts:
    token, _header, segment, manifest = parts
    _t, header, _s, _m = _parts(lb, "elsewhere", b"z")
    return token, header, segment, manifest


def _flipped(lb: Loopback, parts: Parts) -> Parts:
    token, header, segment, manifest = parts
    return token, header, flip(segment, 9), manifest


def _wrong_manifest(lb: Loopback, parts: Parts) -> Parts:
    token, header, segment, _manifest = parts
    _t, _h, _s, manifest = _parts(lb, "elsewhere2", b"another")
    return token, header, segment, manifest


def _forged_passport(lb: Loopback, parts: Parts) -> Parts:
    token, header, segment, manifest = parts
    return (
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        header,
        segment,
        manifest,
    )


def _as_is(lb: Loopback, parts: Parts) -> Parts:
    return parts


CASES: list[tuple[str, Change, int]] = [
    ("forged-passport", _forged_passport, 1 << 20),
    ("header-mismatch", _other_header, 1 << 20),
    ("tampered-segment", _flipped, 1 << 20),
    ("manifest-mismatch", _wrong_manifest, 1 << 20),
    ("byte-limit", _as_is, 4),
]


def _three_calls(lb: Loopback, parts: Parts) -> None:
    token, header, segment, manifest = parts
    peer = lb.frankfurt.config.partner("lingang")
    receiver = lb.frankfurt.receiver
    receiver.offer(peer, token, header)
    receiver.upload(peer, [segment])
    receiver.finish(peer, segment.transfer_id, manifest)


def _one_call(lb: Loopback, parts: Parts) -> list[str]:
    token, header, segment, manifest = parts
    peer = lb.frankfurt.config.partner("lingang")
    steps: list[str] = []
    lb.frankfurt.receiver.deliver(peer, token, header, segment, manifest, steps.append)
    return steps


def _refusal(run: Callable[[], object], tid: str) -> tuple[str, str, str]:
    with pytest.raises(XbgwError) as caught:
        run()
    error = caught.value
    return type(error).__name__, error.grpc_status, str(error).replace(tid, "<id>")


def _audit_kinds(lb: Loopback, tid: str) -> list[str]:
    ledger = lb.frankfurt.ledger
    size = ledger.audit_size()
    records = [r for _, r in ledger.audit_records(0, size)]
    return [r.split(b'"kind":"')[1].split(b'"')[0].decode() for r in records if tid.encode() in r]


@pytest.mark.parametrize(("case", "change", "limit"), CASES, ids=[c[0] for c in CASES])
def test_every_refusal_is_the_three_calls_refusal(
    lb: Loopback, case: str, change: Change, limit: int
) -> None:
    data = b"refusal data"
    three = change(lb, _parts(lb, f"a-{case}", data, limit))
    one = change(lb, _parts(lb, f"b-{case}", data, limit))
    expected = _refusal(lambda: _three_calls(lb, three), three[2].transfer_id)
    got = _refusal(lambda: _one_call(lb, one), one[2].transfer_id)
    assert got == expected
    a, b = (
        lb.frankfurt.ledger.inbound(three[2].transfer_id),
        lb.frankfurt.ledger.inbound(one[2].transfer_id),
    )
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        said = [
            (row.state, row.next_segment, (row.refusal or "").replace(row.transfer_id, "<id>"))
            for row in (a, b)
        ]
        assert said[0] == said[1]


def test_a_replay_through_deliver_is_refused_as_an_offer(lb: Loopback) -> None:
    parts = _parts(lb, "replay", b"once")
    _one_call(lb, parts)  # committed
    token, _header, segment, manifest = parts
    context = StreamContext("dpo_replay", "lingang", "frankfurt", passport_digest(token))
    other, _key = seal_header(  # the same passport, a fresh header
        context,
        KeyRef("frankfurt", Purpose.TRANSPORT, 1),
        lb.frankfurt.keys.public_key(Purpose.TRANSPORT, 1),
        segment_size=SEGMENT,
    )
    other_header = other.encode()
    steps: list[str] = []
    peer = lb.frankfurt.config.partner("lingang")
    with pytest.raises(XbgwError) as caught:
        lb.frankfurt.receiver.deliver(peer, token, other_header, segment, manifest, steps.append)
    assert caught.value.grpc_status == "ALREADY_EXISTS"
    assert steps == ["offer"]


def test_the_sender_reads_a_deliver_refusal_as_the_steps_own(lb: Loopback) -> None:
    lb.link.tamper = lambda segments: (flip(s, 9) for s in segments)
    token = lb.passport("flip")
    with pytest.raises(PartnerError) as caught:
        lb.resend(token, b"flipped")
    assert "refused the upload (" in str(caught.value)
    row = lb.frankfurt.ledger.inbound("dpo_flip")
    assert row is not None and (row.state, row.next_segment) == (TransferState.RECEIVING, 0)
    summary = lb.resend(token, b"flipped")  # resumes the offered transfer
    assert_delivered(lb, "dpo_flip", b"flipped", summary)

"""A partner cannot reach another's transfer, and a transfer finishes within its passport
(issue 13, items 1 and 3, the receiving side), in process against frankfurt's ``Receiver``.

Item 1: a third, configured partner (``mallory``, frankfurt's view of lingang under another
id) that knows lingang's transfer id calls every partner call on it while lingang's offer or
upload is at work. It must learn nothing (the same answer as for an id nobody uses) and must
not make lingang's calls fail. Item 3: once the passport's ``exp`` plus the leeway has passed,
an upload on an open stream and a finish are refused like an expired passport at the offer
(PERMISSION_DENIED, the expiry time named, an audit record), and nothing more is taken or
committed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gateway.config import PartnerConfig
from gateway.errors import (
    PassportExpiredError,
    TransportKeyNotAcceptedError,
    XbgwError,
)
from gateway.receiver.context import when
from gateway.transfer import SegmentIn, TransferState
from tests.loopback import Loopback
from tests.loopback_rig import SHORT_FINAL, assert_not_visible
from tests.unit.test_loopback_refusals import Hand, hand, lingang_signs, peer_of, seal

DATA = bytes(range(256)) * 2  # 8 segments of 64 bytes
TTL = 3600
LEEWAY = 60  # Limits' default passport_leeway_seconds


def refusal(call: object) -> XbgwError:
    """The error a receiver call raised (it must raise one)."""
    assert callable(call)
    with pytest.raises(XbgwError) as caught:
        call()
    return caught.value


def probes(lb: Loopback, mallory: PartnerConfig, transfer_id: str, h: Hand) -> list[str]:
    """What mallory is told for each call naming ``transfer_id``: type, status, message."""
    receiver = lb.frankfurt.receiver
    manifest = lingang_signs(lb, h.manifest(DATA))
    segment = SegmentIn(transfer_id, 0, False, b"\0" * 80)
    calls = [
        lambda: receiver.upload(mallory, [segment]),
        lambda: receiver.finish(mallory, transfer_id, manifest),
        lambda: receiver.ends().cancel(transfer_id, "mine now", mallory),
        lambda: receiver.status(mallory, transfer_id),
    ]
    told = []
    for call in calls:
        error = refusal(call)
        told.append(f"{type(error).__name__} {error.grpc_status} {error}")
    return told


# -- item 1: another partner's transfer id ---------------------------------------------------


def test_another_partner_learns_nothing_of_an_active_upload_and_cannot_disturb_it(
    lb: Loopback,
) -> None:
    mallory = peer_of(lb, "mallory")
    h = hand(lb, "dpo_victim-1")
    segments = h.segments(DATA)
    told: list[list[str]] = []

    def stream() -> Iterator[SegmentIn]:
        """Lingang's upload, with mallory probing its id while the stream is open."""
        yield from segments[:3]
        told.append(probes(lb, mallory, "dpo_victim-1", h))
        yield from segments[3:]

    done = lb.frankfurt.receiver.upload(h.peer, stream())
    assert done.final_received
    unknown = [t.replace("nobody-1", "dpo_victim-1") for t in probes(lb, mallory, "nobody-1", h)]
    assert told == [unknown]
    assert all(
        t.startswith("UnknownTransferError NOT_FOUND no transfer 'dpo_victim-1'") for t in unknown
    )
    receipt = h.finish(lingang_signs(lb, h.manifest(DATA)))
    row = lb.frankfurt.ledger.inbound("dpo_victim-1")
    assert row is not None and row.state is TransferState.COMMITTED and row.receipt == receipt


def test_another_partners_offer_of_the_same_id_is_not_told_it_is_busy(
    lb: Loopback, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mallory's own passport may carry lingang's id (issuers may choose ``--jti``). While
    lingang's offer of it is being created, mallory's offer must get the answer it would get
    for an id nobody uses -- here its header's unknown transport key -- not "busy on another
    stream", and lingang's offer must go on undisturbed."""
    mallory = peer_of(lb, "mallory")
    token = lb.passport("dpo_victim-2", sender="mallory")
    header, _key = seal(lb, token, "dpo_victim-2", sender="mallory", version=99)
    keys = lb.frankfurt.keys
    real_ecdh = keys.ecdh
    told: list[XbgwError] = []

    def ecdh(version: int, point: bytes) -> bytes:
        """Lingang's offer holds its guard now (it is unwrapping the data key)."""
        if not told:
            told.append(
                refusal(lambda: lb.frankfurt.receiver.offer(mallory, token, header.encode()))
            )
        return real_ecdh(version, point)

    monkeypatch.setattr(keys, "ecdh", ecdh)
    h = hand(lb, "dpo_victim-2")  # lingang's offer, accepted
    monkeypatch.setattr(keys, "ecdh", real_ecdh)
    [error] = told
    assert isinstance(error, TransportKeyNotAcceptedError), repr(error)
    assert "busy" not in str(error)
    assert h.upload(h.segments(DATA)).final_received
    h.finish(lingang_signs(lb, h.manifest(DATA)))
    row = lb.frankfurt.ledger.inbound("dpo_victim-2")
    assert row is not None and row.state is TransferState.COMMITTED and row.sender == "lingang"


def test_the_guard_is_per_partner(lb: Loopback) -> None:
    """Two partners' work on the same id never meets; the same partner's twice is refused."""
    from gateway.errors import TransferConflictError

    ctx = lb.frankfurt.receiver._ctx  # the guard itself
    with ctx.busy("same-id", "upload", "lingang"):
        with ctx.busy("same-id", "offer", "mallory"):
            pass
        again = ctx.busy("same-id", "finish", "lingang")
        with pytest.raises(TransferConflictError, match="busy on another stream"), again:
            pass


# -- item 3: the passport bounds the whole transfer ------------------------------------------


def expired_at(lb: Loopback) -> int:
    """The moment the passport of a transfer offered now is refused (exp + leeway)."""
    return int(lb.now[0]) + TTL + LEEWAY


def assert_refused_late(lb: Loopback, error: XbgwError, transfer_id: str, call: str) -> None:
    row = lb.frankfurt.ledger.inbound(transfer_id)
    assert row is not None and row.expires_at is not None
    assert isinstance(error, PassportExpiredError), repr(error)
    assert error.grpc_status == "PERMISSION_DENIED"
    assert f"passport {transfer_id} expired at {when(row.expires_at)}" in str(error)
    assert "send the data again under a new passport" in str(error)
    ledger = lb.frankfurt.ledger
    size = ledger.audit_size()
    [(_, record)] = ledger.audit_records(size - 1, size)
    audited = json.loads(record)
    assert audited["kind"] == "call.refused"
    assert (audited["transfer_id"], audited["partner"], audited["call"]) == (
        transfer_id,
        "lingang",
        call,
    )
    assert (audited["error"], audited["passport_exp"]) == ("PassportExpiredError", row.expires_at)
    assert row.state is TransferState.RECEIVING
    assert_not_visible(lb, transfer_id)


def test_an_upload_after_the_passport_expired_is_refused(lb: Loopback) -> None:
    h = hand(lb, "dpo_late-upload")
    segments = h.segments(DATA)
    h.upload(segments[:2])
    lb.now[0] = expired_at(lb)
    error = refusal(lambda: h.upload(segments[2:]))
    assert_refused_late(lb, error, "dpo_late-upload", "upload")
    row = lb.frankfurt.ledger.inbound("dpo_late-upload")
    assert row is not None and row.next_segment == 2  # nothing more taken


def test_a_stream_open_when_the_passport_expires_takes_no_further_segment(lb: Loopback) -> None:
    h = hand(lb, "dpo_late-stream")
    segments = h.segments(DATA)
    late = expired_at(lb)

    def stream() -> Iterator[SegmentIn]:
        yield from segments[:3]
        lb.now[0] = late  # the passport runs out while the stream is open
        yield from segments[3:]

    error = refusal(lambda: lb.frankfurt.receiver.upload(h.peer, stream()))
    assert_refused_late(lb, error, "dpo_late-stream", "upload")
    row = lb.frankfurt.ledger.inbound("dpo_late-stream")
    # The worker may not have taken the first three when the clock moved: at most those.
    assert row is not None and row.next_segment <= 3 and not row.final_received


def test_a_finish_after_the_passport_expired_commits_nothing(lb: Loopback) -> None:
    h = hand(lb, "dpo_late-finish")
    h.upload(h.segments(DATA))
    manifest = lingang_signs(lb, h.manifest(DATA))
    lb.now[0] = expired_at(lb)
    error = refusal(lambda: h.finish(manifest))
    assert_refused_late(lb, error, "dpo_late-finish", "finish")
    assert lb.frankfurt.ledger.committed_inbound() == []


def test_a_finish_within_the_leeway_commits(lb: Loopback) -> None:
    h = hand(lb, "dpo_just-in-time")
    h.upload(h.segments(DATA[:SHORT_FINAL]))
    lb.now[0] = expired_at(lb) - 1
    h.finish(lingang_signs(lb, h.manifest(DATA[:SHORT_FINAL])))
    row = lb.frankfurt.ledger.inbound("dpo_just-in-time")
    assert row is not None and row.state is TransferState.COMMITTED

"""The partner servicer in process: wire messages in, the receiver's answer or refusal out.

The loopback's sender talks to frankfurt through ``PartnerServicer`` here (with a stand-in
gRPC context; the mutual-TLS peer lookup is replaced by lingang's configuration), so each
refusal is checked the way tests/system/test_refusals.py checks it over real TLS: the gRPC
status, a message a person can act on, one log line (``outcome``, ``status``, ``rpc``,
``reason``, ``partner``, ``transfer_id``) and the refusal counter -- for every RPC, in
milliseconds. The system tests keep one refusal per RPC through real daemons.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import pytest

import gateway.partner
from gateway._proto.xbgw.v1 import common_pb2, partner_pb2
from gateway.config import PartnerConfig
from gateway.errors import PartnerError
from gateway.metrics import Metrics
from gateway.partner import PartnerServicer
from gateway.signed import Signed
from gateway.transfer import (
    DELIVER_STEP_KEY,
    FinishResult,
    OfferResult,
    SegmentIn,
    TransferState,
    TransferStatus,
    UploadResult,
    refused_by,
)
from gateway.wire import deliver_request, from_blob, state_from_wire, to_blob
from tests.loopback import Loopback, flip, make_loopback, rewrite


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    """Just what the servicer uses of a ``grpc.ServicerContext``."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()  # no stripe: one Upload stream

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata


def context() -> grpc.ServicerContext:
    stand_in: Any = Context()
    return cast(grpc.ServicerContext, stand_in)


class ServicerLink:
    """A PartnerLink that goes through frankfurt's ``PartnerServicer`` and the wire messages."""

    def __init__(self, servicer: PartnerServicer) -> None:
        self.servicer = servicer
        self.tamper: Callable[[Iterator[SegmentIn]], Iterator[SegmentIn]] | None = None
        self.manifests: Callable[[Signed], Signed] = lambda signed: signed

    def _call(self, partner: PartnerConfig, call: str, act: Callable[[Any], Any]) -> Any:
        try:
            return act(context())
        except Aborted as aborted:
            raise refused_by(partner.id, call, aborted.code.name, aborted.details) from None

    def key_set(self, partner: PartnerConfig) -> Signed:
        request = partner_pb2.GetKeySetRequest()
        response = self._call(partner, "key_set", lambda c: self.servicer.GetKeySet(request, c))
        return from_blob(response.key_set)

    def offer(self, partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        request = partner_pb2.OfferRequest(passport=passport, envelope_header=header)
        response = self._call(partner, "offer", lambda c: self.servicer.Offer(request, c))
        committed = state_from_wire(response.state) is TransferState.COMMITTED
        return OfferResult(
            response.transfer_id, response.next_segment, response.received_bytes, True, committed
        )

    def upload(self, partner: PartnerConfig, segments: Iterator[SegmentIn]) -> UploadResult:
        tamper, self.tamper = self.tamper, None
        stream = tamper(segments) if tamper is not None else segments
        messages = (
            partner_pb2.Segment(
                transfer_id=s.transfer_id, index=s.index, final=s.final, ciphertext=s.ciphertext
            )
            for s in stream
        )
        response = self._call(partner, "upload", lambda c: self.servicer.Upload(messages, c))
        return UploadResult(response.next_segment, response.received_bytes, response.final_received)

    def finish(self, partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        request = partner_pb2.FinishRequest(
            transfer_id=transfer_id, manifest=to_blob(self.manifests(manifest))
        )
        response = self._call(partner, "finish", lambda c: self.servicer.Finish(request, c))
        return FinishResult(from_blob(response.receipt))

    def deliver(
        self,
        partner: PartnerConfig,
        passport: str,
        header: bytes,
        segment: SegmentIn,
        manifest: Signed,
    ) -> FinishResult | None:
        """Through ``PartnerServicer.Deliver``; a refusal named by the step the servicer put
        in the trailing metadata, as the gRPC link names it."""
        request = deliver_request(passport, header, segment, self.manifests(manifest))
        stand_in = Context()
        try:
            response = self.servicer.Deliver(request, cast(grpc.ServicerContext, stand_in))
        except Aborted as aborted:
            step = dict(stand_in.trailing).get(DELIVER_STEP_KEY, "deliver")
            raise refused_by(partner.id, step, aborted.code.name, aborted.details) from None
        return FinishResult(from_blob(response.receipt))

    def status(self, partner: PartnerConfig, transfer_id: str) -> TransferStatus:
        request = partner_pb2.GetTransferRequest(transfer_id=transfer_id)
        response = self._call(partner, "status", lambda c: self.servicer.GetTransfer(request, c))
        state = state_from_wire(response.state)
        assert state is not None
        receipt = from_blob(response.receipt) if response.HasField("receipt") else None
        return TransferStatus(
            response.transfer_id, state, response.next_segment, response.received_bytes, receipt
        )

    def cancel(self, partner: PartnerConfig, transfer_id: str, reason: str) -> TransferState:
        request = partner_pb2.CancelTransferRequest(transfer_id=transfer_id, reason=reason)
        response = self._call(partner, "cancel", lambda c: self.servicer.Cancel(request, c))
        state = state_from_wire(response.state)
        assert state is not None
        return state


@dataclasses.dataclass
class Wired:
    lb: Loopback
    link: ServicerLink
    metrics: Metrics

    def send(self, jti: str, data: bytes, size: int | None = None, **passport: Any) -> object:
        token = self.lb.passport(jti, **passport)
        chunks = [data[i : i + 50] for i in range(0, len(data), 50)]
        size = len(data) if size is None else size
        return self.lb.lingang.sender.send("frankfurt", token, iter(chunks), size or None)

    def refusals(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "xbgw_refusals_total", {"reason": reason, "partner": "lingang"}
        )
        return value or 0.0


@pytest.fixture
def wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wired]:
    lb = make_loopback(tmp_path)
    lingang = lb.frankfurt.config.partner("lingang")
    monkeypatch.setattr(gateway.partner, "peer_partner", lambda _config, _context: lingang)
    metrics = Metrics()
    servicer = PartnerServicer(
        lambda: lb.frankfurt.config, lb.frankfurt.receiver, metrics, lambda: True
    )
    link = ServicerLink(servicer)
    lb.lingang.sender._link = link
    try:
        yield Wired(lb, link, metrics)
    finally:
        lb.close()


def refusal_line(caplog: pytest.LogCaptureFixture, rpc: str) -> logging.LogRecord:
    lines = [r for r in caplog.records if r.name == "xbgw.partner" and getattr(r, "rpc", "") == rpc]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return lines[0]


def assert_refused(error: BaseException, status: str, *fragments: str) -> None:
    assert isinstance(error, PartnerError), repr(error)
    assert error.grpc_status == status, str(error)
    for fragment in fragments:
        assert fragment in str(error), str(error)


def test_a_transfer_through_the_servicer_is_delivered(wired: Wired) -> None:
    data = bytes(range(256)) * 3
    wired.send("dpo_through-servicer", data)
    assert wired.lb.fetch("dpo_through-servicer") == data
    status = wired.link.status(wired.lb.lingang.config.partner("frankfurt"), "dpo_through-servicer")
    assert status.state is TransferState.COMMITTED and status.receipt is not None


def test_a_flipped_segment_is_data_loss_with_one_refusal_line(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    wired.link.tamper = rewrite(lambda s: [s[0], flip(s[1], 40), *s[2:]])
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(PartnerError) as refused:
        wired.send("dpo_flipped", bytes(400))
    assert_refused(
        refused.value, "DATA_LOSS", "refused the upload", "segment 1 failed authentication"
    )
    line = refusal_line(caplog, "Upload")
    assert (line.outcome, line.status, line.reason) == (  # type: ignore[attr-defined]
        "refused",
        "DATA_LOSS",
        "SegmentAuthenticationError",
    )
    assert (line.partner, line.transfer_id) == ("lingang", "dpo_flipped")  # type: ignore[attr-defined]
    assert wired.refusals("SegmentAuthenticationError") == 1


def test_segments_out_of_order_are_out_of_range(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    wired.link.tamper = rewrite(lambda s: [s[1], s[0], *s[2:]])
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(PartnerError) as refused:
        wired.send("dpo_reordered", bytes(400))
    assert_refused(refused.value, "OUT_OF_RANGE", "expected segment 0, got 1")
    assert refusal_line(caplog, "Upload").status == "OUT_OF_RANGE"  # type: ignore[attr-defined]


def test_a_manifest_changed_on_the_way_is_unauthenticated(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    def forged(signed: Signed) -> Signed:
        body = bytearray(signed.body)
        body[-1] ^= 1
        return dataclasses.replace(signed, body=bytes(body))

    wired.link.manifests = forged
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(PartnerError) as refused:
        wired.send("dpo_forged-manifest", bytes(300))
    assert_refused(refused.value, "UNAUTHENTICATED", "refused the manifest", "does not verify")
    line = refusal_line(caplog, "Finish")
    assert (line.reason, line.transfer_id) == ("SignatureError", "dpo_forged-manifest")  # type: ignore[attr-defined]


def test_a_byte_limit_breach_is_refused_for_good_and_refused_on_the_wire(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(PartnerError) as refused:
        wired.send("dpo_over", bytes(500), size=0, byte_limit=300)
    assert_refused(refused.value, "RESOURCE_EXHAUSTED", "exceeds its limit of 300 bytes")
    assert refusal_line(caplog, "Upload").reason == "ByteLimitError"  # type: ignore[attr-defined]
    status = wired.link.status(wired.lb.lingang.config.partner("frankfurt"), "dpo_over")
    assert status.state is TransferState.REFUSED
    request = partner_pb2.GetTransferRequest(transfer_id="dpo_over")
    assert (
        wired.link.servicer.GetTransfer(request, context()).state
        == common_pb2.TRANSFER_STATE_REFUSED
    )


@pytest.mark.parametrize(
    ("passport", "status", "fragment", "reason"),
    [
        ("not-a-passport", "INVALID_ARGUMENT", "3 dot-separated parts", "PassportFormatError"),
        ("forged", "PERMISSION_DENIED", "signature", "PassportSignatureError"),
    ],
)
def test_an_offer_refusal_names_its_reason(
    wired: Wired,
    caplog: pytest.LogCaptureFixture,
    passport: str,
    status: str,
    fragment: str,
    reason: str,
) -> None:
    token = wired.lb.passport("dpo_offered")
    if passport == "forged":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    else:
        token = passport
    request = partner_pb2.OfferRequest(passport=token, envelope_header=b"")
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(Aborted) as aborted:
        wired.link.servicer.Offer(request, context())
    assert aborted.value.code.name == status
    assert fragment in aborted.value.details
    assert refusal_line(caplog, "Offer").reason == reason  # type: ignore[attr-defined]
    assert wired.lb.frankfurt.ledger.inbound("dpo_offered") is None  # nothing spent


@pytest.mark.parametrize("rpc", ["Finish", "GetTransfer"])
def test_an_unknown_transfer_is_not_found(wired: Wired, rpc: str) -> None:
    if rpc == "Finish":
        call: Callable[[], object] = lambda: wired.link.servicer.Finish(  # noqa: E731
            partner_pb2.FinishRequest(transfer_id="nowhere"),
            Context(),  # type: ignore[arg-type]
        )
    else:
        call = lambda: wired.link.servicer.GetTransfer(  # noqa: E731
            partner_pb2.GetTransferRequest(transfer_id="nowhere"),
            Context(),  # type: ignore[arg-type]
        )
    with pytest.raises(Aborted) as aborted:
        call()
    assert aborted.value.code is grpc.StatusCode.NOT_FOUND
    assert "no transfer 'nowhere' from lingang" in aborted.value.details


def test_an_oversized_message_is_refused_before_the_receiver_sees_it(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    limit = wired.lb.frankfurt.config.limits.max_message_bytes
    huge = partner_pb2.Segment(transfer_id="big", index=0, final=True, ciphertext=bytes(limit))
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(Aborted) as aborted:
        wired.link.servicer.Upload(iter([huge]), context())
    assert aborted.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than this gateway's max_message_bytes" in aborted.value.details
    assert refusal_line(caplog, "Upload").reason == "MessageTooLargeError"  # type: ignore[attr-defined]


def test_a_storage_failure_is_unavailable_and_logged_as_failed(
    wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    wired.lb.frankfurt.ledger._db.execute("DROP TABLE inbound")
    with caplog.at_level(logging.INFO, "xbgw.partner"), pytest.raises(PartnerError) as refused:
        wired.send("dpo_no-disk", bytes(100))
    assert_refused(refused.value, "UNAVAILABLE", "cannot store the transfer right now")
    line = refusal_line(caplog, "Offer")
    assert (line.outcome, line.reason) == ("failed", "StorageError")  # type: ignore[attr-defined]

"""Issue 14 item 3 through real daemons: a small payload goes by the unary local ``SendSmall``
and crosses as one partner call (``Deliver``); a refusal met there is the refusal the three
calls (Offer, Upload, Finish) meet, logged and audited the same way.

How "one partner call" is seen: frankfurt runs with gRPC's own HPACK trace
(``GRPC_TRACE=chttp2_hpack_parser``), which writes the ``:path`` of every request its
transport parses (``HTTP:...:HDR:SVR: :path: /xbgw.v1.PartnerGateway/Deliver``) to its log.
That is the receiving transport's count of calls -- a successful partner RPC writes no JSON
line of its own (only refusals do, with ``"rpc"``) -- read from a mark taken just before the
send. Health probes and witness rounds run on their own schedule and are left out.

How a refusal is made to happen at the receiver (not in the sender's own passport check):
frankfurt allows no clock leeway (``limits.passport_leeway_seconds: 0``), lingang the default
60 s; a passport that lived one second has expired for frankfurt and not for lingang, so
lingang sends it and frankfurt refuses it at the offer step -- of Deliver, then of Offer.

One running pair serves the module (lingang -> frankfurt, 64 KiB segments).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.pair import provision_pair
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from tests.system.harness import Gateway, Pair, wait_until

SEGMENT = 1 << 16
CALLS = re.compile(r"HDR:SVR: :path: /xbgw\.v1\.PartnerGateway/(\w+)")
#: Partner RPCs a transfer makes (Health and the witness calls run on their own schedule).
TRANSFER_CALLS = {"GetKeySet", "Offer", "Upload", "Finish", "Deliver", "GetTransfer"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    def configure(gateway_id: str, data: dict[str, Any]) -> None:
        if gateway_id == "frankfurt":
            data["limits"]["passport_leeway_seconds"] = 0

    made = provision_pair(
        tmp_path_factory.mktemp("pair"), segment_size=SEGMENT, configure=configure
    )
    made.frankfurt.env = {"GRPC_TRACE": "chttp2_hpack_parser", "GRPC_VERBOSITY": "DEBUG"}
    with made.running() as running:
        # The first send fetches frankfurt's key set; the tests count the calls after it.
        token = running.passport(byte_limit=SEGMENT)
        warm = stub_call(running, lambda stub: _small(stub, token, b"warm-up"))
        assert warm.signed_by, running.lingang.log_text()
        yield running


def stub_call(pair: Pair, call: Any) -> Any:
    channel = grpc.insecure_channel(f"unix:{pair.lingang.paths.socket}")
    try:
        return call(local_pb2_grpc.LocalGatewayStub(channel))
    finally:
        channel.close()


def _small(
    stub: local_pb2_grpc.LocalGatewayStub, token: str, data: bytes
) -> local_pb2.ReceiptSummary:
    request = local_pb2.SendSmallRequest(
        partner="frankfurt", passport=token, size=len(data), data=data
    )
    summary: local_pb2.ReceiptSummary = stub.SendSmall(request, timeout=60)
    return summary


def _streamed(stub: local_pb2_grpc.LocalGatewayStub, token: str, data: bytes) -> None:
    start = local_pb2.SendStart(partner="frankfurt", passport=token, size=len(data))
    requests = [local_pb2.SendRequest(start=start), local_pb2.SendRequest(data=data)]
    for _ in stub.Send(iter(requests), timeout=60):
        pass


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def mark(gateway: Gateway) -> int:
    return len(gateway.log_text())


def since(gateway: Gateway, at: int) -> str:
    return gateway.log_text()[at:]


def transfer_calls(text: str) -> list[str]:
    return [m for m in CALLS.findall(text) if m in TRANSFER_CALLS]


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def refused_audit(gateway: Gateway) -> list[dict[str, Any]]:
    """Frankfurt's ``offer.refused`` audit records (``xbgw audit tail``)."""
    done = gateway.cli("audit", "tail", "-c", str(gateway.paths.config), "-n", "1000")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line)["record"] for line in done.stdout.splitlines()]
    return [r for r in records if r.get("kind") == "offer.refused"]


def expiry(token: str) -> int:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"])


def test_a_small_send_is_delivered_in_one_partner_call(pair: Pair, tmp_path: Path) -> None:
    data = os.urandom(4096)
    token = pair.passport(byte_limit=SEGMENT)
    at = mark(pair.frankfurt)
    summary = stub_call(pair, lambda stub: _small(stub, token, data))
    assert summary.plaintext_size == len(data)
    assert summary.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    # lingang answers only after the receipt verified under frankfurt's pinned key.
    assert summary.signed_by == "frankfurt/signing/1"
    assert summary.receipt.kid == "frankfurt/signing/1"
    assert summary.receipt.body and summary.receipt.signature
    wait_until(lambda: "transfer committed" in since(pair.frankfurt, at), 10, "the commit line")
    assert transfer_calls(since(pair.frankfurt, at)) == ["Deliver"]

    target = tmp_path / "out.bin"
    done = pair.frankfurt.cli("fetch", summary.transfer_id, "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == data


def test_send_small_over_the_segment_size_is_refused(pair: Pair) -> None:
    token = pair.passport(byte_limit=4 * SEGMENT)
    at = mark(pair.frankfurt)
    error = refused(lambda: stub_call(pair, lambda stub: _small(stub, token, b"z" * (SEGMENT + 1))))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"SendSmall carries at most limits.segment_size ({SEGMENT}) bytes; this request has "
        f"{SEGMENT + 1}: use Send, which streams the data (or hands a file over)"
    )
    assert transfer_calls(since(pair.frankfurt, at)) == []
    # Nothing was spent: the same passport streams the same data through Send.
    stub_call(pair, lambda stub: _streamed(stub, token, b"z" * (SEGMENT + 1)))


def test_a_refusal_through_deliver_is_the_refusal_of_the_three_calls(pair: Pair) -> None:
    token = pair.passport(byte_limit=4 * SEGMENT, extra=["--ttl", "1s"])
    exp = expiry(token)
    # Expired for frankfurt (no leeway), still within lingang's 60 s.
    wait_until(lambda: time.time() >= exp + 1, 10, "the passport to expire for frankfurt")
    audited = len(refused_audit(pair.frankfurt))

    at = mark(pair.frankfurt)
    local_at = mark(pair.lingang)
    one = refused(lambda: stub_call(pair, lambda stub: _small(stub, token, b"s" * 4096)))
    one_log = since(pair.frankfurt, at)
    assert transfer_calls(one_log) == ["Deliver"]
    assert "local SendSmall failed" in since(pair.lingang, local_at)

    at = mark(pair.frankfurt)
    three = refused(
        lambda: stub_call(pair, lambda stub: _streamed(stub, token, b"t" * 3 * SEGMENT))
    )
    three_log = since(pair.frankfurt, at)
    assert transfer_calls(three_log) == ["Offer"]

    assert one.code() is three.code() is grpc.StatusCode.PERMISSION_DENIED
    now = re.compile(r"now \d+")
    details = [now.sub("now N", e.details() or "") for e in (one, three)]
    assert "expired at" in details[0]
    assert details[0] == details[1]

    # Logged as today: one refusal line each, the RPC named, the same status and reason.
    lines = [
        next(e for e in json_lines(text) if e.get("outcome") == "refused")
        for text in (one_log, three_log)
    ]
    assert [e["rpc"] for e in lines] == ["Deliver", "Offer"]
    assert {(e["status"], e["reason"], e["partner"]) for e in lines} == {
        ("PERMISSION_DENIED", "PassportExpiredError", "lingang")
    }
    # Audited as today: one offer.refused record each.
    records = refused_audit(pair.frankfurt)[audited:]
    assert [(r["error"], r["status"]) for r in records] == [
        ("PassportExpiredError", "PERMISSION_DENIED")
    ] * 2

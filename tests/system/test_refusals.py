"""Refusals of the receiving daemon, through a real partner connection.

Every data-path refusal runs in process (``tests/unit/test_loopback_refusals.py``, through
the receiver; ``tests/unit/test_partner_servicer.py``, through the servicer with its status
mapping, log line and counter). What stays here needs the real listener: mutual TLS and peer
identity, gRPC's message limits, and one refusal per RPC (Offer, Upload, Finish) through the
whole daemon, as a check that the in-process picture holds.

One running pair (lingang -> frankfurt) serves the whole module. A hand-driven client
(``tests.system.rogue``) talks to frankfurt's partner port as lingang -- with lingang's
stand-in identity (same name, same CA: lingang's own key is wrapped by its HSM) -- or with
another certificate, or none, and sends exactly the wrong thing. Each test checks:

(a) the gRPC status code;
(b) a reason a person can act on (key words of the status details);
(c) the refusal line in frankfurt's JSON log (``"outcome":"refused"``, ``"status"``, ``"rpc"``,
    the error type as ``"reason"``), written by this refusal (the log is read from a mark
    taken just before it);
(d) that nothing partial became visible: ``xbgw inbox`` on frankfurt does not list the
    transfer, no committed spool file exists, and for refusals that end a transfer for good
    no partial file is left under ``<state_dir>/spool/incoming``; refusals a sender can fix by
    resuming keep exactly the segments that verified, still uncommitted.

A first test drives a complete transfer with the same client and the same keys, so a refusal
below is the daemon's answer to the one thing each test breaks, not a flaw of the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.provision import DemoCa, GatewaySpec, issue_passport
from gateway import envelope
from gateway._proto.xbgw.v1 import common_pb2, partner_pb2
from gateway.config import load_config
from gateway.envelope import header as envelope_header
from gateway.keys import KeyRef, Purpose
from tests.fakes import SoftwareHsm
from tests.system import rogue
from tests.system.harness import Pair, running_pair
from tests.system.rogue import HandTransfer, RogueClient, TlsIdentity, TokenSigner

TAG_LEN = 16  # AES-GCM tag per segment

#: A gateway that exists in no configuration: the audience or sender of a wrong passport.
PARIS = GatewaySpec("paris", "EU-FR", "Paris", 0)


@dataclass
class Bench:
    """Frankfurt as seen by a partner, plus what a rogue client needs to talk to it."""

    pair: Pair
    endpoint: str
    server_ca: bytes  # the CA lingang trusts for frankfurt's server certificate
    lingang_tls: TlsIdentity
    transport_version: int
    transport_public: ec.EllipticCurvePublicKey
    segment_size: int
    max_message_bytes: int
    issuer_signer: TokenSigner
    lingang_signer: TokenSigner

    @property
    def frankfurt(self) -> GatewaySpec:
        return self.pair.frankfurt.spec

    @property
    def lingang(self) -> GatewaySpec:
        return self.pair.lingang.spec

    def client(self) -> RogueClient:
        """A partner connection with lingang's own certificate."""
        return self.client_as(self.lingang_tls)

    def client_as(self, identity: TlsIdentity | None) -> RogueClient:
        """A partner connection with ``identity`` (``None``: no client certificate)."""
        return RogueClient(self.endpoint, self.server_ca, identity, server_name=self.frankfurt.id)

    def passport(
        self,
        byte_limit: int = 1 << 24,
        sender: GatewaySpec | None = None,
        receiver: GatewaySpec | None = None,
    ) -> tuple[str, str]:
        """A new transfer id and a passport for it from the real ``xbgw passport issue``."""
        jti = f"dpo_refusal-{uuid.uuid4().hex[:16]}"
        token = issue_passport(
            self.pair.issuer,
            sender or self.lingang,
            receiver or self.frankfurt,
            byte_limit,
            jti=jti,
        )
        return jti, token

    def seal(self, token: str, jti: str, version: int | None = None) -> HandTransfer:
        """A header for ``token`` wrapped to frankfurt's transport key (``version`` claimed)."""
        ref = KeyRef(self.frankfurt.id, Purpose.TRANSPORT, version or self.transport_version)
        return HandTransfer.seal(
            token, jti, self.lingang.id, ref, self.transport_public, self.segment_size
        )

    def offered(self, byte_limit: int = 1 << 24) -> HandTransfer:
        """A transfer offered by lingang and accepted by frankfurt (resume point 0)."""
        jti, token = self.passport(byte_limit)
        transfer = self.seal(token, jti)
        with self.client() as client:
            accepted = client.offer(token, transfer.header_bytes)
        assert accepted.transfer_id == jti
        assert accepted.next_segment == 0
        assert accepted.state == common_pb2.TRANSFER_STATE_RECEIVING
        return transfer

    # -- what frankfurt shows ----------------------------------------------------------------

    def log_mark(self) -> int:
        return len(self.pair.frankfurt.log_text())

    def log_since(self, mark: int) -> list[dict[str, Any]]:
        entries = []
        for line in self.pair.frankfurt.log_text()[mark:].splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def inbox(self) -> list[str]:
        listed = self.pair.frankfurt.cli("inbox")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        if lines == ["inbox is empty"]:
            return []
        assert lines[0].startswith("TRANSFER"), listed.stdout
        return [line.split()[0] for line in lines[1:]]

    def partial_file(self, transfer_id: str) -> Path:
        return self.pair.frankfurt.paths.state_dir / "spool" / "incoming" / f"{transfer_id}.part"

    def committed_file(self, transfer_id: str) -> Path:
        return self.pair.frankfurt.paths.state_dir / "spool" / "inbox" / f"{transfer_id}.xbgw"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with running_pair(tmp_path_factory.mktemp("refusals")) as running:
        yield running


@pytest.fixture(scope="module")
def bench(pair: Pair) -> Bench:
    lingang = load_config(pair.lingang.paths.config)
    frankfurt = load_config(pair.frankfurt.paths.config)
    partner = lingang.partner(frankfurt.id)
    endpoint = (pair.frankfurt.paths.state_dir / "partner.addr").read_text().strip()
    # lingang's stand-in identity (same name, same CA): its own key is wrapped by its HSM.
    identity = TlsIdentity.load(*pair.lingang.paths.stand_in())
    with RogueClient(endpoint, partner.ca_pem, identity, server_name=partner.identity) as client:
        key_set = client.key_set(frankfurt.id, partner.signing_public_key)
    version, public = rogue.transport_key(key_set)
    return Bench(
        pair=pair,
        endpoint=endpoint,
        server_ca=partner.ca_pem,
        lingang_tls=identity,
        transport_version=version,
        transport_public=public,
        segment_size=frankfurt.limits.segment_size,
        max_message_bytes=frankfurt.limits.max_message_bytes,
        issuer_signer=TokenSigner(
            pair.issuer.softhsm_conf, pair.issuer.token, pair.issuer.pin_file
        ),
        lingang_signer=TokenSigner(
            pair.lingang.paths.softhsm_conf, pair.lingang.paths.token, pair.lingang.paths.pin_file
        ),
    )


# --- checks ---------------------------------------------------------------------------------


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """Run an RPC that must fail; its status code and details."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call), error
    return error.code(), error.details() or ""


def assert_status(got: tuple[grpc.StatusCode, str], code: grpc.StatusCode, *words: str) -> str:
    status, details = got
    assert status is code, f"expected {code.name}, got {status.name}: {details}"
    for word in words:
        assert word.lower() in details.lower(), f"{word!r} not in the reason {details!r}"
    return details


def assert_logged(
    bench: Bench,
    mark: int,
    rpc: str,
    status: str,
    reason: str | None,
    details: str | None,
    partner: str | None = "lingang",
) -> dict[str, Any]:
    """The one refusal line frankfurt wrote for this refusal, with what the peer was told.

    ``reason`` is the error type; ``details``, the status details, must be in the message.
    """
    entries = bench.log_since(mark)
    refusals = [e for e in entries if e.get("outcome") == "refused"]
    matching = [
        e
        for e in refusals
        if e.get("rpc") == rpc
        and e.get("status") == status
        and (reason is None or e.get("reason") == reason)
    ]
    assert len(matching) == 1, f"no single {rpc} {status} {reason} refusal logged: {entries}"
    entry = matching[0]
    assert details is None or details in entry["msg"], (details, entry)
    assert entry.get("partner") == partner, entry
    assert entry["level"] == "warning", entry
    assert len(refusals) == 1, f"one refusal, logged more than once: {refusals}"
    return entry


def assert_nothing_handled(bench: Bench, mark: int) -> None:
    """No RPC reached a handler: nothing about any transfer or peer was logged."""
    entries = bench.log_since(mark)
    assert not [e for e in entries if "rpc" in e or "transfer_id" in e or "outcome" in e], entries


def assert_not_recorded(bench: Bench, transfer_id: str) -> None:
    """Frankfurt has no trace of the transfer: not in the ledger, the spool or the inbox."""
    with bench.client() as client:
        assert_status(
            refused(lambda: client.transfer(transfer_id)), grpc.StatusCode.NOT_FOUND, transfer_id
        )
    assert not bench.partial_file(transfer_id).exists()
    assert not bench.committed_file(transfer_id).exists()
    assert transfer_id not in bench.inbox()


def assert_resumable(bench: Bench, transfer_id: str, kept: list[partner_pb2.Segment]) -> None:
    """Still receiving, nothing committed; exactly the ``kept`` segments are held, durably."""
    with bench.client() as client:
        status = client.transfer(transfer_id)
    assert status.state == common_pb2.TRANSFER_STATE_RECEIVING
    assert status.next_segment == len(kept)
    assert status.received_bytes == sum(len(s.ciphertext) - TAG_LEN for s in kept)
    assert not status.HasField("receipt")
    held = bench.partial_file(transfer_id).read_bytes()
    header_len = envelope.header_length(held[: envelope_header.PREFIX_LEN])
    assert held[header_len:] == b"".join(s.ciphertext for s in kept)
    assert not bench.committed_file(transfer_id).exists()
    assert transfer_id not in bench.inbox()


def assert_refused_for_good(bench: Bench, transfer: HandTransfer) -> None:
    """The transfer is over: no partial data, nothing committed, the passport spent."""
    transfer_id = transfer.transfer_id
    assert not bench.partial_file(transfer_id).exists(), "the partial file was left behind"
    assert not bench.committed_file(transfer_id).exists()
    assert transfer_id not in bench.inbox()
    with bench.client() as client:
        status = client.transfer(transfer_id)
        assert status.state == common_pb2.TRANSFER_STATE_REFUSED
        assert not status.HasField("receipt")
        again = bench.seal(transfer.passport, transfer_id)
        assert_status(
            refused(lambda: client.offer(transfer.passport, again.header_bytes)),
            grpc.StatusCode.ALREADY_EXISTS,
            "already used",
            "refused",
        )


def full_segment(bench: Bench) -> bytes:
    return os.urandom(bench.segment_size)


def _offer_refused(
    bench: Bench,
    token: str,
    transfer: HandTransfer,
    identity: TlsIdentity | None,
) -> tuple[int, tuple[grpc.StatusCode, str]]:
    """Offer ``token`` with ``transfer``'s header; a log mark from just before, and the status."""
    mark = bench.log_mark()
    with bench.client_as(identity) as client:
        got = refused(lambda: client.offer(token, transfer.header_bytes))
    return mark, got


# --- the control: a correct transfer by the same hand-driven client -------------------------


def test_hand_driven_transfer_is_accepted(bench: Bench) -> None:
    transfer = bench.offered()
    data = os.urandom(2 * bench.segment_size + 123)
    manifest = transfer.manifest(data, bench.frankfurt.id)
    signed = rogue.sign_manifest(bench.lingang_signer, bench.lingang.id, manifest)
    with bench.client() as client:
        uploaded = client.upload(transfer.segments(data))
        assert (uploaded.next_segment, uploaded.received_bytes) == (3, len(data))
        assert uploaded.final_received
        receipt = client.finish(transfer.transfer_id, signed).receipt
    body = partner_pb2.ReceiptBody.FromString(receipt.body)
    assert body.plaintext_sha256 == hashlib.sha256(data).digest()
    assert transfer.transfer_id in bench.inbox()
    assert bench.committed_file(transfer.transfer_id).exists()
    assert not bench.partial_file(transfer.transfer_id).exists()


# --- who is calling --------------------------------------------------------------------------


def test_no_client_certificate(bench: Bench) -> None:
    """Mutual TLS is required: the handshake is refused before any handler runs.

    The server sends a TLS ``certificate_required`` alert; with TLS 1.3 the client learns it
    only on its first RPC, and grpcio reports it as ``UNAVAILABLE`` with no more than
    "Socket closed" -- the daemon never sees the call, so it has nothing to log.
    """
    jti, token = bench.passport()
    transfer = bench.seal(token, jti)
    mark, got = _offer_refused(bench, token, transfer, None)
    assert_status(got, grpc.StatusCode.UNAVAILABLE, bench.endpoint)
    assert_nothing_handled(bench, mark)
    assert_not_recorded(bench, jti)


def test_certificate_from_an_unknown_ca(bench: Bench, tmp_path: Path) -> None:
    """A well-formed certificate from a CA frankfurt does not trust fails the handshake.

    The partner listener's trust store is the union of the partner CAs, and client
    verification is part of the handshake: a chain to another root never reaches
    ``peer_partner``, so the answer is ``UNAVAILABLE``, not ``PERMISSION_DENIED`` -- even when
    the certificate names a real partner.
    """
    mallory_ca = DemoCa(tmp_path / "mallory-ca", "mallory CA")
    jti, token = bench.passport()
    transfer = bench.seal(token, jti)
    for name in ("mallory", bench.lingang.id):  # a stranger, and one posing as lingang
        mallory_ca.issue(name, tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        identity = TlsIdentity.load(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
        mark, got = _offer_refused(bench, token, transfer, identity)
        assert_status(got, grpc.StatusCode.UNAVAILABLE, bench.endpoint)
        assert_nothing_handled(bench, mark)
    assert_not_recorded(bench, jti)


def test_certificate_of_no_partner(bench: Bench) -> None:
    """A certificate from a trusted CA that names no partner passes TLS and is then refused.

    Frankfurt's own identity is one: issued by the shared demo CA, for "frankfurt", which is
    not a partner of frankfurt (its stand-in: the same name from the same CA).
    """
    identity = TlsIdentity.load(*bench.pair.frankfurt.paths.stand_in())
    jti, token = bench.passport()
    transfer = bench.seal(token, jti)
    mark, got = _offer_refused(bench, token, transfer, identity)
    details = assert_status(
        got, grpc.StatusCode.PERMISSION_DENIED, "frankfurt", "no configured partner"
    )
    assert_logged(
        bench, mark, "Offer", "PERMISSION_DENIED", "PeerNotAuthorizedError", details, partner=None
    )
    assert_not_recorded(bench, jti)


def test_health_answers_only_configured_partners(bench: Bench) -> None:
    """Health on the partner port: SERVING for lingang; for the certificate that names no
    partner, the same PERMISSION_DENIED as any other call (no probe of what runs there)."""
    request = health_pb2.HealthCheckRequest(service="")
    with bench.client_as(bench.lingang_tls) as client:
        answer = health_pb2_grpc.HealthStub(client.channel).Check(request, timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    identity = TlsIdentity.load(*bench.pair.frankfurt.paths.stand_in())
    mark = bench.log_mark()
    with bench.client_as(identity) as client:
        got = refused(lambda: health_pb2_grpc.HealthStub(client.channel).Check(request, timeout=10))
    details = assert_status(
        got, grpc.StatusCode.PERMISSION_DENIED, "frankfurt", "no configured partner"
    )
    assert_logged(
        bench, mark, "Health", "PERMISSION_DENIED", "PeerNotAuthorizedError", details, partner=None
    )


# --- the passport ----------------------------------------------------------------------------


def test_forged_passport(bench: Bench) -> None:
    """Signed by a key that is not the trusted issuer's, under the trusted key id."""
    jti = f"dpo_refusal-{uuid.uuid4().hex[:16]}"
    claims = rogue.claims(
        issuer=bench.pair.issuer.id,
        sender=bench.lingang.id,
        receiver=bench.frankfurt.id,
        src=bench.lingang.jurisdiction,
        dst=bench.frankfurt.jurisdiction,
        byte_limit=1 << 20,
        jti=jti,
    )
    token = rogue.hand_passport(claims, SoftwareHsm(), bench.pair.issuer.kid)
    mark, got = _offer_refused(bench, token, bench.seal(token, jti), bench.lingang_tls)
    details = assert_status(
        got, grpc.StatusCode.PERMISSION_DENIED, "signature does not verify", bench.pair.issuer.kid
    )
    assert_logged(bench, mark, "Offer", "PERMISSION_DENIED", "PassportSignatureError", details)
    assert_not_recorded(bench, jti)


# --- the segment stream ----------------------------------------------------------------------


def _upload_refused(
    bench: Bench, segments: list[partner_pb2.Segment]
) -> tuple[int, tuple[grpc.StatusCode, str]]:
    mark = bench.log_mark()
    with bench.client() as client:
        got = refused(lambda: client.upload(segments))
    return mark, got


def test_bit_flipped_segment(bench: Bench) -> None:
    transfer = bench.offered()
    damaged = transfer.segment(1, full_segment(bench), False)
    damaged.ciphertext = rogue.flip_bit(damaged.ciphertext, 8 * 1000 + 3)
    segments = [transfer.segment(0, full_segment(bench), False), damaged]
    mark, got = _upload_refused(bench, segments)
    details = assert_status(got, grpc.StatusCode.DATA_LOSS, "segment 1", "failed authentication")
    assert_logged(bench, mark, "Upload", "DATA_LOSS", "SegmentAuthenticationError", details)
    assert_resumable(bench, transfer.transfer_id, kept=segments[:1])


def test_stream_longer_than_the_passport_allows(bench: Bench) -> None:
    limit = bench.segment_size + bench.segment_size // 2
    transfer = bench.offered(byte_limit=limit)
    segments = [transfer.segment(i, full_segment(bench), False) for i in range(3)]
    mark, got = _upload_refused(bench, segments)
    details = assert_status(
        got, grpc.StatusCode.RESOURCE_EXHAUSTED, transfer.transfer_id, "limit", str(limit)
    )
    assert_logged(bench, mark, "Upload", "RESOURCE_EXHAUSTED", "ByteLimitError", details)
    assert_refused_for_good(bench, transfer)


def test_oversized_message(bench: Bench) -> None:
    """A Segment over max_message_bytes is refused with RESOURCE_EXHAUSTED and logged.

    Today gRPC itself refuses it ("Received message larger than max"), before the servicer
    sees it -- and the daemon logs nothing, because grpcio ends the request iterator as if
    the peer had half-closed. The refusal must still be in the daemon's log, with the limit.
    """
    transfer = bench.offered()
    oversized = partner_pb2.Segment(
        transfer_id=transfer.transfer_id,
        index=1,
        final=False,
        ciphertext=os.urandom(bench.max_message_bytes + 1),
    )
    segments = [transfer.segment(0, full_segment(bench), False), oversized]
    mark, got = _upload_refused(bench, segments)
    assert_status(
        got, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than", str(bench.max_message_bytes)
    )
    entry = assert_logged(bench, mark, "Upload", "RESOURCE_EXHAUSTED", None, None)
    assert str(bench.max_message_bytes) in entry["msg"], entry
    assert_resumable(bench, transfer.transfer_id, kept=segments[:1])


# --- the manifest ----------------------------------------------------------------------------


def _uploaded(bench: Bench) -> tuple[HandTransfer, bytes]:
    transfer = bench.offered()
    data = os.urandom(bench.segment_size + 999)
    with bench.client() as client:
        done = client.upload(transfer.segments(data))
    assert done.final_received
    return transfer, data


def test_manifest_digest_mismatch(bench: Bench) -> None:
    """Signed by lingang's real HSM key, but its plaintext SHA-256 is not what arrived."""
    transfer, data = _uploaded(bench)
    manifest = transfer.manifest(
        data, bench.frankfurt.id, plaintext_sha256=hashlib.sha256(data + b"!").digest()
    )
    signed = rogue.sign_manifest(bench.lingang_signer, bench.lingang.id, manifest)
    mark = bench.log_mark()
    with bench.client() as client:
        got = refused(lambda: client.finish(transfer.transfer_id, signed))
    details = assert_status(
        got, grpc.StatusCode.INVALID_ARGUMENT, "manifest disagrees", "plaintext SHA-256"
    )
    assert_logged(bench, mark, "Finish", "INVALID_ARGUMENT", "ManifestError", details)
    assert_refused_for_good(bench, transfer)


# --- the envelope header ---------------------------------------------------------------------

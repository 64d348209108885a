"""Two gateways in one process: a real Sender wired to a real Receiver, no sockets, no token.

What is real: ``Sender``, ``Receiver``, the ledger (SQLite in a temp directory), the spool,
the envelope, passports, manifests and receipts. What stands in: the HSM (``SoftwareHsm``,
the same operations in ``cryptography``) and the network (:class:`LoopbackLink`, which calls
the partner's receiver directly and turns its refusals into the ``PartnerError`` the gRPC
link would give). The link can also misbehave on purpose -- reorder, drop, duplicate,
flip or cut segments, or lose a reply after the partner acted -- so every protocol case of
the data path runs in milliseconds; what needs processes (signals, TLS, systemd, kill -9)
stays in ``tests/system``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import (
    Address,
    ComplianceConfig,
    GatewayConfig,
    HsmConfig,
    Identity,
    IssuerConfig,
    Limits,
    Listen,
    PartnerConfig,
    TlsConfig,
)
from gateway.errors import XbgwError
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger
from gateway.passport import issue
from gateway.passport_claims import PassportClaims, XbgwClaims, scoped_jti
from gateway.receiver import Receiver
from gateway.receiver.intake import Stripe
from gateway.secrets import PinSource
from gateway.sender import ReceiptSummary, Sender
from gateway.signed import Signed
from gateway.spool import Spool
from gateway.transfer import (
    FinishResult,
    OfferResult,
    SegmentIn,
    TransferState,
    TransferStatus,
    UploadResult,
    refused_by,
    unreachable,
)
from tests.fakes import SoftwareHsm

LINGANG = ("lingang", "CN-SH")
FRANKFURT = ("frankfurt", "EU-DE")
ISSUER = "dpo"
SEGMENT = 64  # small segments: many boundaries in a few hundred bytes


class LinkCut(Exception):
    """The network dropped the stream (what a reset connection is to a gRPC handler)."""


Segments = Iterator[SegmentIn]


@dataclass
class LoopbackLink:
    """A :class:`~gateway.transfer.PartnerLink` to receivers in this process.

    ``tamper`` rewrites the next upload's segment stream (once); ``lose_reply`` names calls
    whose reply is lost *after* the partner acted (the partner committed, the sender never
    heard); ``calls`` records what the sender asked, in order.
    """

    receivers: dict[str, tuple[Receiver, PartnerConfig]] = field(default_factory=dict)
    tamper: Callable[[Segments], Segments] | None = None
    lose_reply: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    #: ``tamper`` for one stripe of the next striped upload, by stripe index (once each).
    tamper_stripes: dict[int, Callable[[Segments], Segments]] = field(default_factory=dict)
    #: Partners that answer Deliver with UNIMPLEMENTED (older gateways); the link remembers
    #: the answer as the gRPC link does (``no_deliver_seen``), so each is asked once.
    no_deliver: set[str] = field(default_factory=set)
    no_deliver_seen: set[str] = field(default_factory=set)

    def _call(
        self,
        partner: PartnerConfig,
        call: str,
        act: Callable[[Receiver, PartnerConfig], object],
        step: list[str] | None = None,
    ) -> object:
        """``step``: a Deliver's steps as they start; its refusal is worded as the last one's
        (the gRPC link reads it from the partner's trailing metadata)."""
        self.calls.append(call)
        receiver, peer = self.receivers[partner.id]
        try:
            result = act(receiver, peer)
        except XbgwError as error:
            named = step[-1] if step else call
            raise refused_by(partner.id, named, error.grpc_status, str(error)) from None
        except LinkCut as cut:
            raise unreachable(partner.id, call, f"connection reset ({cut})") from None
        if call in self.lose_reply:
            self.lose_reply.discard(call)
            raise unreachable(partner.id, call, "connection reset before the reply")
        return result

    def key_set(self, partner: PartnerConfig) -> Signed:
        result = self._call(partner, "key_set", lambda r, _p: r.key_set())
        assert isinstance(result, Signed)
        return result

    def offer(self, partner: PartnerConfig, passport: str, header: bytes) -> OfferResult:
        result = self._call(partner, "offer", lambda r, p: r.offer(p, passport, header))
        assert isinstance(result, OfferResult)
        return result

    def upload(self, partner: PartnerConfig, segments: Segments) -> UploadResult:
        tamper, self.tamper = self.tamper, None
        stream = tamper(segments) if tamper is not None else segments
        result = self._call(partner, "upload", lambda r, p: r.upload(p, stream))
        assert isinstance(result, UploadResult)
        return result

    def upload_stripe(
        self,
        partner: PartnerConfig,
        segments: Segments,
        stripe: Stripe,
        on_abort: Callable[[Callable[[], object]], None],
    ) -> UploadResult:
        """One stripe, in the caller's thread (the sender runs each in its own). A cancel
        from the sender cuts the stream at its next segment, as gRPC's would."""
        cancelled: list[bool] = []
        on_abort(lambda: cancelled.append(True))
        tamper = self.tamper_stripes.pop(stripe.index, None)
        stream = tamper(segments) if tamper is not None else segments

        def cut_when_cancelled() -> Segments:
            for segment in stream:
                if cancelled:
                    raise LinkCut(f"stripe {stripe.index} cancelled by the sender")
                yield segment

        act = lambda r, p: r.upload(p, cut_when_cancelled(), stripe)  # noqa: E731
        result = self._call(partner, "upload", act)
        assert isinstance(result, UploadResult)
        return result

    def finish(self, partner: PartnerConfig, transfer_id: str, manifest: Signed) -> FinishResult:
        result = self._call(partner, "finish", lambda r, p: r.finish(p, transfer_id, manifest))
        assert isinstance(result, FinishResult)
        return result

    def deliver(
        self,
        partner: PartnerConfig,
        passport: str,
        header: bytes,
        segment: SegmentIn,
        manifest: Signed,
    ) -> FinishResult | None:
        if partner.id in self.no_deliver_seen:
            return None
        if partner.id in self.no_deliver:
            self.calls.append("deliver")
            self.no_deliver_seen.add(partner.id)
            return None
        tamper, self.tamper = self.tamper, None
        steps: list[str] = []

        def act(receiver: Receiver, peer: PartnerConfig) -> FinishResult:
            # The one segment meets the same faults as an upload's (a cut, a flipped bit).
            given = [segment] if tamper is None else list(tamper(iter([segment])))
            if len(given) != 1:
                raise LinkCut(f"the request carried {len(given)} segments")
            return receiver.deliver(peer, passport, header, given[0], manifest, steps.append)

        result = self._call(partner, "deliver", act, steps)
        assert isinstance(result, FinishResult)
        return result

    def status(self, partner: PartnerConfig, transfer_id: str) -> TransferStatus:
        result = self._call(partner, "status", lambda r, p: r.status(p, transfer_id))
        assert isinstance(result, TransferStatus)
        return result

    def cancel(self, partner: PartnerConfig, transfer_id: str, reason: str) -> TransferState:
        act = lambda r, p: r.ends().cancel(transfer_id, reason, p)  # noqa: E731
        result = self._call(partner, "cancel", act)
        assert isinstance(result, TransferState)
        return result


@dataclass
class Side:
    """One gateway: its configuration, keys, ledger, spool and both roles."""

    config: GatewayConfig
    keys: SoftwareHsm
    ledger: Ledger
    spool: Spool
    sender: Sender
    receiver: Receiver
    ring: KeyRing

    @property
    def id(self) -> str:
        return self.config.id


@dataclass
class Loopback:
    lingang: Side
    frankfurt: Side
    link: LoopbackLink
    issuer: SoftwareHsm
    now: list[float]  # the clock both sides read; tests move it
    #: issuers both sides trust besides ISSUER, by id (``make_loopback(more_issuers=...)``)
    more_issuers: Mapping[str, SoftwareHsm] = field(default_factory=dict)

    def passport(
        self,
        jti: str,
        *,
        byte_limit: int = 1 << 20,
        sub: str | None = None,
        sender: str = "lingang",
        to: str = "frankfurt",
        ttl: int = 3600,
        terms: Mapping[str, Any] | None = None,
        issuer: str = ISSUER,
    ) -> str:
        """``terms``: ``xbgw`` claims that replace the plain ones below (classification, pi,
        subjects, exporter, evidence, ...: the compliance facts). ``issuer``: ISSUER or one of
        ``more_issuers``; ``jti`` is the name, scoped to the issuer's id (``scoped_jti``)."""
        now = int(self.now[0])
        plain: dict[str, Any] = {
            "sender": sender,
            "src": LINGANG[1],
            "dst": FRANKFURT[1],
            "classification": "general",
            "pi": "none",
            "subjects": 0,
            "purpose": "loopback test",
            "legal_basis": "test",
            "byte_limit": byte_limit,
        }
        claims = PassportClaims(
            iss=issuer,
            jti=scoped_jti(issuer, jti),
            iat=now,
            nbf=now,
            exp=now + ttl,
            aud=to,
            sub=sub,
            xbgw=XbgwClaims(**{**plain, **(terms or {})}),
        )
        signer = self.issuer if issuer == ISSUER else self.more_issuers[issuer]
        return issue(claims, signer, KeyRef(issuer, Purpose.SIGNING, 1))

    def send(self, jti: str, data: bytes, *, chunk: int = 50, **passport: object) -> ReceiptSummary:
        """Send ``data`` from lingang to frankfurt under a new passport ``jti``."""
        token = self.passport(jti, **passport)  # type: ignore[arg-type]
        return self.resend(token, data, chunk=chunk)

    def resend(self, token: str, data: bytes, *, chunk: int = 50) -> ReceiptSummary:
        chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        return self.lingang.sender.send("frankfurt", token, iter(chunks), len(data))

    def fetch(self, transfer_id: str) -> bytes:
        """The committed plaintext at frankfurt, verified and decrypted from its spool."""
        import io

        from gateway.envelope import read_stream

        out = io.BytesIO()
        with self.frankfurt.spool.open_committed(transfer_id) as src:
            read_stream(src, out, self.frankfurt.id, self.frankfurt.keys)
        return out.getvalue()

    def frankfurt_node(self, ledger: Ledger, spool: Spool) -> Receiver:
        """Another receiving node of frankfurt, on ``ledger`` and ``spool`` (several nodes
        of one gateway share a PostgreSQL ledger and a spool): same config and keys, a key
        ring of its own, the loopback's clock."""
        side = self.frankfurt
        clock = lambda: self.now[0]  # noqa: E731
        ring = KeyRing(side.id, ledger, side.keys, side.config.keys, clock=clock)
        return Receiver(side.config, side.keys, ring, ledger, spool, clock=clock)

    def close(self) -> None:
        for side in (self.lingang, self.frankfurt):
            side.ledger.close()


class HoldsPublicKeys(Protocol):
    def public_key(self, purpose: Purpose, version: int) -> ec.EllipticCurvePublicKey: ...


def gateway_config(
    root: Path,
    me: tuple[str, str],
    peer: tuple[str, str],
    peer_keys: HoldsPublicKeys,
    issuer: HoldsPublicKeys,
    limits: Limits,
    compliance: ComplianceConfig | None = None,
    more_issuers: Mapping[str, HoldsPublicKeys] | None = None,
) -> GatewayConfig:
    """The configuration of one gateway wired in process to ``peer`` (a software or a real
    HSM: only their public keys are read); the benchmark of leaks uses it too."""
    unused = root / "unused"  # paths the in-process parts never open
    return GatewayConfig(
        path=root / "gateway.yaml",
        gateway=Identity(me[0], me[1]),
        listen=Listen(Address("127.0.0.1", 0), root / "local.sock"),
        tls=TlsConfig(unused, unused),
        hsm=HsmConfig(unused, "loopback", PinSource("env", "XBGW_LOOPBACK_PIN")),
        state_dir=root,
        partners=(
            PartnerConfig(
                id=peer[0],
                endpoint=Address("127.0.0.1", 1),
                jurisdiction=peer[1],
                ca=unused,
                ca_pem=b"",
                identity=f"{peer[0]}.example",
                signing_key=unused,
                signing_public_key=peer_keys.public_key(Purpose.SIGNING, 1),
            ),
        ),
        issuers=tuple(
            IssuerConfig(
                kid=KeyRef(issuer_id, Purpose.SIGNING, 1),
                public_key_path=unused,
                public_key=keys.public_key(Purpose.SIGNING, 1),
            )
            for issuer_id, keys in {ISSUER: issuer, **(more_issuers or {})}.items()
        ),
        limits=limits,
        compliance=compliance or ComplianceConfig(),
    )


def make_loopback(
    root: Path,
    limits: Limits | None = None,
    compliance: Mapping[str, ComplianceConfig] | None = None,
    more_issuers: tuple[str, ...] = (),
) -> Loopback:
    """lingang (CN-SH) and frankfurt (EU-DE), each sending to and receiving from the other.

    ``compliance``: a gateway's ``compliance:`` section by its id (default: the default one).
    ``more_issuers``: ids of passport issuers both trust besides ISSUER, each with its own key.
    """
    # No waiting for the partner unless a test asks: a cut or refusal fails the send at once.
    limits = limits or Limits(segment_size=SEGMENT, partner_wait_seconds=0)
    now = [float(int(time.time()))]
    clock = lambda: now[0]  # noqa: E731 - one shared, movable clock
    issuer = SoftwareHsm()
    others = {issuer_id: SoftwareHsm() for issuer_id in more_issuers}
    link = LoopbackLink()
    keys = {LINGANG[0]: SoftwareHsm(), FRANKFURT[0]: SoftwareHsm()}
    sides: dict[str, Side] = {}
    for me, peer in ((LINGANG, FRANKFURT), (FRANKFURT, LINGANG)):
        state = root / me[0]
        rules = (compliance or {}).get(me[0])
        config = gateway_config(state, me, peer, keys[peer[0]], issuer, limits, rules, others)
        mine = keys[me[0]]
        ledger = Ledger(state / "ledger.sqlite3")
        ring = KeyRing(me[0], ledger, mine, config.keys, clock=clock)
        spool = Spool(state / "spool")
        sides[me[0]] = Side(
            config=config,
            keys=mine,
            ledger=ledger,
            spool=spool,
            sender=Sender(config, mine, ring, ledger, link, clock=clock),
            receiver=Receiver(config, mine, ring, ledger, spool, clock=clock),
            ring=ring,
        )
    for me, peer in ((LINGANG, FRANKFURT), (FRANKFURT, LINGANG)):
        receiver_side = sides[peer[0]]
        link.receivers[peer[0]] = (receiver_side.receiver, receiver_side.config.partner(me[0]))
    return Loopback(sides[LINGANG[0]], sides[FRANKFURT[0]], link, issuer, now, others)


# --- segment stream faults (for LoopbackLink.tamper) -----------------------------------------


def cut_after(n: int) -> Callable[[Segments], Segments]:
    """The connection drops after ``n`` segments went out."""

    def tamper(segments: Segments) -> Segments:
        yield from itertools.islice(segments, n)
        raise LinkCut(f"after {n} segments")

    return tamper


def rewrite(change: Callable[[list[SegmentIn]], list[SegmentIn]]) -> Callable[[Segments], Segments]:
    """Collect the whole upload, let ``change`` reorder/drop/duplicate/flip, send the result."""

    def tamper(segments: Segments) -> Segments:
        yield from change(list(segments))

    return tamper


def flip(segment: SegmentIn, bit: int = 0) -> SegmentIn:
    data = bytearray(segment.ciphertext)
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return SegmentIn(segment.transfer_id, segment.index, segment.final, bytes(data))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()

"""The receiving side of a transfer: offer, upload, finish -- without gRPC.

The servicer in ``partner.py`` authenticates the mutual-TLS peer, turns wire messages into
calls here, and maps :mod:`gateway.errors` to statuses. Everything that decides lives here,
one module per step, each a unit a person can hold in mind:

* ``offer`` -- passport, parties, policy, single use; the data key re-wrapped at rest;
* ``upload`` -- segments in order into the spool, byte limit, durable resume points
  (``intake`` does the streaming);
* ``finish`` -- the manifest against what arrived; commit; the signed receipt;
* ``context`` -- what the steps share: ledger, spool, keys, the one-writer guard and the
  in-memory working set.

A refusal that cannot be fixed by resuming (byte limit, manifest mismatch) marks the transfer
refused for good and deletes its partial data; the passport stays spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import KeySet, sign_key_set
from gateway.keyring import KeyRing
from gateway.keys import Purpose
from gateway.ledger import Ledger
from gateway.passport import PassportVerifier
from gateway.policy import BaselinePolicy, Policy
from gateway.receiver.context import Context
from gateway.receiver.finish import finish as _finish
from gateway.receiver.offer import Offers
from gateway.receiver.upload import upload as _upload
from gateway.signed import Signed
from gateway.spool import Spool
from gateway.transfer import (
    GatewayKeys,
    OfferResult,
    SegmentIn,
    TransferStatus,
    UploadResult,
)

__all__ = ["Receiver"]


class Receiver:
    """Receiving-side domain logic of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: GatewayKeys,
        ring: KeyRing,
        ledger: Ledger,
        spool: Spool,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ctx = Context(config, keys, ring, ledger, spool, clock)
        self._offers = Offers(self._ctx)
        self._policy: Policy = policy or BaselinePolicy()
        #: Called as ``on_commit(partner_id, plaintext_bytes)`` once per newly committed
        #: transfer (metrics); not on an idempotent repeat of Finish.
        self.on_commit: Callable[[str, int], None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        """Adopt a new configuration (partners, issuers, limits); transfers in flight go on."""
        self._ctx.config = config
        self._verifier = PassportVerifier(
            config.trusted_issuer_keys(),
            audience=config.id,
            leeway_seconds=config.limits.passport_leeway_seconds,
            max_token_bytes=config.limits.max_passport_bytes,
            clock=self._ctx.clock,
        )

    @property
    def me(self) -> str:
        return self._ctx.me

    def offer(self, peer: PartnerConfig, token: str, header: bytes) -> OfferResult:
        return self._offers.offer(self._verifier, self._policy, peer, token, header)

    def upload(self, peer: PartnerConfig, segments: Iterable[SegmentIn]) -> UploadResult:
        return _upload(self._ctx, peer, segments)

    def finish(self, peer: PartnerConfig, transfer_id: str, manifest: Signed) -> Signed:
        return _finish(self._ctx, peer, transfer_id, manifest, self.on_commit)

    def status(self, peer: PartnerConfig, transfer_id: str) -> TransferStatus:
        row = self._ctx.owned(peer, transfer_id, "status")
        return TransferStatus(
            transfer_id=row.transfer_id,
            state=row.state,
            next_segment=row.next_segment,
            received_bytes=row.received_bytes,
            receipt=row.receipt,
        )

    def key_set(self) -> Signed:
        """Our transport public keys, signed by our signing key."""
        ctx = self._ctx
        keys = ctx.keys
        return sign_key_set(
            keys,
            ctx.signing_key(),
            KeySet(
                gateway_id=ctx.me,
                keys={
                    version: keys.public_key(Purpose.TRANSPORT, version)
                    for version in ctx.ring.in_service(Purpose.TRANSPORT)
                },
                current_version=ctx.ring.transport,
                issued_at=int(ctx.clock()),
            ),
        )

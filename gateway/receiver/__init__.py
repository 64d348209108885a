"""The receiving side of a transfer: offer, upload, finish -- without gRPC.

The servicer in ``partner.py`` authenticates the mutual-TLS peer, turns wire messages into
calls here, and maps :mod:`gateway.errors` to statuses. Everything that decides lives here,
one module per step, each a unit a person can hold in mind:

* ``offer`` -- passport, parties, policy, single use; the data key re-wrapped at rest;
* ``upload`` -- segments in order into the spool, byte limit, durable resume points
  (``intake`` does the streaming);
* ``finish`` -- the manifest against what arrived; commit; the signed receipt;
* ``deliver`` -- the three in one call, for a transfer of one segment;
* ``context`` -- what the steps share: ledger, spool, keys, the one-writer guard and the
  in-memory working set.

A refusal that cannot be fixed by resuming (byte limit, manifest mismatch) marks the transfer
refused for good and deletes its partial data; the passport stays spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit.checkpointer import Checkpointer
from gateway.compliance.border import Border
from gateway.config import GatewayConfig, PartnerConfig
from gateway.documents import EndorsedKeySet, KeySet, serve_key_set
from gateway.keyring import KeyRing
from gateway.keys import KeyState, Purpose
from gateway.ledger import Ledger
from gateway.partner_keys import PartnerKeys
from gateway.passport import PassportVerifier
from gateway.receiver.cancel import Ends
from gateway.receiver.context import Context
from gateway.receiver.deliver import deliver as _deliver
from gateway.receiver.finish import finish as _finish
from gateway.receiver.intake import Stripe
from gateway.receiver.offer import Offers
from gateway.receiver.upload import upload as _upload
from gateway.signed import Signed
from gateway.spool import Spool
from gateway.transfer import (
    CommitProof,
    FinishResult,
    GatewayKeys,
    OfferResult,
    SegmentIn,
    TransferStatus,
    UploadResult,
)

__all__ = ["Receiver"]


#: The longest a Finish waits for a checkpoint covering its commit (normally milliseconds).
PROOF_WAIT_SECONDS = 5.0


class Receiver:
    """Receiving-side domain logic of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        keys: GatewayKeys,
        ring: KeyRing,
        ledger: Ledger,
        spool: Spool,
        clock: Callable[[], float] = time.time,
        partner_keys: PartnerKeys | None = None,
        border: Border | None = None,
    ) -> None:
        """``partner_keys``: the gateway's one view of its partners' keys, shared with its
        sender (the daemon's can fetch key sets); without it, manifests verify under the
        configured keys and what the ledger learnt only."""
        partner_keys = partner_keys or PartnerKeys(config, ledger, None, clock)
        border = border or Border(config.compliance, ledger, clock)
        self._ctx = Context(config, keys, ring, ledger, spool, clock, partner_keys, border)
        self._offers = Offers(self._ctx)
        #: Signs the audit log's checkpoints; with it, Finish answers with the commit's proof.
        self.checkpointer: Checkpointer | None = None
        #: Called as ``on_commit(partner_id, plaintext_bytes)`` once per newly committed
        #: transfer (metrics); not on an idempotent repeat of Finish.
        self.on_commit: Callable[[str, int], None] | None = None
        self.reconfigure(config)

    def reconfigure(self, config: GatewayConfig) -> None:
        """Adopt a new configuration (partners, issuers, limits); transfers in flight go on."""
        self._ctx.config = config
        self._ctx.partner_keys.reconfigure(config)
        self._ctx.border.reconfigure(config.compliance)
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
        return self._offers.offer(self._verifier, peer, token, header)

    def upload(
        self,
        peer: PartnerConfig,
        segments: Iterable[SegmentIn],
        stripe: Stripe | None = None,
        *,
        owner_checked: bool = False,
    ) -> UploadResult:
        """``owner_checked``: as for :meth:`finish`."""
        return _upload(self._ctx, peer, segments, stripe, owner_checked=owner_checked)

    def end_stripes(self, sender: str, transfer_id: str, stripe: Stripe) -> None:
        """The call of ``stripe`` ended (the sender cancelled it, or it was answered): its
        striped upload attempt, if it still runs, ends now (``Context.end_stripes``)."""
        self._ctx.end_stripes(sender, transfer_id, stripe)

    def finish(
        self,
        peer: PartnerConfig,
        transfer_id: str,
        manifest: Signed,
        one_call: UploadResult | None = None,
        *,
        owner_checked: bool = False,
    ) -> FinishResult:
        """``owner_checked``: the caller knows ``transfer_id`` is ``peer``'s (``Deliver``: its
        own offer just said so), so the early ownership check is skipped (``finish``)."""
        done = _finish(
            self._ctx, peer, transfer_id, manifest, self.on_commit, one_call, owner_checked
        )
        return FinishResult(done.receipt, self._commit_proof(transfer_id, done.committed))

    def deliver(
        self,
        peer: PartnerConfig,
        token: str,
        header: bytes,
        segment: SegmentIn,
        manifest: Signed,
        on_step: Callable[[str], None] = lambda _: None,
    ) -> FinishResult:
        """Offer, upload and finish a one-segment transfer in one call (``deliver``)."""
        return _deliver(self, peer, token, header, segment, manifest, on_step)

    def _commit_proof(
        self, transfer_id: str, committed: tuple[int, bytes] | None = None
    ) -> CommitProof | None:
        """Where the commit is in our audit log, under the first checkpoint that covers it
        (waiting for it: the checkpointer signs at once for a waiting finish, and one
        signature serves every finish waiting at that moment). None without a checkpointer,
        or if none came in time -- the receipt stands on its own either way.

        ``committed``: (leaf index, record) of the commit this call just made; otherwise (a
        repeated Finish) both are read from the ledger."""
        checkpointer = self.checkpointer
        if checkpointer is None:
            return None
        ledger = self._ctx.ledger
        if committed is None:
            row = ledger.inbound(transfer_id)
            if row is None or row.audit_leaf is None:
                return None
            [committed] = ledger.audit_records(row.audit_leaf, row.audit_leaf + 1)
        leaf, record = committed
        signed = checkpointer.covering(leaf, PROOF_WAIT_SECONDS)
        if signed is None:
            return None
        inclusion = ledger.audit_inclusion(leaf, signed.size)
        return CommitProof(record, leaf, signed.note, tuple(inclusion))

    @contextmanager
    def hold(self, transfer_id: str) -> Iterator[None]:
        """Keep uploads and finishes away from ``transfer_id`` while its stored header is
        rewritten (``gateway.rewrap``); refused at once, as a second writer is, if one is at
        work. What is cached of the transfer is dropped: its header changes."""
        with self._ctx.busy(transfer_id, "rewrap"):
            try:
                yield
            finally:
                self._ctx.working.drop(transfer_id)

    def status(self, peer: PartnerConfig, transfer_id: str) -> TransferStatus:
        row = self._ctx.owned(peer, transfer_id, "status")
        return TransferStatus(
            transfer_id=row.transfer_id,
            state=row.state,
            next_segment=row.next_segment,
            received_bytes=row.received_bytes,
            receipt=row.receipt,
        )

    def ends(self) -> Ends:
        """Cancel, expiry and data deletion of inbound transfers (``receiver.cancel``)."""
        return Ends(self._ctx)

    def key_set(self) -> EndorsedKeySet:
        """Our key set (see ``documents``): the transport and signing keys in service with
        their states, signed by the active signing key and endorsed by each verify-only one,
        so that a partner that trusts any of our signing keys in service follows the active
        one. Each purpose is read from one snapshot of the ring: a rotation running meanwhile
        cannot make it list an active version that is not among its keys."""
        ctx = self._ctx
        transport, current = self._published(Purpose.TRANSPORT)
        signing, active = self._published(Purpose.SIGNING)
        return serve_key_set(
            ctx.keys,
            KeySet(
                gateway_id=ctx.me,
                keys=transport,
                current_version=current,
                issued_at=int(ctx.clock()),
                signing_keys=signing,
                signing_version=active,
            ),
        )

    def _published(self, purpose: Purpose) -> tuple[dict[int, ec.EllipticCurvePublicKey], int]:
        """The public keys of ``purpose`` in service, and the active version."""
        versions = [v for v in self._ctx.ring.versions(purpose) if v.state.in_service]
        active = next(v.version for v in versions if v.state is KeyState.ACTIVE)
        keys = self._ctx.keys
        return {v.version: keys.public_key(purpose, v.version) for v in versions}, active

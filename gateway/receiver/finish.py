"""The finish: check the sender's manifest against what arrived, commit, sign a receipt.

The manifest is verified under the sender's key history (``partner_keys``: the pinned key and
the keys followed from it) before it is read, then compared field by field with what this
gateway received (and with the passport's data set digest, kept at the offer). A
disagreement refuses the transfer for good. Otherwise the spool file moves into the inbox
atomically, the ledger commits, and the receipt -- signed in the HSM -- goes back. A repeated
Finish with the same manifest gets the same receipt (the sender lost it).

A transfer commits within its passport: once ``exp`` plus ``limits.passport_leeway_seconds``
has passed, Finish is refused (PERMISSION_DENIED, as an expired passport is at the offer;
audited as ``call.refused``) and nothing commits -- checked when the finish starts and again
just before the commit. Only the repeat of a commit made in time still gets its receipt.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.audit.records import AuditRecord
from gateway.config import PartnerConfig
from gateway.documents import Manifest, Receipt, read_manifest, read_own_receipt, sign_receipt
from gateway.errors import ManifestError, TransferConflictError
from gateway.receiver.cancel import refuse_ended, refuse_late
from gateway.receiver.context import Context
from gateway.receiver.upload import held_hash
from gateway.signed import Signed
from gateway.transfer import TransferState, UploadResult

log = logging.getLogger("xbgw.receiver")


@dataclass(frozen=True)
class Finished:
    """The receipt, and where this call's commit went in the audit log: (leaf index, record)
    -- so that the commit proof is built from what was just written, without reading the row
    and the record back. None for a repeated Finish (read from the ledger then)."""

    receipt: Signed
    committed: tuple[int, bytes] | None = None


def finish(
    ctx: Context,
    peer: PartnerConfig,
    transfer_id: str,
    signed_manifest: Signed,
    on_commit: Callable[[str, int], None] | None,
    one_call: UploadResult | None = None,
    owner_checked: bool = False,
) -> Finished:
    """``one_call``: what the upload of the same ``Deliver`` call took, its save point left
    to this commit (``intake.OneCall``). ``owner_checked``: the caller has just seen the row
    be ``peer``'s (``Deliver``'s own offer), so the early check is not read again; the one
    under the guard always is."""
    if not owner_checked:
        ctx.owned(peer, transfer_id, "finish")  # before the guard: no oracle for others' ids
    # Under the sender's key history; a version not learnt yet fetches its key set -- a network
    # call, so before the guard.
    ctx.partner_keys.verify(peer, signed_manifest, "manifest")
    manifest = read_manifest(signed_manifest)
    with ctx.busy(transfer_id, "finish", peer.id):
        row = ctx.owned(peer, transfer_id, "finish")
        if row.state is TransferState.COMMITTED and row.receipt is not None:
            if read_own_receipt(row.receipt, ctx.me).manifest_digest != signed_manifest.digest:
                raise ManifestError(f"transfer {transfer_id} was committed with another manifest")
            return Finished(row.receipt)
        refuse_ended(row)
        refuse_late(ctx, row, "finish")
        if row.state is not TransferState.RECEIVING:
            raise TransferConflictError(f"transfer {transfer_id} is {row.state}")
        final = None
        if one_call is not None and one_call.final_received and row.next_segment == 0:
            final = (one_call.next_segment, one_call.received_bytes)
            row = dataclasses.replace(
                row, next_segment=final[0], received_bytes=final[1], final_received=True
            )
        if not row.final_received:
            raise TransferConflictError(
                f"transfer {transfer_id} is incomplete: next segment is {row.next_segment}; "
                "resume the upload before sending the manifest"
            )
        header = ctx.working.header(row)
        # The upload's running hash when it is held: then the data key is not needed, and
        # not unwrapped in the HSM (held_hash would only recompute with it).
        hasher = ctx.working.take_hasher(row, ctx.spool.fingerprint(transfer_id))
        if hasher is None:
            hasher = held_hash(ctx, row, header, ctx.data_key(row))
        arrived = Manifest(
            transfer_id=row.transfer_id,
            sender=row.sender,
            receiver=ctx.me,
            header_core_digest=header.core_digest(),
            passport_digest=row.passport_digest,
            plaintext_sha256=hasher.digest(),
            plaintext_size=row.received_bytes,
            segment_count=row.next_segment,
        )
        problems = manifest.differences(arrived)
        if row.dataset_sha256 is not None and row.dataset_sha256 != arrived.plaintext_sha256.hex():
            problems.append("data set SHA-256 is not the passport's sub")
        if problems:
            reason = "manifest disagrees with what arrived: " + "; ".join(problems)
            if final is not None:  # the row says what arrived, as after three calls
                ctx.ledger.record_progress(transfer_id, *final, True)
            ctx.refuse(transfer_id, peer.id, reason, ManifestError.__name__)
            raise ManifestError(reason)
        refuse_late(ctx, row, "finish")  # again: the hash above may have taken a while
        committed_at = int(ctx.clock())
        receipt = sign_receipt(
            ctx.keys,
            ctx.signing_key(),
            Receipt(
                transfer_id=transfer_id,
                sender=peer.id,
                receiver=ctx.me,
                manifest_digest=signed_manifest.digest,
                plaintext_sha256=arrived.plaintext_sha256,
                plaintext_size=arrived.plaintext_size,
                passport_digest=row.passport_digest,
                committed_at=committed_at,
            ),
        )
        if not ctx.spool.holds(transfer_id):
            raise ctx.restart(row, "is gone")
        ctx.spool.commit(transfer_id)
        record = AuditRecord(
            "transfer.committed",
            committed_at,
            {
                "transfer_id": transfer_id,
                "partner": peer.id,
                "passport_digest": row.passport_digest.hex(),
                "manifest_digest": signed_manifest.digest.hex(),
                "plaintext_sha256": arrived.plaintext_sha256.hex(),
                "plaintext_size": arrived.plaintext_size,
                "receipt_digest": receipt.digest.hex(),
                "receipt_key": receipt.kid,
            },
        )
        encoded = record.encode(ctx.me)
        leaf = ctx.ledger.commit_inbound(
            transfer_id, arrived.plaintext_sha256, receipt, committed_at, encoded, final
        )
        ctx.working.drop(transfer_id)
    if on_commit is not None:
        on_commit(peer.id, row.received_bytes)
    log.info(
        "transfer committed",
        extra={
            "transfer_id": transfer_id,
            "partner": peer.id,
            "outcome": "committed",
            "bytes": row.received_bytes,
        },
    )
    return Finished(receipt, None if leaf is None else (leaf, encoded))

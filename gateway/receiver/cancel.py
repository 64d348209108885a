"""The end of an inbound transfer other than its commit: cancelled, expired, or its data
deleted once committed.

Why here, next to offer, upload and finish: each of these takes the same one-writer guard
(``Context.busy``), so a cancel never lands in the middle of a stream or a commit -- a
transfer being received right now is refused as busy (the sender retries; an operator
cancels again once the stream has ended). What ends goes for good: the ledger row stays,
with who ended it, when and why, and an audit record; the partial or committed file and the
stored data key go. A later offer, upload or finish is refused with the reason
(:func:`refuse_ended`).
"""

from __future__ import annotations

import hashlib
import logging
import os

from gateway.audit.records import AuditRecord
from gateway.config import PartnerConfig
from gateway.errors import (
    PassportExpiredError,
    StorageError,
    TransferConflictError,
    TransferEndedError,
    TransferError,
    UnknownTransferError,
    UsageError,
)
from gateway.ledger import Inbound, Outbound
from gateway.receiver.context import Context, when
from gateway.transfer import TransferState

log = logging.getLogger("xbgw.receiver")

#: The longest reason an operator may give (it is shown to the partner and kept in the ledger).
MAX_REASON = 500


def check_reason(reason: str) -> str:
    """An operator's reason: printable, one line, at most ``MAX_REASON`` characters."""
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise UsageError(
            f"a cancel reason must be one printable line of at most {MAX_REASON} characters"
        )
    return reason


def reason_digest(reason: str) -> str:
    return hashlib.sha256(reason.encode("utf-8")).hexdigest()


def ended_message(transfer_id: str, state: TransferState, at: int, by: str | None,
                  reason: str | None, exp: int | None = None) -> str:  # fmt: skip
    """Why an ended transfer takes nothing more, in the same words on both sides."""
    if state is TransferState.CANCELLED:
        why = f" ({reason})" if reason else ""
        return (
            f"transfer {transfer_id} was cancelled by {by} at {when(at)}{why}; it cannot be "
            "resumed: send the data again under a new passport"
        )
    valid = f" (its passport expired at {when(exp)})" if exp else ""
    return (
        f"transfer {transfer_id} expired unfinished at {when(at)}{valid}; send the data "
        "again under a new passport"
    )


def ended_error(row: Inbound | Outbound) -> TransferEndedError | None:
    """Why a transfer that ended (cancelled, expired) takes nothing more; None if it did not."""
    if row.ended is None:
        return None
    ended = row.ended
    message = ended_message(
        row.transfer_id, row.state, ended.at, ended.by, ended.reason, row.expires_at
    )
    return TransferEndedError(message)


def refuse_ended(row: Inbound) -> None:
    """The hook of offer, upload and finish: a cancelled or expired transfer takes nothing."""
    if row.state.ended and (error := ended_error(row)) is not None:
        raise error


def refuse_late(ctx: Context, row: Inbound, doing: str) -> None:
    """The other hook of upload and finish: a transfer finishes within its passport.

    Refused once ``exp`` plus ``limits.passport_leeway_seconds`` has passed -- the rule the
    offer applies (``PassportVerifier``), with the same status -- so a stream opened in time
    cannot run on past it. The refusal is audited (``call.refused``, as a refused offer is)
    and changes nothing: what is held stays until the expiry sweep
    (``retention.unfinished_grace``) ends the transfer. A row from before schema 6 whose
    passport could not be read has no ``expires_at`` and is not checked.
    """
    if row.expires_at is None:
        return
    leeway = ctx.config.limits.passport_leeway_seconds
    now = ctx.clock()
    if now < row.expires_at + leeway:
        return
    error = PassportExpiredError(
        f"passport {row.transfer_id} expired at {when(row.expires_at)} (leeway {leeway} s "
        f"also passed); the {doing} is refused: a transfer must finish within its passport; "
        "send the data again under a new passport"
    )
    record = AuditRecord(
        "call.refused",
        int(now),
        {
            "transfer_id": row.transfer_id,
            "partner": row.sender,
            "call": doing,
            "error": type(error).__name__,
            "status": error.grpc_status,
            "passport_exp": row.expires_at,
        },
    )
    ctx.ledger.append_audit(record.encode(ctx.me))
    log.warning(
        "%s refused: the passport expired at %s",
        doing,
        when(row.expires_at),
        extra={"transfer_id": row.transfer_id, "partner": row.sender, "outcome": "refused"},
    )
    raise error


class Ends:
    """Cancel, expiry and data deletion of one receiver's transfers."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def cancel(self, transfer_id: str, reason: str, peer: PartnerConfig | None) -> TransferState:
        """Cancel an unfinished inbound transfer; the state it is in afterwards (CANCELLED,
        or EXPIRED or REFUSED if it had ended before: nothing to do).

        ``peer``: the partner's own cancel (``PartnerGateway.Cancel``) -- only the transfer's
        sender may, and another partner's transfer is as unknown as none; None: this
        gateway's operator (``xbgw cancel``). A committed transfer cannot be cancelled;
        a transfer being received right now is busy (``TransferConflictError``: retry)."""
        ctx = self._ctx
        check_reason(reason)
        row = self._row(transfer_id, peer)
        if row.state is TransferState.RECEIVING:
            with ctx.busy(transfer_id, "cancel", row.sender):
                row = self._row(transfer_id, peer)  # current under the guard
                if row.state is TransferState.RECEIVING:
                    self._end(row, TransferState.CANCELLED, peer.id if peer else ctx.me, reason)
                    return TransferState.CANCELLED
        if row.state is TransferState.COMMITTED:
            assert row.committed_at is not None
            delete = f"`xbgw inbox delete {transfer_id}`"
            who = f"ask {ctx.me}'s operator to run {delete}" if peer else f"run {delete}"
            raise TransferError(
                f"transfer {transfer_id} was committed at {when(row.committed_at)} and cannot "
                f"be cancelled; to remove its data, {who}"
            )
        return row.state

    def expire(self, transfer_id: str) -> bool:
        """Expire an unfinished transfer (the sweep found its passport past exp + grace);
        False if it is busy (the next sweep tries again) or no longer unfinished."""
        ctx = self._ctx
        try:
            with ctx.busy(transfer_id, "expire"):
                row = ctx.ledger.inbound(transfer_id)
                if row is None or row.state is not TransferState.RECEIVING:
                    return False
                return self._end(row, TransferState.EXPIRED, None, None)
        except TransferConflictError:
            return False

    def _row(self, transfer_id: str, peer: PartnerConfig | None) -> Inbound:
        if peer is not None:
            return self._ctx.owned(peer, transfer_id, "cancel")
        row = self._ctx.ledger.inbound(transfer_id)
        if row is None:
            raise UnknownTransferError(f"no transfer {transfer_id!r} here")
        return row

    def _end(self, row: Inbound, state: TransferState, by: str | None, reason: str | None) -> bool:
        ctx = self._ctx
        at = int(ctx.clock())
        if state is TransferState.CANCELLED:
            record = AuditRecord(
                "transfer.cancelled",
                at,
                {
                    "transfer_id": row.transfer_id,
                    "partner": row.sender,
                    "direction": "in",
                    "by": by,
                    "reason_sha256": reason_digest(reason or ""),
                },
            )
        else:
            record = AuditRecord(
                "transfer.expired",
                at,
                {
                    "transfer_id": row.transfer_id,
                    "partner": row.sender,
                    "direction": "in",
                    "passport_exp": row.expires_at or 0,
                },
            )
        done = ctx.ledger.end_transfer(
            "in", row.transfer_id, state, at, by, reason, record.encode(ctx.me)
        )
        ctx.spool.discard(row.transfer_id)
        ctx.working.drop(row.transfer_id)
        if done:
            log.warning(
                "transfer %s%s",
                state.value,
                f" by {by}" if by else "",
                extra={"transfer_id": row.transfer_id, "partner": row.sender, "outcome": state},
            )
        return done

    def delete_data(self, transfer_id: str, cause: str) -> bool:
        """Remove a committed transfer's data (``cause``: "operator" or a retention rule);
        False if it was deleted before. Busy (a repeated finish, a rewrap): refused, retry."""
        ctx = self._ctx
        with ctx.busy(transfer_id, "delete"):
            record = AuditRecord(
                "inbox.deleted", int(ctx.clock()), {"transfer_id": transfer_id, "cause": cause}
            )
            done = ctx.ledger.delete_inbox_data(
                transfer_id, int(ctx.clock()), cause, record.encode(ctx.me)
            )
            _unlink(ctx.spool.committed_path(transfer_id))
        if done:
            log.info(
                "inbox data deleted (%s)",
                cause,
                extra={"transfer_id": transfer_id, "outcome": "deleted"},
            )
        return done

    def remove_leftovers(self) -> int:
        """Files whose transfer's data must not be held any more (a crash came between the
        ledger's decision and the file's removal): removed; how many."""
        spool = self._ctx.spool
        found: dict[str, list[str]] = {}
        for directory, suffix in ((spool.incoming, ".part"), (spool.inbox, ".xbgw")):
            try:
                names = os.listdir(directory)
            except OSError as exc:
                raise StorageError.from_exception(exc, directory) from None
            for name in names:
                if name.endswith(suffix):
                    found.setdefault(name[: -len(suffix)], []).append(str(directory / name))
        removed = 0
        for transfer_id in self._ctx.ledger.without_data(sorted(found)):
            for path in found[transfer_id]:
                _unlink_path(path)
                removed += 1
        return removed


def _unlink(path: os.PathLike[str]) -> None:
    _unlink_path(os.fspath(path))


def _unlink_path(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove {path} ({exc.strerror or exc})") from None

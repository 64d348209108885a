"""The data lifecycle: cancel, expiry, inbox acknowledgement and deletion, retention.

Why one module: each is the same decision seen from a different trigger -- "this data is no
longer to be held" -- with the same rules: the ledger row stays (with who, when and why), an
audit record is written in the same transaction, and only then does the file go (a crash in
between leaves a file the next sweep removes). The receiving side's steps are in
``receiver.cancel`` (they share its one-writer guard); this module adds the sending side,
the operator's requests and the periodic sweep.

* **Cancel** (``xbgw cancel``): an unfinished send is marked CANCELLED and its stored data
  key dropped; the partner is told (best effort: unreachable, it expires the transfer later).
  A send running right now is refused as busy -- the operator stops it (or lets it fail) and
  cancels again: cutting a running stream from here could leave the partner committing what
  we call cancelled. A delivered transfer cannot be cancelled.
* **Expiry**: an unfinished transfer, either side, expires ``retention.unfinished_grace``
  after its passport's ``exp`` (it can never finish: both sides refuse an expired passport).
* **Retention**: an inbox item's data goes ``retention.fetched`` after its first complete
  fetch, ``retention.acknowledged`` after ``xbgw inbox ack``, ``retention.unfetched`` after
  its commit (0: never by that rule).

The :class:`Sweeper` runs :meth:`Lifecycle.sweep` once at start and every
``retention.sweep_every`` seconds; the lifecycle reads the time from a clock a test can move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

from gateway.audit.records import AuditRecord
from gateway.config import GatewayConfig, RetentionConfig
from gateway.errors import (
    PartnerError,
    TransferBusyError,
    TransferConflictError,
    TransferEndedError,
    TransferError,
    UnknownTransferError,
    XbgwError,
)
from gateway.ledger import Inbound, Ledger, Outbound
from gateway.receiver.cancel import (
    Ends,
    check_reason,
    ended_error,
    reason_digest,
)
from gateway.receiver.context import when
from gateway.transfer import PartnerLink, TransferState, transient

log = logging.getLogger("xbgw.retention")

#: How long a cancel keeps trying to tell a partner that is busy with the transfer or briefly
#: unreachable, before it reports "not told" (the partner then expires the transfer itself).
TELL_PARTNER_SECONDS = 5.0
_TELL_BACKOFF = (0.1, 1.0)


@dataclass(frozen=True)
class Cancelled:
    """The answer to ``xbgw cancel``."""

    transfer_id: str
    direction: str  # "in" or "out"
    state: TransferState
    partner_told: bool = False
    detail: str = ""


@dataclass(frozen=True)
class Changed:
    """The answer to ``xbgw inbox ack|delete``: what this request changed, what was so
    already."""

    changed: list[str]
    unchanged: list[str]


@dataclass
class SweepReport:
    expired: int = 0
    deleted: int = 0
    leftovers: int = 0
    busy: int = 0  # skipped: worked on right now (the next sweep tries again)
    failed: int = 0


class Lifecycle:
    """Cancel, ack, delete and the sweep, for one gateway."""

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        ledger: Ledger,
        ends: Ends,
        hold_outbound: Callable[[str], AbstractContextManager[None]],
        link: PartnerLink,
        clock: Callable[[], float] = time.time,
        tell_seconds: float = TELL_PARTNER_SECONDS,
    ) -> None:
        """``hold_outbound``: the sender's guard (``Sender.hold``), refused while a send of
        the transfer runs; ``ends``: the receiver's (``Receiver.ends()``)."""
        self._config = config
        self._ledger = ledger
        self._ends = ends
        self._hold_outbound = hold_outbound
        self._link = link
        self._clock = clock
        self._tell_seconds = tell_seconds

    @property
    def me(self) -> str:
        return self._config().id

    # -- cancel ----------------------------------------------------------------------------

    def cancel(self, transfer_id: str, reason: str) -> Cancelled:
        """Cancel a transfer of ours, either way; an unfinished one is found first (a
        transfer id is a passport's jti: both directions can hold one only by accident)."""
        check_reason(reason)
        outbound = self._ledger.outbound(transfer_id)
        inbound = self._ledger.inbound(transfer_id)
        if outbound is not None and (inbound is None or not _open_in(inbound)):
            return self._cancel_outbound(outbound, reason)
        if inbound is not None:
            return self._cancel_inbound(inbound, reason)
        raise UnknownTransferError(f"no transfer {transfer_id!r} here, sent or received")

    def _cancel_inbound(self, row: Inbound, reason: str) -> Cancelled:
        transfer_id = row.transfer_id
        if row.state is TransferState.CANCELLED:
            return Cancelled(transfer_id, "in", row.state, detail=_already(row))
        try:
            state = self._ends.cancel(transfer_id, reason, None)
        except TransferConflictError:
            raise TransferBusyError(
                f"transfer {transfer_id} is being received right now (a stream from "
                f"{row.sender} is open); cancel again once it has ended"
            ) from None
        if state is not TransferState.CANCELLED:
            refuse_final(self._ledger.inbound(transfer_id) or row)
        return Cancelled(transfer_id, "in", state)

    def _cancel_outbound(self, row: Outbound, reason: str) -> Cancelled:
        transfer_id = row.transfer_id
        if row.state is TransferState.DELIVERED:
            assert row.delivered_at is not None
            raise TransferError(
                f"transfer {transfer_id} was delivered to {row.partner} at "
                f"{when(row.delivered_at)} and cannot be cancelled; to remove the data there, "
                f"ask {row.partner}'s operator to run `xbgw inbox delete {transfer_id}`"
            )
        if row.state is TransferState.CANCELLED:
            told, detail = self._tell(row, (row.ended.reason if row.ended else None) or "")
            return Cancelled(transfer_id, "out", row.state, told, _join(_already(row), detail))
        if row.state is not TransferState.SENDING:
            refuse_final(row)
        try:
            with self._hold_outbound(transfer_id):
                # Told first, while no send can start: a partner that has committed it (the
                # receipt was lost) makes the cancel wrong -- the data is delivered.
                told, detail = self._tell(row, reason)
                at = int(self._clock())
                record = AuditRecord(
                    "transfer.cancelled",
                    at,
                    {
                        "transfer_id": transfer_id,
                        "partner": row.partner,
                        "direction": "out",
                        "by": self.me,
                        "reason_sha256": reason_digest(reason),
                    },
                )
                self._ledger.end_transfer(
                    "out",
                    transfer_id,
                    TransferState.CANCELLED,
                    at,
                    self.me,
                    reason,
                    record.encode(self.me),
                )
        except TransferConflictError:
            raise TransferBusyError(
                f"transfer {transfer_id} is being sent right now: stop that send (Ctrl-C on "
                "`xbgw send`) or let it fail, then cancel again"
            ) from None
        log.warning(
            "transfer cancelled%s",
            "" if told else f"; the partner was not told: {detail}",
            extra={"transfer_id": transfer_id, "partner": row.partner, "outcome": "cancelled"},
        )
        return Cancelled(transfer_id, "out", TransferState.CANCELLED, told, detail)

    def _tell(self, row: Outbound, reason: str) -> tuple[bool, str]:
        """Tell the partner (retrying briefly while it is busy or unreachable): (told, why
        not). A partner that committed the transfer refuses -- and so does this cancel."""
        partner = next((p for p in self._config().partners if p.id == row.partner), None)
        if partner is None:
            return False, f"partner {row.partner} is no longer configured; it expires it itself"
        deadline = time.monotonic() + self._tell_seconds
        pause = _TELL_BACKOFF[0]
        while True:
            try:
                state = self._link.cancel(partner, row.transfer_id, reason)
            except PartnerError as exc:
                if transient(exc) and time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, _TELL_BACKOFF[1])
                    continue
                if " was committed at " in str(exc) and row.state is TransferState.SENDING:
                    raise TransferError(
                        f"{exc}. The transfer is delivered (its receipt was lost): send it "
                        "again to collect the receipt"
                    ) from None
                return False, f"{exc}; it expires the transfer itself"
            if state is TransferState.CANCELLED:
                return True, ""
            return True, f"partner {partner.id} had already ended it ({state.value})"

    # -- inbox ---------------------------------------------------------------------------

    def acknowledge(self, transfer_ids: Iterable[str]) -> Changed:
        """``xbgw inbox ack``: every id must be in the inbox, or nothing changes."""
        rows = self._inbox_rows(transfer_ids, deleted_ok=True)
        changed: list[str] = []
        unchanged: list[str] = []
        for row in rows:
            at = int(self._clock())
            record = AuditRecord("inbox.acknowledged", at, {"transfer_id": row.transfer_id})
            done = self._ledger.acknowledge_inbox(row.transfer_id, at, record.encode(self.me))
            (changed if done else unchanged).append(row.transfer_id)
        return Changed(changed, unchanged)

    def delete(self, transfer_ids: Iterable[str]) -> Changed:
        """``xbgw inbox delete``: the data goes now; every id must be in the inbox (or
        deleted before), or nothing changes."""
        rows = self._inbox_rows(transfer_ids, deleted_ok=True)
        changed: list[str] = []
        unchanged: list[str] = []
        for row in rows:
            try:
                done = self._ends.delete_data(row.transfer_id, "operator")
            except TransferConflictError:
                raise TransferBusyError(
                    f"transfer {row.transfer_id} is busy (a rewrap or a repeated finish); "
                    f"delete it again shortly (done so far: {', '.join(changed) or 'none'})"
                ) from None
            (changed if done else unchanged).append(row.transfer_id)
        return Changed(changed, unchanged)

    def _inbox_rows(self, transfer_ids: Iterable[str], deleted_ok: bool) -> list[Inbound]:
        rows: list[Inbound] = []
        for transfer_id in dict.fromkeys(transfer_ids):
            row = self._ledger.inbound(transfer_id)
            if row is None or row.state is not TransferState.COMMITTED:
                raise UnknownTransferError(
                    f"no committed transfer {transfer_id!r} in the inbox; nothing was changed"
                )
            rows.append(row)
        if not rows:
            raise UnknownTransferError("name at least one transfer of the inbox")
        return rows

    # -- the sweep -------------------------------------------------------------------------

    def sweep(self) -> SweepReport:
        """Expire what can never finish, remove what retention says, and any file whose
        data must not be held; one item's failure is logged and the sweep goes on."""
        retention = self._config().retention
        now = int(self._clock())
        report = SweepReport()
        for direction, transfer_id, _partner, _exp in self._ledger.unfinished_before(
            now - retention.unfinished_grace
        ):
            self._sweep_one(report, transfer_id, partial(self._expire, direction, transfer_id))
        for transfer_id, rule in self._ledger.inbox_due(
            now, retention.fetched, retention.acknowledged, retention.unfetched
        ):
            self._sweep_one(report, transfer_id, partial(self._retire, transfer_id, rule))
        try:
            report.leftovers = self._ends.remove_leftovers()
        except XbgwError as exc:
            report.failed += 1
            log.error("sweep: leftover files not removed: %s", exc)
        if report.expired or report.deleted or report.leftovers or report.failed:
            log.info(
                "sweep: %d expired, %d inbox items deleted, %d leftover files removed, "
                "%d busy, %d failed",
                report.expired,
                report.deleted,
                report.leftovers,
                report.busy,
                report.failed,
            )
        return report

    def _sweep_one(self, report: SweepReport, transfer_id: str, act: Callable[[], str]) -> None:
        try:
            outcome = act()
        except XbgwError as exc:
            report.failed += 1
            log.error("sweep: %s", exc, extra={"transfer_id": transfer_id, "outcome": "failed"})
            return
        if outcome == "expired":
            report.expired += 1
        elif outcome == "deleted":
            report.deleted += 1
        elif outcome == "busy":
            report.busy += 1

    def _expire(self, direction: str, transfer_id: str) -> str:
        if direction == "in":
            return "expired" if self._ends.expire(transfer_id) else "busy"
        row = self._ledger.outbound(transfer_id)
        if row is None or row.state is not TransferState.SENDING:
            return "gone"
        try:
            with self._hold_outbound(transfer_id):
                at = int(self._clock())
                record = AuditRecord(
                    "transfer.expired",
                    at,
                    {
                        "transfer_id": transfer_id,
                        "partner": row.partner,
                        "direction": "out",
                        "passport_exp": row.expires_at or 0,
                    },
                )
                done = self._ledger.end_transfer(
                    "out", transfer_id, TransferState.EXPIRED, at, audit=record.encode(self.me)
                )
        except TransferConflictError:
            return "busy"
        if done:
            log.warning(
                "transfer expired unfinished",
                extra={"transfer_id": transfer_id, "partner": row.partner, "outcome": "expired"},
            )
        return "expired" if done else "gone"

    def _retire(self, transfer_id: str, rule: str) -> str:
        try:
            return "deleted" if self._ends.delete_data(transfer_id, rule) else "gone"
        except TransferConflictError:
            return "busy"


def deleted_message(row: Inbound, retention: RetentionConfig) -> str:
    """Why a committed transfer's data cannot be fetched any more."""
    assert row.deleted_at is not None
    cause = row.deleted_cause or "operator"
    if cause == "operator":
        how = "by an operator (xbgw inbox delete)"
    else:
        how = f"(retention: {cause} {_duration(getattr(retention, cause, 0))})"
    return (
        f"the data of transfer {row.transfer_id} was deleted on {when(row.deleted_at)} {how}; "
        "its receipt and records are kept, the data cannot be fetched"
    )


class Sweeper:
    """Runs ``lifecycle.sweep()`` once at start and every ``every()`` seconds, in a thread."""

    def __init__(self, lifecycle: Lifecycle, every: Callable[[], int]) -> None:
        self._lifecycle = lifecycle
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xbgw-sweeper", daemon=True)
        self.sweeps = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._lifecycle.sweep()
            except Exception:  # a sweep must never end the thread: the next one tries again
                log.exception("sweep failed")
            self.sweeps += 1
            if self._stop.wait(self._every()):
                return

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _open_in(row: Inbound) -> bool:
    return row.state is TransferState.RECEIVING


def _already(row: Inbound | Outbound) -> str:
    ended = row.ended
    if ended is None:
        return ""
    return f"already cancelled by {ended.by} at {when(ended.at)}"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def refuse_final(row: Inbound | Outbound) -> None:
    """The refusal of anything more for an ended (or refused) transfer: why it ended."""
    if (error := ended_error(row)) is not None:
        raise error
    refusal = getattr(row, "refusal", None)
    raise TransferEndedError(
        f"transfer {row.transfer_id} was refused for good ({refusal}); there is nothing to cancel"
    )


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

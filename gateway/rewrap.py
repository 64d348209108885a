"""Rewrap: move every stored data key from older storage versions to the active one.

Why: a storage version can be retired (and its HSM object destroyed) only once nothing is
wrapped to it any more. The payload never changes -- XBGW-STREAM-1 keeps the data key in the
header, and a stored header carries exactly one wrapped key (the data key under our storage
key, bound to the header core) -- so a rewrap unwraps and re-wraps 32 bytes inside the HSM
per transfer and rewrites only the header, whatever the size of the data.

What is rewrapped (``ledger.stored_headers_not_under``): inbound transfers not refused (the
inbox file, or the partial file of one still being received) and outbound sends not yet
delivered (their stored header lets a resend re-encrypt the same bytes).

Crash safety, in this order per transfer:

1. the new header is built and its wrap checked to give back the data key
   (``envelope.rewrap_for_storage``);
2. the file (inbox or partial) gets the new header written over the old one in place and
   fsynced -- same length (the key reference has a fixed-width version), within the first
   sector, so the payload is untouched and a crash leaves either header, each of which opens
   while both versions are in service;
3. the ledger row is swapped only if it still holds the old header (``replace_stored_header``).

A crash after 2 leaves the ledger on the old version: retire stays refused and the next
rewrap redoes the transfer. The file header is never trusted for anything but its length and
core: it is written from the ledger's header, not read back.

A transfer busy at that moment (an upload, a finish, a send) is skipped and reported; the run
is resumable and idempotent -- run it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from gateway import envelope
from gateway.envelope import KeyHolder
from gateway.errors import StorageError, TransferConflictError, XbgwError
from gateway.keyring import KeyRing
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger
from gateway.spool import Spool

log = logging.getLogger("xbgw.keys")

#: ``hold(transfer_id)``: keep every other writer away from the transfer while it is
#: rewrapped; raises ``TransferConflictError`` at once if one is at work.
Hold = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class RewrapProgress:
    done: int
    total: int
    transfer_id: str


@dataclass
class RewrapReport:
    """What one run did. ``remaining`` counts what is still wrapped to an older version after
    it (busy or failed transfers, and any stored meanwhile): run again until it is 0."""

    to_version: int
    rewrapped: int = 0
    already: int = 0
    busy: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    remaining: int = 0


def rewrap(
    *,
    me: str,
    ring: KeyRing,
    keys: KeyHolder,
    ledger: Ledger,
    spool: Spool,
    hold_inbound: Hold,
    hold_outbound: Hold,
    on_progress: Callable[[RewrapProgress], None] = lambda _: None,
) -> RewrapReport:
    """Rewrap every stored data key not under the active storage version (see module doc)."""
    target = ring.storage
    ref = KeyRef(me, Purpose.STORAGE, target)
    work = ledger.stored_headers_not_under(target)
    report = RewrapReport(to_version=target)
    log.info(
        "rewrap started: %d stored data keys to move to %s",
        len(work),
        ref,
        extra={"key_ref": str(ref), "outcome": "rewrap-started"},
    )
    for done, (direction, transfer_id, old) in enumerate(work, start=1):
        hold = hold_inbound if direction == "in" else hold_outbound
        try:
            with hold(transfer_id):
                moved = _one(direction, transfer_id, old, me, ref, keys, ledger, spool)
        except TransferConflictError:
            report.busy.append(transfer_id)
        except XbgwError as exc:
            report.failed.append((transfer_id, str(exc)))
            log.warning(
                "rewrap of a stored data key failed: %s",
                exc,
                extra={"transfer_id": transfer_id, "key_ref": str(ref), "outcome": "failed"},
            )
        else:
            if moved:
                report.rewrapped += 1
            else:
                report.already += 1
        on_progress(RewrapProgress(done, len(work), transfer_id))
    report.remaining = len(ledger.stored_headers_not_under(target))
    log.info(
        "rewrap finished: %d rewrapped, %d busy, %d failed, %d remaining on older versions",
        report.rewrapped,
        len(report.busy),
        len(report.failed),
        report.remaining,
        extra={"key_ref": str(ref), "outcome": "rewrap-finished"},
    )
    return report


def _one(
    direction: str,
    transfer_id: str,
    old: bytes,
    me: str,
    ref: KeyRef,
    keys: KeyHolder,
    ledger: Ledger,
    spool: Spool,
) -> bool:
    """Rewrap one transfer; False if it changed meanwhile (already moved, or gone)."""
    header = envelope.Header.decode(old)
    data_key = envelope.open_header(header, me, keys)
    new = envelope.rewrap_for_storage(header, data_key, ref, keys).encode()
    if len(new) != len(old):  # the format keeps it; a file header must be overwritten exactly
        raise StorageError(f"the re-wrapped header of {transfer_id} changed length")
    if direction == "in":
        for path in (spool.committed_path(transfer_id), spool.partial_path(transfer_id)):
            _overwrite_header(path, old, new)
    return ledger.replace_stored_header(direction, transfer_id, old, new)


def _overwrite_header(path: Path, old: bytes, new: bytes) -> None:
    """Write ``new`` over the first bytes of ``path`` (if it exists) and fsync it.

    The header there must be ``old``, ``new`` (a rewrap cut short) or at least share their
    core: anything else is not this transfer's file and is left alone, loudly."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError.from_exception(exc) from None
    try:
        present = os.pread(fd, len(old), 0)
        if present not in (old, new):
            try:
                same = envelope.Header.decode(present).core() == envelope.Header.decode(old).core()
            except XbgwError:
                same = False
            if not same:
                raise StorageError(
                    f"{path} does not start with the header the ledger holds for it; left unchanged"
                )
        if present != new:
            os.pwrite(fd, new, 0)
            os.fsync(fd)
    except OSError as exc:
        raise StorageError.from_exception(exc) from None
    finally:
        os.close(fd)

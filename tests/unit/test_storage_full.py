"""A full disk is RESOURCE_EXHAUSTED naming the side and the path, on both sides, and leaves
nothing half-committed: ENOSPC, EDQUOT and SQLite's SQLITE_FULL (a real one, from a ledger
capped with ``max_page_count``) all convert at the edge; once space is back, writes go on."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import BinaryIO, NoReturn

import pytest

from gateway.errors import (
    STORAGE_FULL,
    PartnerBusyError,
    StorageError,
    StorageFullError,
    is_storage_full,
)
from gateway.ledger import Ledger
from gateway.spool import Spool
from gateway.transfer import refused_by


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_out_of_space_or_quota_is_storage_full_naming_the_path(code: int) -> None:
    error = StorageError.from_exception(OSError(code, os.strerror(code)), "/var/lib/xbgw/spool")
    assert isinstance(error, StorageFullError)
    assert error.grpc_status == "RESOURCE_EXHAUSTED"
    assert str(error).startswith(f"{STORAGE_FULL}: /var/lib/xbgw/spool ({os.strerror(code)})")


def test_other_failures_stay_unavailable() -> None:
    error = StorageError.from_exception(OSError(errno.EIO, "Input/output error"), "/x")
    assert not isinstance(error, StorageFullError)
    assert error.grpc_status == "UNAVAILABLE"
    assert "Input/output error" in str(error)
    assert not is_storage_full(sqlite3.OperationalError("database is locked"))


def test_the_senders_relay_names_the_partner() -> None:
    refused = refused_by("frankfurt", "upload", "RESOURCE_EXHAUSTED", f"{STORAGE_FULL}: /s (x)")
    assert str(refused) == "partner frankfurt's storage is full: /s (x)"
    assert refused.grpc_status == "RESOURCE_EXHAUSTED"
    busy = refused_by("frankfurt", "upload", "RESOURCE_EXHAUSTED", "2 requests in flight")
    assert str(busy).startswith("partner frankfurt refused the upload (RESOURCE_EXHAUSTED)")
    assert PartnerBusyError("x").grpc_status == "RESOURCE_EXHAUSTED"


def _capped(ledger: Ledger, pages: int) -> None:
    ledger._db.execute(f"PRAGMA max_page_count={pages}")


def test_a_full_ledger_is_storage_full_and_recovers(tmp_path: Path) -> None:
    """SQLITE_FULL mid-transaction: RESOURCE_EXHAUSTED naming the ledger file, nothing of
    the transaction kept, and the connection usable once there is room again (SQLite rolls
    back by itself on SQLITE_FULL: a second ROLLBACK must not hide the reason)."""
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    try:
        before = ledger.audit_size()
        used = ledger._db.execute("PRAGMA page_count").fetchone()[0]
        _capped(ledger, used)
        with pytest.raises(StorageFullError) as full:
            for _ in range(50):
                ledger.append_audit(os.urandom(4000))
        assert full.value.grpc_status == "RESOURCE_EXHAUSTED"
        assert f"{STORAGE_FULL}: {path} (database or disk is full)" in str(full.value)
        assert not ledger._db.in_transaction
        _capped(ledger, 1 << 30)
        kept = ledger.audit_size()  # the records appended before the disk filled
        assert kept >= before
        ledger.append_audit(hashlib.sha256(b"after").digest())  # writes go on
        assert ledger.audit_size() == kept + 1
    finally:
        ledger.close()


def test_a_full_spool_keeps_every_append_that_reached_the_file(tmp_path: Path) -> None:
    """The disk fills during an append: what was appended before is made durable anyway
    (sync), closing does not fail for the bytes never counted, and the error names the
    spool directory."""
    spool = Spool(tmp_path / "spool")
    header = b"H" * 32
    partial = spool.open_partial("t-1", header, len(header))
    partial.append(b"a" * 100)
    partial._handle = _FullDisk(partial._handle)  # type: ignore[assignment]
    with pytest.raises(StorageFullError, match=f"{STORAGE_FULL}: {spool.root} "):
        partial.append(b"b" * 100)
    assert partial.length == len(header) + 100
    partial.sync()  # the "b"s cannot be written; the "a"s are made durable all the same
    partial.close()
    assert spool.partial_path("t-1").read_bytes() == header + b"a" * 100


class _FullDisk:
    """A spool file handle on a disk that just filled up: nothing more can be written."""

    def __init__(self, real: BinaryIO) -> None:
        self._real = real
        self.closed = False

    def _full(self) -> NoReturn:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data: bytes) -> int:
        self._full()

    def flush(self) -> None:
        self._full()

    def fileno(self) -> int:
        return self._real.fileno()

    def close(self) -> None:
        self._real.close()
        self.closed = True
        self._full()

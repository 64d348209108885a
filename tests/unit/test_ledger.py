"""The ledger: transfer rows, resume points, spent passports, segment tags, status -- on
SQLite and on PostgreSQL (a real server, ``tests.postgres``), held to the same tests."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import gateway.ledger as ledger_module
from gateway.errors import StorageError, TransferConflictError
from gateway.ledger import SCHEMA_VERSION, Count, Counter, Inbound, Ledger
from gateway.signed import Signed as Receipt
from gateway.store.sqlite import SqliteDatabase
from gateway.transfer import TransferState
from tests.postgres import ledger_on, pg_url, postgres  # noqa: F401 - fixtures

RECEIPT = Receipt(b'{"receipt":1}', bytes(range(64)), "gw-b/signing/1")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, path: Path) -> Iterator[Ledger]:
    """The same tests on both databases (PostgreSQL: this module's database, emptied)."""
    opened = ledger_on(request, path)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_ledger(path: Path) -> Iterator[Ledger]:
    opened = Ledger(path)
    yield opened
    opened.close()


def _create_in(ledger: Ledger, transfer_id: str = "t-1", sender: str = "gw-a") -> Inbound | None:
    return ledger.create_inbound(
        transfer_id=transfer_id,
        sender=sender,
        passport=f"passport-of-{transfer_id}",
        passport_digest=hashlib.sha256(transfer_id.encode()).digest(),
        offered_header_digest=b"\x01" * 32,
        stored_header=b"HEADER" + transfer_id.encode(),
        byte_limit=1000,
        classification="internal",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
    )


def _create_out(ledger: Ledger, transfer_id: str = "o-1", partner: str = "gw-b") -> None:
    ledger.create_outbound(
        transfer_id=transfer_id,
        partner=partner,
        passport_digest=b"\x02" * 32,
        sent_header=b"SENT",
        stored_header=b"STORED",
    )


# --- durability settings ----------------------------------------------------------------------


def test_wal_and_synchronous_full_are_in_force(sqlite_ledger: Ledger, path: Path) -> None:
    db = sqlite_ledger._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    # WAL and user_version are properties of the file: another connection sees them.
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        other.close()


def test_each_transaction_commits_at_the_level_it_asks_for(path: Path) -> None:
    """Offers and resume points may skip the fsync; a durable transaction after them may not."""
    store = SqliteDatabase.open(path)
    try:
        statements: list[str] = []
        store.connection.set_trace_callback(statements.append)

        def level_inside(durable: bool) -> int:
            with store.transaction(durable) as db:
                value: int = db.execute("PRAGMA synchronous").fetchone()[0]
            return value

        assert level_inside(durable=False) == 1  # 1 = NORMAL
        assert level_inside(durable=True) == 2  # 2 = FULL
        with pytest.raises(RuntimeError), store.transaction(durable=False):
            raise RuntimeError("rolled back")
        assert level_inside(durable=True) == 2  # a failed relaxed write does not leave it
        with store.owned() as db:  # the schema migration's transactions: FULL as well
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
        # The level is set when it changes only: three relaxed transactions, one PRAGMA.
        statements.clear()
        for _ in range(3):
            level_inside(durable=False)
        assert [s for s in statements if s.startswith("PRAGMA synchronous=")] == [
            "PRAGMA synchronous=NORMAL"
        ]
    finally:
        store.close()


def test_a_ledger_commits_every_transaction_relaxed_and_groups_the_fsyncs(
    sqlite_ledger: Ledger,
) -> None:
    """The ledger's durable commits are made durable by one fsync of the log per group
    (``GroupSync``), so the connection stays at NORMAL: no PRAGMA between transactions."""
    ledger = sqlite_ledger
    _create_in(ledger)
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    ledger.record_progress("t-1", 1, 10, False)
    ledger.commit_inbound("t-1", b"\x00" * 32, RECEIPT, committed_at=1)
    assert statements and not [s for s in statements if s.startswith("PRAGMA")]
    assert ledger._group is not None and ledger._group.fsyncs >= 1


def test_opening_creates_the_state_directory(path: Path) -> None:
    assert not path.parent.exists()
    Ledger(path).close()
    assert path.is_file()


# --- inbound lifecycle ------------------------------------------------------------------------


def test_create_inbound_returns_the_stored_row(ledger: Ledger) -> None:
    created = ledger.create_inbound(
        transfer_id="t-1",
        sender="gw-a",
        passport="tok.en.sig",
        passport_digest=b"\x07" * 32,
        offered_header_digest=b"\x08" * 32,
        stored_header=b"\x00header\xff",
        byte_limit=12345,
        classification="confidential",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
    )
    assert created is not None
    assert created == ledger.inbound("t-1")
    assert (created.transfer_id, created.sender, created.passport) == ("t-1", "gw-a", "tok.en.sig")
    assert created.passport_digest == b"\x07" * 32
    assert created.offered_header_digest == b"\x08" * 32
    assert created.stored_header == b"\x00header\xff"
    assert (created.byte_limit, created.classification) == (12345, "confidential")
    assert created.source_jurisdiction == "CN-SH"
    assert created.state == "receiving"
    assert (created.next_segment, created.received_bytes, created.final_received) == (0, 0, False)
    assert created.plaintext_sha256 is None
    assert created.committed_at is None
    assert created.refusal is None
    assert created.receipt is None
    assert created.created_at > 1_600_000_000


def test_unknown_transfer_is_none(ledger: Ledger) -> None:
    assert ledger.inbound("nope") is None
    assert ledger.outbound("nope") is None


def test_progress_moves_the_resume_point(ledger: Ledger) -> None:
    _create_in(ledger)
    ledger.record_progress("t-1", 3, 300, False)
    row = ledger.inbound("t-1")
    assert row is not None
    assert (row.next_segment, row.received_bytes, row.final_received) == (3, 300, False)
    ledger.record_progress("t-1", 5, 420, True)
    row = ledger.inbound("t-1")
    assert row is not None
    assert (row.next_segment, row.received_bytes, row.final_received) == (5, 420, True)
    assert [r.transfer_id for r in ledger.inbound_in_progress()] == ["t-1"]


def test_resume_point_survives_reopening(path: Path) -> None:
    first = Ledger(path)
    _create_in(first)
    first.record_progress("t-1", 7, 700, False)
    first.close()
    second = Ledger(path)  # the schema script is idempotent
    try:
        row = second.inbound("t-1")
        assert row is not None
        assert (row.state, row.next_segment, row.received_bytes) == ("receiving", 7, 700)
        assert [r.transfer_id for r in second.inbound_in_progress()] == ["t-1"]
    finally:
        second.close()


def test_commit_records_hash_and_receipt(ledger: Ledger) -> None:
    _create_in(ledger)
    ledger.record_progress("t-1", 2, 150, True)
    digest = hashlib.sha256(b"plaintext").digest()
    ledger.commit_inbound("t-1", digest, RECEIPT, committed_at=1_700_000_000)
    row = ledger.inbound("t-1")
    assert row is not None
    assert row.state == "committed"
    assert row.plaintext_sha256 == digest
    assert row.committed_at == 1_700_000_000
    assert row.receipt == RECEIPT
    assert ledger.inbound_in_progress() == []
    assert [r.transfer_id for r in ledger.committed_inbound()] == ["t-1"]


def test_committed_transfer_no_longer_moves(ledger: Ledger) -> None:
    _create_in(ledger)
    ledger.record_progress("t-1", 2, 150, True)
    ledger.commit_inbound("t-1", b"\x03" * 32, RECEIPT, committed_at=1)
    ledger.record_progress("t-1", 9, 999, False)
    ledger.refuse_inbound("t-1", "too late")
    row = ledger.inbound("t-1")
    assert row is not None
    assert (row.state, row.next_segment, row.received_bytes, row.refusal) == (
        "committed",
        2,
        150,
        None,
    )


def test_refusal_is_final(ledger: Ledger) -> None:
    _create_in(ledger)
    ledger.refuse_inbound("t-1", "byte limit exceeded")
    ledger.record_progress("t-1", 4, 400, False)
    ledger.commit_inbound("t-1", b"\x03" * 32, RECEIPT, committed_at=1)
    row = ledger.inbound("t-1")
    assert row is not None
    assert (row.state, row.refusal, row.next_segment) == ("refused", "byte limit exceeded", 0)
    assert row.receipt is None
    assert ledger.inbound_in_progress() == []
    assert ledger.committed_inbound() == []


def test_committed_inbound_is_ordered_by_commit_time(ledger: Ledger) -> None:
    for name in ("a", "b", "c"):
        _create_in(ledger, name)
    ledger.commit_inbound("c", b"\x00" * 32, RECEIPT, committed_at=10)
    ledger.commit_inbound("a", b"\x00" * 32, RECEIPT, committed_at=30)
    ledger.commit_inbound("b", b"\x00" * 32, RECEIPT, committed_at=20)
    assert [r.transfer_id for r in ledger.committed_inbound()] == ["c", "b", "a"]


# --- spent passports --------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["receiving", "committed", "refused"])
def test_a_transfer_id_is_spent_once_recorded(ledger: Ledger, state: str) -> None:
    _create_in(ledger)
    if state == "committed":
        ledger.commit_inbound("t-1", b"\x00" * 32, RECEIPT, committed_at=1)
    elif state == "refused":
        ledger.refuse_inbound("t-1", "no")
    # A taken transfer id is reported as None: the passport is spent.
    assert _create_in(ledger, "t-1", sender="gw-other") is None
    row = ledger.inbound("t-1")
    assert row is not None
    assert (row.sender, row.state) == ("gw-a", state)


def test_ledger_stays_usable_after_a_refused_insert(ledger: Ledger) -> None:
    _create_in(ledger)
    assert _create_in(ledger) is None
    # The failed transaction was rolled back: the next one can begin.
    _create_in(ledger, "t-2")
    ledger.record_progress("t-2", 1, 10, False)
    row = ledger.inbound("t-2")
    assert row is not None
    assert row.next_segment == 1
    if ledger.store.dialect.name == "sqlite":
        assert not ledger._db.in_transaction


# --- outbound and segment tags ----------------------------------------------------------------


def test_outbound_lifecycle(ledger: Ledger) -> None:
    _create_out(ledger)
    row = ledger.outbound("o-1")
    assert row is not None
    assert (row.partner, row.state, row.sent_header, row.stored_header) == (
        "gw-b",
        "sending",
        b"SENT",
        b"STORED",
    )
    assert (row.plaintext_size, row.plaintext_sha256, row.delivered_at, row.receipt) == (
        None,
        None,
        None,
        None,
    )
    with pytest.raises(TransferConflictError, match="o-1 already has an outbound record"):
        _create_out(ledger)
    ledger.deliver_outbound("o-1", 4096, b"\x05" * 32, RECEIPT)
    row = ledger.outbound("o-1")
    assert row is not None
    assert (row.state, row.plaintext_size, row.plaintext_sha256) == (
        "delivered",
        4096,
        b"\x05" * 32,
    )
    assert row.receipt == RECEIPT
    assert row.delivered_at is not None


def test_segment_tags_range_and_first_write_wins(ledger: Ledger) -> None:
    _create_out(ledger)
    ledger.record_segment_tags("o-1", [(i, bytes([i]) * 16) for i in range(5)])
    ledger.record_segment_tags("o-1", [])  # a no-op, not an error
    assert ledger.segment_tags("o-1", 1, 4) == {i: bytes([i]) * 16 for i in (1, 2, 3)}
    assert ledger.segment_tags("o-1", 5, 10) == {}
    assert ledger.segment_tags("other", 0, 5) == {}
    # A tag once recorded is never replaced: it is the nonce-reuse guard.
    ledger.record_segment_tags("o-1", [(2, b"\xff" * 16), (5, b"\x55" * 16)])
    assert ledger.segment_tags("o-1", 2, 6) == {
        2: b"\x02" * 16,
        3: b"\x03" * 16,
        4: b"\x04" * 16,
        5: b"\x55" * 16,
    }


def test_segment_tags_survive_reopening_and_go_on_delivery(path: Path) -> None:
    first = Ledger(path)
    _create_out(first)
    _create_out(first, "o-2")
    first.record_segment_tags("o-1", [(0, b"a" * 16), (1, b"b" * 16)])
    first.record_segment_tags("o-2", [(0, b"z" * 16)])
    first.close()
    second = Ledger(path)
    try:
        assert second.segment_tags("o-1", 0, 2) == {0: b"a" * 16, 1: b"b" * 16}
        second.deliver_outbound("o-1", 32, b"\x00" * 32, RECEIPT)
        assert second.segment_tags("o-1", 0, 2) == {}
        assert second.segment_tags("o-2", 0, 2) == {0: b"z" * 16}
    finally:
        second.close()


# --- recent() ---------------------------------------------------------------------------------


def test_recent_lists_both_directions_newest_first(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count(1_700_000_000)
    monkeypatch.setattr(ledger_module, "time", types.SimpleNamespace(time=lambda: next(clock)))
    _create_in(ledger, "in-old", sender="gw-a")
    _create_out(ledger, "out-mid", partner="gw-c")
    _create_in(ledger, "in-new", sender="gw-d")
    ledger.record_progress("in-new", 2, 128, False)
    ledger.record_progress("in-old", 1, 64, True)
    ledger.commit_inbound("in-old", b"\x00" * 32, RECEIPT, committed_at=1)
    assert ledger.recent() == [
        ("in-new", "in", "gw-d", "receiving", 128),
        ("out-mid", "out", "gw-c", "sending", 0),
        ("in-old", "in", "gw-a", "committed", 64),
    ]
    ledger.deliver_outbound("out-mid", 5000, b"\x00" * 32, RECEIPT)
    assert ledger.recent(limit=2) == [
        ("in-new", "in", "gw-d", "receiving", 128),
        ("out-mid", "out", "gw-c", "delivered", 5000),
    ]


def test_recent_of_an_empty_ledger(ledger: Ledger) -> None:
    assert ledger.recent() == []


# --- schema versions and storage failures ------------------------------------------------------

_V1_INBOUND = """
CREATE TABLE inbound (
    transfer_id TEXT PRIMARY KEY, sender TEXT NOT NULL, passport TEXT NOT NULL,
    passport_digest BLOB NOT NULL, offered_header_digest BLOB NOT NULL,
    stored_header BLOB NOT NULL, byte_limit INTEGER NOT NULL, classification TEXT NOT NULL,
    source_jurisdiction TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'committed', 'refused')),
    next_segment INTEGER NOT NULL DEFAULT 0, received_bytes INTEGER NOT NULL DEFAULT 0,
    final_received INTEGER NOT NULL DEFAULT 0, plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL, committed_at INTEGER, refusal TEXT,
    receipt_body BLOB, receipt_signature BLOB, receipt_kid TEXT
);
PRAGMA user_version=1;
"""


def _token(claims: Mapping[str, object]) -> str:
    """An unsigned token of the passport's shape (migration reads only its claims)."""
    import base64
    import json

    def part(value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signature = base64.urlsafe_b64encode(b"\0" * 64).rstrip(b"=").decode()
    return f"{part({'alg': 'ES256'})}.{part(claims)}.{signature}"


def test_a_version_1_ledger_gains_the_dataset_digest_from_its_stored_passports(path: Path) -> None:
    """Schema 2 keeps the passport's ``sub`` in a column; a ledger written by schema 1 gets
    it filled in from each unfinished transfer's stored passport, once, at open."""
    sub = "ab" * 32
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(_V1_INBOUND)
        for tid, claims in (("with-sub", {"sub": sub}), ("without", {"jti": "without"})):
            db.execute(
                "INSERT INTO inbound (transfer_id, sender, passport, passport_digest, "
                "offered_header_digest, stored_header, byte_limit, classification, "
                "source_jurisdiction, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (tid, "gw-a", _token(claims), b"d", b"o", b"h", 10, "general", "CN-SH",
                 "receiving", 1),
            )  # fmt: skip
    opened = Ledger(path)
    try:
        with_sub, without = opened.inbound("with-sub"), opened.inbound("without")
        assert with_sub is not None and with_sub.dataset_sha256 == sub
        assert without is not None and without.dataset_sha256 is None
        assert with_sub.state is TransferState.RECEIVING
    finally:
        opened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_a_ledger_from_a_newer_xbgw_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer than this xbgw") as caught:
        Ledger(path)
    assert caught.value.grpc_status == "FAILED_PRECONDITION"


def test_a_database_failure_leaves_the_ledger_as_a_storage_error(sqlite_ledger: Ledger) -> None:
    """sqlite3 errors never escape: the servicers map StorageError once (UNAVAILABLE)."""
    ledger = sqlite_ledger
    ledger._db.execute("DROP TABLE inbound")
    with pytest.raises(StorageError, match="cannot store the transfer right now") as caught:
        _create_in(ledger)
    assert caught.value.grpc_status == "UNAVAILABLE"
    with pytest.raises(StorageError):
        ledger.inbound("t-1")


# --- compliance counters ------------------------------------------------------------------------


def _counted_in(ledger: Ledger, transfer_id: str, count: Count) -> None:
    made = ledger.create_inbound(
        transfer_id=transfer_id,
        sender="gw-a",
        passport=f"passport-of-{transfer_id}",
        passport_digest=hashlib.sha256(transfer_id.encode()).digest(),
        offered_header_digest=b"\x01" * 32,
        stored_header=b"HEADER" + transfer_id.encode(),
        byte_limit=1000,
        classification="general",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
        count=count,
    )
    assert made is not None


def _counted_out(ledger: Ledger, transfer_id: str, count: Count) -> None:
    ledger.create_outbound(
        transfer_id=transfer_id,
        partner="gw-b",
        passport_digest=b"\x02" * 32,
        sent_header=b"SENT",
        stored_header=b"STORED",
        count=count,
    )


RECEIPT = Receipt(b"body", b"sig", "gw-b/signing/1")


def test_a_send_counts_in_flight_then_once_delivered(ledger: Ledger) -> None:
    """In flight, a send already counts (two decided at once cannot both slip under a
    threshold); delivered, it moves to the counter; delivered again, it does not count twice."""
    _counted_out(ledger, "o-1", Count("acme", 2026, 1000, 0))
    _counted_out(ledger, "o-2", Count("acme", 2026, 0, 40))
    _counted_out(ledger, "o-3", Count("acme", 2027, 5, 0))  # another year
    _counted_out(ledger, "o-4", Count("other", 2026, 7, 0))  # another exporter
    assert ledger.compliance_counts("egress", "acme", 2026) == (1000, 40)
    assert ledger.compliance_counters() == []
    ledger.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)
    ledger.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)  # a repeat changes nothing
    assert ledger.compliance_counts("egress", "acme", 2026) == (1000, 40)
    assert ledger.compliance_counters() == [Counter("egress", "acme", 2026, 1000, 0)]
    assert ledger.compliance_counts("ingress", "acme", 2026) == (0, 0)


def test_a_send_that_never_delivers_stops_counting_when_discarded(ledger: Ledger) -> None:
    _counted_out(ledger, "o-1", Count("acme", 2026, 1000, 0))
    assert ledger.discard_unsent_outbound("o-1")
    assert ledger.compliance_counts("egress", "acme", 2026) == (0, 0)


def test_a_receipt_counts_on_commit_never_on_refusal(ledger: Ledger) -> None:
    _counted_in(ledger, "t-1", Count("acme", 2026, 300, 0))
    _counted_in(ledger, "t-2", Count("acme", 2026, 0, 9))
    assert ledger.compliance_counts("ingress", "acme", 2026) == (300, 9)
    ledger.refuse_inbound("t-2", "manifest mismatch")
    assert ledger.compliance_counts("ingress", "acme", 2026) == (300, 0)
    ledger.commit_inbound("t-1", b"\x00" * 32, RECEIPT, 5)
    ledger.commit_inbound("t-1", b"\x00" * 32, RECEIPT, 5)  # a repeat changes nothing
    assert ledger.compliance_counts("ingress", "acme", 2026) == (300, 0)
    assert ledger.compliance_counters() == [Counter("ingress", "acme", 2026, 300, 0)]


def test_counts_survive_a_reopen_and_transfers_without_a_count_count_nothing(path: Path) -> None:
    first = Ledger(path)
    try:
        _counted_out(first, "o-1", Count("acme", 2026, 12, 3))
        first.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)
        _create_out(first, "o-2")
        first.deliver_outbound("o-2", 10, b"\x00" * 32, RECEIPT)
    finally:
        first.close()
    again = Ledger(path)
    try:
        assert again.compliance_counters() == [Counter("egress", "acme", 2026, 12, 3)]
    finally:
        again.close()


def test_concurrent_commits_lose_no_count(ledger: Ledger) -> None:
    """Eight threads commit 25 transfers each: the counter is the exact sum."""
    import threading

    for n in range(200):
        _counted_in(ledger, f"t-{n}", Count("acme", 2026, n + 1, n % 3))

    def commit(start: int) -> None:
        for n in range(start, 200, 8):
            ledger.commit_inbound(f"t-{n}", b"\x00" * 32, RECEIPT, 5)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = (sum(n + 1 for n in range(200)), sum(n % 3 for n in range(200)))
    assert ledger.compliance_counts("ingress", "acme", 2026) == expected
    assert ledger.compliance_counters() == [Counter("ingress", "acme", 2026, *expected)]

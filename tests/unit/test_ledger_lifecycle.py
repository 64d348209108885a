"""The ledger's side of the data lifecycle: schema 6 (from a schema-5 file), the paged lists
and their tokens, and the audit record kinds it writes."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.records import AuditRecord, AuditRecordError
from gateway.errors import UsageError
from gateway.ledger import SCHEMA_VERSION, Ledger
from gateway.paging import MAX_PAGE, decode_token, encode_token, page_size
from gateway.signed import Signed
from gateway.transfer import TransferState
from tests.postgres import ledger_on, pg_url, postgres  # noqa: F401 - fixtures

RECEIPT = Signed(b"receipt", b"\x01" * 64, "gw/signing/1")

# Schema 5 as it was shipped (the transfer tables; the others are made by the schema script).
_V5 = """
CREATE TABLE inbound (
    transfer_id TEXT PRIMARY KEY, sender TEXT NOT NULL, passport TEXT NOT NULL,
    passport_digest BLOB NOT NULL, offered_header_digest BLOB NOT NULL,
    stored_header BLOB NOT NULL, byte_limit INTEGER NOT NULL, classification TEXT NOT NULL,
    source_jurisdiction TEXT NOT NULL, dataset_sha256 TEXT, transport_version INTEGER,
    storage_version INTEGER, count_exporter TEXT, count_year INTEGER,
    count_subjects INTEGER NOT NULL DEFAULT 0, count_sensitive INTEGER NOT NULL DEFAULT 0,
    audit_leaf INTEGER,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'committed', 'refused')),
    next_segment INTEGER NOT NULL DEFAULT 0, received_bytes INTEGER NOT NULL DEFAULT 0,
    final_received INTEGER NOT NULL DEFAULT 0, plaintext_sha256 BLOB,
    created_at INTEGER NOT NULL, committed_at INTEGER, refusal TEXT,
    receipt_body BLOB, receipt_signature BLOB, receipt_kid TEXT
);
CREATE TABLE outbound (
    transfer_id TEXT PRIMARY KEY, partner TEXT NOT NULL, passport_digest BLOB NOT NULL,
    sent_header BLOB NOT NULL, stored_header BLOB NOT NULL, storage_version INTEGER,
    count_exporter TEXT, count_year INTEGER, count_subjects INTEGER NOT NULL DEFAULT 0,
    count_sensitive INTEGER NOT NULL DEFAULT 0, audit_leaf INTEGER, evidence TEXT,
    state TEXT NOT NULL CHECK (state IN ('sending', 'delivered')),
    plaintext_size INTEGER, plaintext_sha256 BLOB, created_at INTEGER NOT NULL,
    delivered_at INTEGER, receipt_body BLOB, receipt_signature BLOB, receipt_kid TEXT
);
CREATE INDEX inbound_in_flight_counts ON inbound (count_exporter, count_year)
    WHERE state = 'receiving';
PRAGMA user_version=5;
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """The paging tests on both databases (PostgreSQL: this module's database, emptied)."""
    opened = ledger_on(request, tmp_path / "ledger.sqlite3")
    yield opened
    opened.close()


def _token(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part(claims)}.{part('sig')}"


def test_a_version_5_ledger_is_rebuilt_with_the_lifecycle_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_V5)
        for tid, state, passport in (
            ("in-open", "receiving", _token({"exp": 1_800_000_000})),
            ("in-done", "committed", _token({"exp": 1})),
            ("in-bad", "receiving", "not a token"),
        ):
            db.execute(
                "INSERT INTO inbound (transfer_id, sender, passport, passport_digest, "
                "offered_header_digest, stored_header, byte_limit, classification, "
                "source_jurisdiction, state, created_at, committed_at, audit_leaf) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (tid, "gw-a", passport, b"d", b"o", b"h", 10, "general", "CN-SH", state,
                 5, 7 if state == "committed" else None, 3),
            )  # fmt: skip
        db.execute(
            "INSERT INTO outbound (transfer_id, partner, passport_digest, sent_header, "
            "stored_header, state, created_at, evidence) VALUES (?,?,?,?,?,?,?,?)",
            ("out-open", "gw-b", b"d", b"s", b"h", "sending", 9, "{}"),
        )
    ledger = Ledger(path)
    try:
        opened = ledger.inbound("in-open")
        assert opened is not None and opened.expires_at == 1_800_000_000
        assert opened.audit_leaf == 3 and opened.state is TransferState.RECEIVING
        bad = ledger.inbound("in-bad")
        assert bad is not None and bad.expires_at is None
        done = ledger.inbound("in-done")
        assert done is not None and done.committed_at == 7 and done.expires_at is None
        out = ledger.outbound("out-open")
        assert out is not None and out.evidence == "{}" and out.expires_at is None
        # The new states are allowed now; an outbound row without exp counts from creation.
        assert ledger.unfinished_before(8) == [("in", "in-bad", "gw-a", None)]
        assert ("out", "out-open", "gw-b", None) in ledger.unfinished_before(9)
        assert ledger.end_transfer("out", "out-open", TransferState.CANCELLED, 10, "me", "r")
        assert ledger.end_transfer("in", "in-open", TransferState.EXPIRED, 11)
        assert [r.transfer_id for r in ledger.inbox_page(10, None)] == ["in-done"]
    finally:
        ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"inbound_in_flight_counts", "inbound_inbox", "outbound_unfinished"} <= indexes


def _commit(ledger: Ledger, transfer_id: str, at: int) -> None:
    assert ledger.create_inbound(
        transfer_id=transfer_id,
        sender="gw-a",
        passport=_token({"exp": at + 3600}),
        passport_digest=b"d",
        offered_header_digest=b"o",
        stored_header=b"h",
        byte_limit=10,
        classification="general",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
    )
    assert ledger.commit_inbound(transfer_id, b"\0" * 32, RECEIPT, at) is None


def test_inbox_pages_are_stable_while_items_arrive(ledger: Ledger) -> None:
    for i in range(5):
        _commit(ledger, f"t-{i}", 100 + i // 2)  # ties on committed_at: the id decides
    first = ledger.inbox_page(2, None)
    _commit(ledger, "t-0-new", 100)  # sorts within the page already read...
    _commit(ledger, "t-z-new", 200)  # ...and after every page
    walked = [r.transfer_id for r in first]
    key = (first[-1].committed_at or 0, first[-1].transfer_id)
    while page := ledger.inbox_page(2, key):
        walked += [r.transfer_id for r in page]
        key = (page[-1].committed_at or 0, page[-1].transfer_id)
    assert walked == ["t-0", "t-1", "t-2", "t-3", "t-4", "t-z-new"]
    assert ledger.acknowledge_inbox("t-1", 300)
    pending = [r.transfer_id for r in ledger.inbox_page(10, None, unacknowledged_only=True)]
    assert "t-1" not in pending and "t-0" in pending


def test_status_pages_walk_every_transfer_newest_first(ledger: Ledger) -> None:
    for i in range(5):
        _commit(ledger, f"t-{i}", 100)
    ledger.create_outbound(
        transfer_id="t-0", partner="gw-b", passport_digest=b"d", sent_header=b"s",
        stored_header=b"h",
    )  # fmt: skip
    seen: list[tuple[str, str]] = []
    key = None
    while page := ledger.transfers_page(4, key):
        seen += [(line.direction, line.transfer_id) for line in page]
        last = page[-1]
        key = (last.created_at, last.direction, last.transfer_id)
    assert sorted(seen) == sorted({*seen}) and len(seen) == 6
    assert ("out", "t-0") in seen


def test_page_tokens_are_opaque_and_checked() -> None:
    token = encode_token("inbox", [100, "t-1"])
    assert decode_token("inbox", token, (int, str)) == [100, "t-1"]
    assert decode_token("inbox", "", (int, str)) is None
    for bad in ("%%%", encode_token("transfers", [1, "in", "x"]), encode_token("inbox", ["1", 2])):
        with pytest.raises(UsageError, match="page_token"):
            decode_token("inbox", bad, (int, str))
    assert (page_size(0), page_size(7), page_size(10**6)) == (100, 7, MAX_PAGE)


@pytest.mark.parametrize(
    ("kind", "members", "encoded"),
    [
        (
            "transfer.cancelled",
            {"transfer_id": "t", "partner": "p", "direction": "out", "by": "me",
             "reason_sha256": "ab"},
            b'{"at":1,"by":"me","direction":"out","gw":"me","kind":"transfer.cancelled",'
            b'"partner":"p","reason_sha256":"ab","transfer_id":"t","v":1}',
        ),
        (
            "transfer.expired",
            {"transfer_id": "t", "partner": "p", "direction": "in", "passport_exp": 9},
            b'{"at":1,"direction":"in","gw":"me","kind":"transfer.expired","partner":"p",'
            b'"passport_exp":9,"transfer_id":"t","v":1}',
        ),
        (
            "inbox.deleted",
            {"transfer_id": "t", "cause": "fetched"},
            b'{"at":1,"cause":"fetched","gw":"me","kind":"inbox.deleted","transfer_id":"t",'
            b'"v":1}',
        ),
        (
            "inbox.acknowledged",
            {"transfer_id": "t"},
            b'{"at":1,"gw":"me","kind":"inbox.acknowledged","transfer_id":"t","v":1}',
        ),
    ],
)  # fmt: skip
def test_lifecycle_record_kinds_encode_canonically(
    kind: str, members: dict[str, str | int], encoded: bytes
) -> None:
    assert AuditRecord(kind, 1, members).encode("me") == encoded
    with pytest.raises(AuditRecordError, match="missing"):
        AuditRecord(kind, 1, {})

"""``xbgw policy`` in process: the read-only ledger it reads counters from, and ``check``.

``explain`` and ``counters`` need a gateway configuration with real keys and passports: they
are tested through the program on the demo pair (tests/system/test_cli_policy.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import EXIT_CONFIG, main
from gateway.errors import StorageError
from gateway.ledger import SCHEMA_VERSION, Count, Counter, Ledger
from gateway.signed import Signed as Receipt

RECEIPT = Receipt(b"body", b"sig", "gw-b/signing/1")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


@pytest.fixture
def writer(path: Path) -> Iterator[Ledger]:
    """The daemon's ledger, open for writing for the whole test."""
    opened = Ledger(path)
    yield opened
    opened.close()


def _send(ledger: Ledger, transfer_id: str, count: Count) -> None:
    ledger.create_outbound(
        transfer_id=transfer_id,
        partner="gw-b",
        passport_digest=b"\x02" * 32,
        sent_header=b"SENT",
        stored_header=b"STORED",
        count=count,
    )


def _receive(ledger: Ledger, transfer_id: str, count: Count) -> None:
    made = ledger.create_inbound(
        transfer_id=transfer_id,
        sender="gw-a",
        passport=f"passport-of-{transfer_id}",
        passport_digest=transfer_id.encode().ljust(32, b"\x00"),
        offered_header_digest=b"\x01" * 32,
        stored_header=b"HEADER" + transfer_id.encode(),
        byte_limit=1000,
        classification="general",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
        count=count,
    )
    assert made is not None


# --- the read-only ledger ----------------------------------------------------------------------


def test_a_ledger_that_does_not_exist_reads_as_empty_and_is_not_created(path: Path) -> None:
    reader = Ledger.read_only(path)
    try:
        assert reader.compliance_counters() == []
        assert reader.compliance_in_flight() == []
        assert reader.compliance_counts("egress", "acme", 2026) == (0, 0)
    finally:
        reader.close()
    assert not path.parent.exists()


def test_the_reader_sees_the_writers_commits_while_both_are_open(
    path: Path, writer: Ledger
) -> None:
    _send(writer, "o-1", Count("acme", 2026, 1200, 0))
    reader = Ledger.read_only(path)
    try:
        assert reader.compliance_counters() == []
        assert reader.compliance_in_flight() == [Counter("egress", "acme", 2026, 1200, 0)]
        writer.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)  # not blocked by the reader
        assert reader.compliance_counters() == [Counter("egress", "acme", 2026, 1200, 0)]
        assert reader.compliance_in_flight() == []
        assert reader.compliance_counts("egress", "acme", 2026) == (1200, 0)
    finally:
        reader.close()


def test_in_flight_counts_are_summed_per_direction_exporter_and_year(writer: Ledger) -> None:
    _send(writer, "o-1", Count("acme", 2026, 100, 0))
    _send(writer, "o-2", Count("acme", 2026, 0, 7))
    _send(writer, "o-3", Count("acme", 2025, 5, 0))
    _send(writer, "o-4", Count("acme", 2026, 1, 0))
    writer.deliver_outbound("o-4", 10, b"\x00" * 32, RECEIPT)  # committed: no longer in flight
    _receive(writer, "t-1", Count("beta", 2026, 40, 0))
    _receive(writer, "t-2", Count("beta", 2026, 2, 0))
    writer.refuse_inbound("t-2", "refused")  # never counts
    assert writer.compliance_in_flight() == [
        Counter("egress", "acme", 2026, 100, 7),
        Counter("ingress", "beta", 2026, 40, 0),
        Counter("egress", "acme", 2025, 5, 0),
    ]


def test_the_reader_writes_nothing(path: Path, writer: Ledger) -> None:
    _send(writer, "o-1", Count("acme", 2026, 3, 0))
    writer.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)
    reader = Ledger.read_only(path)
    try:
        with pytest.raises(StorageError):
            _send(reader, "o-2", Count("acme", 2026, 1, 0))
    finally:
        reader.close()
    assert writer.outbound("o-2") is None
    assert writer.compliance_counters() == [Counter("egress", "acme", 2026, 3, 0)]


@pytest.mark.parametrize(("version", "newer"), [(SCHEMA_VERSION + 1, "newer"), (3, "older")])
def test_a_ledger_of_another_schema_is_refused_not_migrated(
    path: Path, version: int, newer: str
) -> None:
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={version}")
    db.close()
    with pytest.raises(StorageError, match=f"schema version {version}, {newer} than this xbgw's"):
        Ledger.read_only(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
    db.close()


class _NoWalIndex:
    """A read-only connection that may not create the WAL index, as for a user who can only
    read the state directory (simulated: the suite runs as root, who may write anywhere)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("SELECT COUNT(*) FROM sqlite_master"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return self._db.execute(sql, *args)

    def close(self) -> None:
        self._db.close()


@pytest.mark.parametrize("daemon_running", [False, True])
def test_a_ledger_whose_wal_index_cannot_be_made_is_read_as_immutable_unless_a_daemon_runs(
    path: Path, monkeypatch: pytest.MonkeyPatch, daemon_running: bool
) -> None:
    """No daemon runs (no -wal file): every commit is in the file, so it is opened immutable.
    With a -wal file, the refusal stands: an immutable read would miss the daemon's commits."""
    ledger = Ledger(path)
    _send(ledger, "o-1", Count("acme", 2026, 3, 0))
    ledger.deliver_outbound("o-1", 10, b"\x00" * 32, RECEIPT)
    ledger.close()
    assert not Path(f"{path}-wal").exists()
    if daemon_running:
        Path(f"{path}-wal").write_bytes(b"")
    real = sqlite3.connect

    def connect(target: str, *args: Any, **kwargs: Any) -> Any:
        db = real(target, *args, **kwargs)
        return db if "immutable=1" in target else _NoWalIndex(db)

    monkeypatch.setattr(sqlite3, "connect", connect)
    if daemon_running:
        with pytest.raises(StorageError):
            Ledger.read_only(path)
        return
    reader = Ledger.read_only(path)
    try:
        assert reader.compliance_counters() == [Counter("egress", "acme", 2026, 3, 0)]
    finally:
        reader.close()


# --- xbgw policy check ---------------------------------------------------------------------------


def test_check_lists_the_rules_of_a_good_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", "baseline"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "baseline v1 (shipped: baseline): 2 rules",
        "  baseline-passport-src  xbgw baseline: passport jurisdictions  -> refuse",
        "  baseline-passport-dst  xbgw baseline: passport jurisdictions  -> refuse",
    ]


def test_a_free_trade_zone_list_is_checked_with_the_table_it_waives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "check", "ftz-example"]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("exempt names unknown rule") == 5
    assert main(["policy", "check", "ftz-example", "--with", "prc-export"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "ftz-example v1 (shipped: ftz-example): 3 rules, checked with prc-export v1\n"
    )
    assert "  ftz-example-unlisted  " in out
    assert "-> exempt cn-ciio-pi, cn-pi-100k, cn-pi-1m, cn-spi-below-10k, cn-spi-10k" in out


def test_a_table_given_also_with_with_is_checked_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shipped = Path(__file__).parents[2] / "gateway" / "compliance" / "tables" / "prc-export.yaml"
    assert main(["policy", "check", str(shipped), "--with", "prc-export"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"prc-export v1 ({shipped}): 12 rules"


def test_every_mistake_of_every_table_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("table: xbgw-rules\nversion: 1\nname: bad\nrules: {}\n", encoding="utf-8")
    missing = tmp_path / "missing.yaml"
    assert main(["policy", "check", str(bad), str(missing), "no-such-table"]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"xbgw: {bad}: ")
    assert f"{missing}: cannot read the rule table: No such file or directory" in lines
    assert any(line.startswith("no-such-table: no such shipped table (shipped: ") for line in lines)

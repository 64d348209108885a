"""The border: one transfer's facts judged against the rules, with the exporter's yearly
counters from a real ledger -- the year of the decision, in flight and committed counts,
thresholds, a resume not counting against itself, record-only ingress, one report per decision,
and reservations under concurrency.

The clock is injected (a list the test moves), the ledger is SQLite in a temp directory.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import pytest

from gateway.compliance.border import Border
from gateway.compliance.engine import Decision
from gateway.compliance.facts import Direction, TransferFacts
from gateway.config import ComplianceConfig
from gateway.errors import PolicyDeniedError
from gateway.ledger import Count, Counter, Ledger
from gateway.logs import JsonFormatter
from gateway.passport_claims import EvidenceClaim, XbgwClaims
from gateway.signed import Signed as Receipt

LINGANG = ("lingang", "CN-SH")
FRANKFURT = ("frankfurt", "EU-DE")
SHANGHAI = ZoneInfo("Asia/Shanghai")
RECEIPT = Receipt(b"body", b"sig", "frankfurt/signing/1")

#: 2026-12-31T23:59:59 in Shanghai, one second before its new year; UTC is still at 15:59:59.
LAST_SECOND_2026 = int(datetime(2026, 12, 31, 23, 59, 59, tzinfo=SHANGHAI).timestamp())
MID_2026 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp())

THRESHOLD_100K = (
    "cn-pi-100k: CAC 2024 Provisions Art. 8; PIPL Art. 38: exporter acme has sent personal "
    "information of {before} subjects this year; with {subjects} more it reaches {after}, at or "
    "above the threshold of 100000: needs pi-standard-contract or pi-certification"
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "state" / "ledger.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def now() -> list[float]:
    return [float(MID_2026)]


def border(
    ledger: Ledger,
    now: list[float],
    *,
    year_timezone: str = "UTC",
    ingress: Literal["enforce", "record"] = "enforce",
    decisions: list[Decision] | None = None,
) -> Border:
    config = ComplianceConfig(ingress=ingress, year_timezone=year_timezone)
    observe = decisions.append if decisions is not None else None
    return Border(config, ledger, clock=lambda: now[0], observe=observe)


def claims(
    subjects: int = 0,
    *,
    pi: str = "personal",
    cn_class: str = "general",
    evidence: tuple[EvidenceClaim, ...] = (),
) -> XbgwClaims:
    return XbgwClaims(
        sender="lingang",
        src="CN-SH",
        dst="EU-DE",
        classification=cn_class,
        pi=pi,
        subjects=subjects if pi != "none" else 0,
        purpose="customer service",
        legal_basis="test",
        byte_limit=1 << 20,
        exporter="acme",
        evidence=evidence,
    )


def egress(b: Border, terms: XbgwClaims, transfer_id: str, *, again: bool = False) -> Count:
    return b.judge(
        Direction.EGRESS,
        terms,
        transfer_id=transfer_id,
        sender=LINGANG,
        receiver=FRANKFURT,
        again=again,
    )


def ingress(b: Border, terms: XbgwClaims, transfer_id: str, *, again: bool = False) -> Count:
    return b.judge(
        Direction.INGRESS,
        terms,
        transfer_id=transfer_id,
        sender=LINGANG,
        receiver=FRANKFURT,
        again=again,
    )


def record_send(ledger: Ledger, transfer_id: str, count: Count) -> None:
    """The outbound row a send makes once judged: its count is in flight from here on."""
    ledger.create_outbound(
        transfer_id=transfer_id,
        partner="frankfurt",
        passport_digest=b"\x02" * 32,
        sent_header=b"SENT",
        stored_header=b"STORED",
        count=count,
    )


def delivered(ledger: Ledger, transfer_id: str, count: Count) -> None:
    record_send(ledger, transfer_id, count)
    ledger.deliver_outbound(transfer_id, 10, b"\x00" * 32, RECEIPT)


# --- the year of the decision ---------------------------------------------------------------


def test_the_last_second_of_the_year_in_shanghai_counts_to_that_year(
    ledger: Ledger, now: list[float]
) -> None:
    b = border(ledger, now, year_timezone="Asia/Shanghai")
    now[0] = LAST_SECOND_2026
    assert egress(b, claims(100), "t-1") == Count("acme", 2026, 100, 0)
    now[0] = LAST_SECOND_2026 + 1  # 2027-01-01T00:00:00+08:00 = 2026-12-31T16:00:00Z
    assert egress(b, claims(100), "t-2") == Count("acme", 2027, 100, 0)


def test_the_year_is_reckoned_in_the_configured_time_zone(ledger: Ledger, now: list[float]) -> None:
    """2026-12-31T16:00:00Z is already 2027 in Shanghai, still 2026 in UTC."""
    now[0] = int(datetime(2026, 12, 31, 16, 0, 0, tzinfo=UTC).timestamp())
    assert now[0] == LAST_SECOND_2026 + 1
    shanghai = border(ledger, now, year_timezone="Asia/Shanghai")
    utc = border(ledger, now, year_timezone="UTC")
    assert shanghai.year(int(now[0])) == 2027
    assert utc.year(int(now[0])) == 2026
    assert egress(shanghai, claims(5), "t-1").year == 2027
    assert egress(utc, claims(5), "t-2").year == 2026


def test_the_new_year_threshold_starts_from_zero(ledger: Ledger, now: list[float]) -> None:
    """acme reached 99,950 subjects in 2026: 100 more is refused in 2026's last second and
    allowed one second later (Shanghai), when 2027 has counted nothing -- but still refused
    under UTC, where that second is 2026."""
    delivered(ledger, "sent-in-2026", Count("acme", 2026, 99_950, 0))
    shanghai = border(ledger, now, year_timezone="Asia/Shanghai")
    utc = border(ledger, now, year_timezone="UTC")

    now[0] = LAST_SECOND_2026
    with pytest.raises(PolicyDeniedError) as refused:
        egress(shanghai, claims(100), "t-1")
    assert str(refused.value) == THRESHOLD_100K.format(before=99_950, subjects=100, after=100_050)

    now[0] = LAST_SECOND_2026 + 1
    assert egress(shanghai, claims(100), "t-1") == Count("acme", 2027, 100, 0)
    assert ledger.compliance_counts("egress", "acme", 2027) == (0, 0)
    with pytest.raises(PolicyDeniedError, match="reaches 100050"):
        egress(utc, claims(100), "t-1")


# --- thresholds, in flight and committed ----------------------------------------------------


def test_committed_and_in_flight_counts_together_cross_the_threshold(
    ledger: Ledger, now: list[float]
) -> None:
    """99,000 committed + 900 in flight + 200 new = 100,100: the refusal names the threshold,
    the count so far and the evidence that would allow it."""
    delivered(ledger, "committed", Count("acme", 2026, 99_000, 0))
    record_send(ledger, "in-flight", Count("acme", 2026, 900, 0))
    b = border(ledger, now)

    with pytest.raises(PolicyDeniedError) as refused:
        egress(b, claims(200), "new")

    assert str(refused.value) == THRESHOLD_100K.format(before=99_900, subjects=200, after=100_100)
    assert refused.value.grpc_status == "PERMISSION_DENIED"
    # 99 more stays below the threshold (it is "100,000 or more": the bound is included).
    assert egress(b, claims(99), "new") == Count("acme", 2026, 99, 0)
    with pytest.raises(PolicyDeniedError, match="reaches 100000, at or above"):
        egress(b, claims(100), "new")
    # Nothing judged was recorded: the counts are what the ledger had.
    assert ledger.compliance_counts("egress", "acme", 2026) == (99_900, 0)
    assert ledger.compliance_counters() == [Counter("egress", "acme", 2026, 99_000, 0)]


def test_other_exporters_years_and_directions_do_not_count(
    ledger: Ledger, now: list[float]
) -> None:
    delivered(ledger, "other-exporter", Count("globex", 2026, 99_999, 0))
    delivered(ledger, "last-year", Count("acme", 2025, 99_999, 0))
    created = ledger.create_inbound(
        transfer_id="received",
        sender="frankfurt",
        passport="p",
        passport_digest=b"\x01" * 32,
        offered_header_digest=b"\x01" * 32,
        stored_header=b"H",
        byte_limit=10,
        classification="general",
        source_jurisdiction="EU-DE",
        dataset_sha256=None,
        count=Count("acme", 2026, 99_999, 0),
    )
    assert created is not None
    assert egress(border(ledger, now), claims(1000), "t-1") == Count("acme", 2026, 1000, 0)


def test_sensitive_subjects_count_apart(ledger: Ledger, now: list[float]) -> None:
    """9,000 sensitive subjects in flight + 1,000 more reach the assessment threshold of
    10,000 (Art. 7(2)); non-sensitive subjects do not add to that count."""
    record_send(ledger, "sensitive", Count("acme", 2026, 50_000, 9_000))
    b = border(ledger, now)
    with pytest.raises(PolicyDeniedError) as refused:
        egress(b, claims(1000, pi="sensitive"), "t-1")
    assert str(refused.value) == (
        "cn-spi-10k: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: exporter acme has sent "
        "sensitive personal information of 9000 subjects this year; with 1000 more it reaches "
        "10000, at or above the threshold of 10000: needs cac-assessment"
    )
    assert egress(b, claims(49_999), "t-2") == Count("acme", 2026, 49_999, 0)


def test_a_resumed_transfer_does_not_count_against_itself(ledger: Ledger, now: list[float]) -> None:
    """t-1 (900) is in flight with 99,000 committed: judged again on its resume it sees
    99,000 before it, not 99,900; another transfer of the same size sees 99,900."""
    delivered(ledger, "committed", Count("acme", 2026, 99_000, 0))
    b = border(ledger, now)
    with b.reserving():
        record_send(ledger, "t-1", egress(b, claims(900), "t-1", again=True))
    assert ledger.compliance_counts("egress", "acme", 2026) == (99_900, 0)

    assert egress(b, claims(900), "t-1") == Count("acme", 2026, 900, 0)  # the resume
    assert (
        b.facts(
            Direction.EGRESS, claims(900), transfer_id="t-1", sender=LINGANG, receiver=FRANKFURT
        ).year_subjects
        == 99_000
    )
    with pytest.raises(PolicyDeniedError, match="reaches 100800"):
        egress(b, claims(900), "t-2")


def test_a_count_is_what_the_transfer_adds(ledger: Ledger, now: list[float]) -> None:
    b = border(ledger, now)
    assert egress(b, claims(0, pi="none"), "t-1") == Count("acme", 2026, 0, 0)
    assert egress(b, claims(12, pi="personal"), "t-2") == Count("acme", 2026, 12, 0)
    contract = (EvidenceClaim("pi-standard-contract", "SC-2026-1"),)
    assert egress(b, claims(12, pi="sensitive", evidence=contract), "t-3") == Count(
        "acme", 2026, 0, 12
    )


# --- ingress: enforced or recorded; egress: always enforced ---------------------------------


def _compliance_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "xbgw.compliance"]


def test_ingress_in_record_mode_logs_the_refusal_and_lets_the_transfer_in(
    ledger: Ledger, now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    b = border(ledger, now, ingress="record")
    caplog.set_level(logging.INFO, logger="xbgw.compliance")

    count = ingress(b, claims(cn_class="core", pi="none"), "t-core")

    assert count == Count("acme", 2026, 0, 0)
    (record,) = _compliance_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "compliance ingress recorded: cn-core-data: DSL Art. 21 (state core data): core data "
        "is not exported"
    )
    line = json.loads(JsonFormatter().format(record))  # the daemon's one JSON line
    assert line["logger"] == "xbgw.compliance"
    assert (line["outcome"], line["rule"], line["transfer_id"]) == (
        "recorded",
        "cn-core-data",
        "t-core",
    )
    assert line["partner"] == "lingang"
    trail = {entry["rule"]: entry for entry in line["trail"]}
    assert trail["cn-core-data"] == {
        "rule": "cn-core-data",
        "article": "DSL Art. 21 (state core data)",
        "outcome": "refused",
        "facts": {
            "cn_class": "core",
            "sender_jurisdiction": "CN-SH",
            "receiver_jurisdiction": "EU-DE",
        },
        "detail": "core data is not exported",
        "needs": [],
        "table": "prc-export v1",
    }
    json.dumps(record.trail)  # type: ignore[attr-defined]  # JSON as it is, no default=str


def test_ingress_enforced_refuses(ledger: Ledger, now: list[float]) -> None:
    b = border(ledger, now, ingress="enforce")
    with pytest.raises(PolicyDeniedError, match=r"^cn-core-data: DSL Art\. 21"):
        ingress(b, claims(cn_class="core", pi="none"), "t-core")


def test_egress_is_enforced_even_in_record_mode(
    ledger: Ledger, now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    b = border(ledger, now, ingress="record")
    caplog.set_level(logging.INFO, logger="xbgw.compliance")
    with pytest.raises(PolicyDeniedError, match=r"^cn-core-data: DSL Art\. 21"):
        egress(b, claims(cn_class="core", pi="none"), "t-core")
    (record,) = _compliance_records(caplog)
    assert (record.outcome, record.rule) == ("refused", "cn-core-data")  # type: ignore[attr-defined]
    assert record.getMessage().startswith("compliance egress refused: cn-core-data")


def test_an_allowed_decision_is_logged_at_info_with_its_trail(
    ledger: Ledger, now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    b = border(ledger, now)
    caplog.set_level(logging.INFO, logger="xbgw.compliance")
    egress(b, claims(1200), "t-1")
    (record,) = _compliance_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == "compliance egress allowed: no rule refuses"
    line = json.loads(JsonFormatter().format(record))
    assert line["outcome"] == "allowed"
    assert "rule" not in line  # no rule refused
    assert [(e["rule"], e["outcome"]) for e in line["trail"]] == [("cn-pi-below-100k", "allowed")]


# --- one report per decision ----------------------------------------------------------------


def test_each_decision_is_observed_once(ledger: Ledger, now: list[float]) -> None:
    """The re-judgement under the lock (again=True) that still allows is neither logged nor
    counted again; one that now refuses (the counters moved) is."""
    decisions: list[Decision] = []
    b = border(ledger, now, decisions=decisions)

    egress(b, claims(40_000), "t-1")
    assert [d.allow for d in decisions] == [True]
    with b.reserving():
        record_send(ledger, "t-1", egress(b, claims(40_000), "t-1", again=True))
    assert [d.allow for d in decisions] == [True]

    egress(b, claims(40_000), "t-2")  # 40,000 in flight: allowed
    assert [d.allow for d in decisions] == [True, True]
    record_send(ledger, "t-3", Count("acme", 2026, 40_000, 0))  # another send got in first
    with b.reserving(), pytest.raises(PolicyDeniedError, match="reaches 120000"):
        egress(b, claims(40_000), "t-2", again=True)
    assert [d.allow for d in decisions] == [True, True, False]


def test_the_second_judgement_decides_again_whatever_made_the_first(
    ledger: Ledger, now: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second judgement reuses the first only when its passport terms, parties,
    configuration, second and counters are all the same; anything else is decided anew."""
    decided: list[bool] = []

    def counted(config: ComplianceConfig) -> ComplianceConfig:
        rules = config.rules
        decide = rules.decide

        def counting(facts: TransferFacts) -> Decision:
            decision = decide(facts)
            decided.append(decision.allow)
            return decision

        monkeypatch.setattr(rules, "decide", counting)
        return config

    b = Border(counted(ComplianceConfig()), ledger, clock=lambda: now[0])
    record_send(ledger, "t-0", Count("acme", 2026, 60_000, 0))

    egress(b, claims(30_000), "t-1")  # 90,000 with t-0 in flight: allowed
    with b.reserving():
        egress(b, claims(30_000), "t-1", again=True)  # nothing moved: not decided again
    assert decided == [True]

    egress(b, claims(30_000), "t-2")
    with b.reserving(), pytest.raises(PolicyDeniedError, match="reaches 110000"):
        # Other terms under the same transfer id (an issuer that reused a jti): decided.
        egress(b, claims(50_000), "t-2", again=True)
    assert decided == [True, True, False]

    egress(b, claims(30_000), "t-3")
    b.reconfigure(counted(ComplianceConfig()))  # equal, but another configuration
    with b.reserving():
        egress(b, claims(30_000), "t-3", again=True)
    egress(b, claims(30_000), "t-4")
    now[0] += 1  # the next second
    with b.reserving():
        egress(b, claims(30_000), "t-4", again=True)
    egress(b, claims(30_000), "t-5")
    record_send(ledger, "t-6", Count("acme", 2026, 5_000, 0))  # the counters moved
    with b.reserving():
        egress(b, claims(30_000), "t-5", again=True)
    assert decided == [True, True, False] + [True] * 6


def test_the_year_follows_a_reconfigured_time_zone(ledger: Ledger, now: list[float]) -> None:
    now[0] = float(LAST_SECOND_2026)
    b = border(ledger, now, year_timezone="UTC")
    assert b.year(LAST_SECOND_2026) == 2026
    b.reconfigure(ComplianceConfig(year_timezone="Asia/Shanghai"))
    assert b.year(LAST_SECOND_2026 + 1) == 2027  # Shanghai's new year, UTC's 16:00
    b.reconfigure(ComplianceConfig(year_timezone="UTC"))
    assert b.year(LAST_SECOND_2026 + 1) == 2026


def test_a_recorded_refusal_is_reported_once_when_judged_again(
    ledger: Ledger, now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """Record-only ingress: the offer's judgement and its re-judgement under the lock refuse
    alike -- one decision, one log line, one observation."""
    decisions: list[Decision] = []
    b = border(ledger, now, ingress="record", decisions=decisions)
    caplog.set_level(logging.INFO, logger="xbgw.compliance")
    terms = claims(cn_class="core", pi="none")

    ingress(b, terms, "t-core")
    with b.reserving():
        ingress(b, terms, "t-core", again=True)

    assert [d.allow for d in decisions] == [False]
    assert [r.outcome for r in _compliance_records(caplog)] == ["recorded"]  # type: ignore[attr-defined]


# --- reservations under concurrency ---------------------------------------------------------


def test_concurrent_sends_cannot_all_slip_under_the_threshold(
    ledger: Ledger, now: list[float]
) -> None:
    """Eight sends of 20,000 subjects each, decided at once by acme with nothing sent this
    year: judging and recording under ``reserving()`` lets exactly four through (80,000); a
    fifth would reach 100,000, the threshold of Art. 8, and each of the other four is refused
    as that fifth."""
    b = border(ledger, now)
    allowed, refused = race_sends([(b, ledger)], 8, "t-")

    assert len(allowed) == 4, allowed
    assert refused == [THRESHOLD_100K.format(before=80_000, subjects=20_000, after=100_000)] * 4
    assert ledger.compliance_counts("egress", "acme", 2026) == (80_000, 0)
    for transfer_id in allowed:
        ledger.deliver_outbound(transfer_id, 10, b"\x00" * 32, RECEIPT)
    assert ledger.compliance_counters() == [Counter("egress", "acme", 2026, 80_000, 0)]


def race_sends(
    sides: Sequence[tuple[Border, Ledger]], sends: int, prefix: str, deadline: float = 30.0
) -> tuple[list[str], list[str]]:
    """``sends`` egress sends of 20,000 subjects, released at once, send ``n`` judged and
    recorded under ``reserving()`` on side ``n mod len(sides)``: the transfer ids let through,
    and the refusals. Any other failure fails the test."""
    start = threading.Barrier(sends)
    allowed: list[str] = []
    refused: list[str] = []
    failed: list[BaseException] = []

    def send(n: int) -> None:
        b, ledger = sides[n % len(sides)]
        transfer_id = f"{prefix}{n}"
        try:
            start.wait(deadline)
            with b.reserving():
                count = egress(b, claims(20_000), transfer_id, again=True)
                record_send(ledger, transfer_id, count)
            allowed.append(transfer_id)
        except PolicyDeniedError as exc:
            refused.append(str(exc))
        except BaseException as exc:  # pragma: no cover - reported below
            failed.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(sends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline)
    assert not any(thread.is_alive() for thread in threads)
    assert failed == []
    return allowed, refused

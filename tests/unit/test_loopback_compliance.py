"""Compliance end to end, in process: lingang's border at egress, frankfurt's at ingress.

A real lingang ``Sender`` wired to a real frankfurt ``Receiver`` (``tests.loopback``), each
with its own ``compliance:`` configuration and ledger counters. What is shown:

* the issue's example passport (core data, sensitive PI of 5,000,000 subjects, CN-SH -> EU-DE)
  is refused by lingang before anything is asked of frankfurt, naming DSL Art. 21; nothing is
  recorded on either side and the passport stays unspent;
* a transfer lingang allows and frankfurt's own table refuses is refused at frankfurt's offer
  with the rule id -- and with frankfurt in record-only mode it is delivered, the refusal
  logged as recorded;
* the yearly counters: a delivered transfer counts on both sides, once; a refused one and a
  cut one count nothing committed; a cut send resumed to the end counts once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.compliance import load_tables
from gateway.config import DEFAULT_RULE_TABLES, ComplianceConfig
from gateway.errors import PartnerError, PolicyDeniedError
from gateway.ledger import Counter
from gateway.logs import JsonFormatter
from gateway.passport_claims import EvidenceClaim
from gateway.transfer import TransferState
from tests.loopback import SEGMENT, Loopback, make_loopback
from tests.loopback_rig import (
    SHORT_FINAL,
    Rig,
    assert_delivered,
    assert_held,
    assert_not_visible,
    assert_partner_error,
    broken_after,
    record_uploads,
)

#: The passport of issue 10: delivered before the border existed.
ISSUE_EXAMPLE: Mapping[str, Any] = {
    "classification": "core",
    "pi": "sensitive",
    "subjects": 5_000_000,
    "legal_basis": "none",
}
ISSUE_EXAMPLE_REFUSED = (
    "cn-core-data: DSL Art. 21 (state core data): core data is not exported; "
    "cn-spi-10k: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: exporter lingang has sent "
    "sensitive personal information of 0 subjects this year; with 5000000 more it reaches "
    "5000000, at or above the threshold of 10000: needs cac-assessment"
)
#: Personal information of 1,200 subjects for exporter acme: below 100,000, no procedure.
PERSONAL_1200: Mapping[str, Any] = {"pi": "personal", "subjects": 1200, "exporter": "acme"}

#: Frankfurt's own table: stricter than the PRC rules lingang applies.
FRANKFURT_TABLE = """\
table: xbgw-rules
version: 1
name: frankfurt-house
description: Frankfurt's own condition for personal information from the PRC (a test table)
scope: {from: [CN], direction: ingress}
rules:
  - id: frankfurt-pi-contract
    article: "Frankfurt data-sharing agreement s. 4"
    when: {fact: cn_pi, in: [personal, sensitive]}
    outcome: {require: [pi-standard-contract]}
    message: frankfurt takes personal information from the PRC only under a standard contract
"""
FRANKFURT_REFUSAL = (
    "frankfurt-pi-contract: Frankfurt data-sharing agreement s. 4: frankfurt takes personal "
    "information from the PRC only under a standard contract: needs pi-standard-contract"
)


def frankfurt_rules(
    root: Path, ingress: Literal["enforce", "record"] = "enforce"
) -> ComplianceConfig:
    """The default tables and frankfurt's own, as its gateway.yaml would name them."""
    table = root / "frankfurt-house.yaml"
    table.write_text(FRANKFURT_TABLE, encoding="utf-8")
    tables = (*DEFAULT_RULE_TABLES, str(table))
    return ComplianceConfig(tables=tables, rules=load_tables(tables), ingress=ingress)


def relax(lb: Loopback, overrides: Mapping[str, Any]) -> None:
    """Both gateways reload with ``overrides`` of the default tables (as a SIGHUP would)."""
    rules = load_tables(DEFAULT_RULE_TABLES, overrides)
    for side in (lb.lingang, lb.frankfurt):
        side.config = replace(side.config, compliance=ComplianceConfig(rules=rules))
        side.sender.reconfigure(side.config)
        side.receiver.reconfigure(side.config)


def this_year(lb: Loopback) -> int:
    return datetime.fromtimestamp(lb.now[0], UTC).year  # year_timezone: UTC by default


def compliance_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The xbgw.compliance records as the daemon's JSON lines."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "xbgw.compliance"]


def assert_counts_nothing(lb: Loopback) -> None:
    assert lb.lingang.ledger.compliance_counters() == []
    assert lb.frankfurt.ledger.compliance_counters() == []


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    lb = make_loopback(tmp_path)
    made = Rig(lb)
    record_uploads(made, monkeypatch)
    try:
        yield made
    finally:
        lb.close()


@pytest.fixture
def strict_frankfurt(tmp_path: Path) -> Iterator[Loopback]:
    lb = make_loopback(tmp_path, compliance={"frankfurt": frankfurt_rules(tmp_path)})
    try:
        yield lb
    finally:
        lb.close()


# --- the issue's example ----------------------------------------------------------------------


def test_the_issue_example_is_refused_at_lingangs_egress(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    lb = rig.lb
    caplog.set_level(logging.INFO, logger="xbgw.compliance")
    data = os.urandom(300)
    token = lb.passport("dpo_issue-10-example", terms=ISSUE_EXAMPLE)

    with pytest.raises(PolicyDeniedError) as refused:
        rig.send(token, data)

    assert str(refused.value) == ISSUE_EXAMPLE_REFUSED
    assert refused.value.grpc_status == "PERMISSION_DENIED"
    assert rig.last_calls == []  # frankfurt was asked nothing, not even its key set
    assert lb.lingang.ledger.outbound("dpo_issue-10-example") is None
    assert lb.frankfurt.ledger.inbound("dpo_issue-10-example") is None  # the passport is unspent
    assert_counts_nothing(lb)
    assert lb.lingang.ledger.compliance_counts("egress", "lingang", this_year(lb)) == (0, 0)
    (line,) = compliance_lines(caplog)
    assert (line["level"], line["outcome"], line["rule"]) == (
        "warning",
        "refused",
        "cn-core-data,cn-spi-10k",
    )
    assert line["msg"] == f"compliance egress refused: {ISSUE_EXAMPLE_REFUSED}"
    assert {e["rule"]: e["article"] for e in line["trail"]}["cn-core-data"] == (
        "DSL Art. 21 (state core data)"
    )

    # Unspent: once both sides' rules let it through, the very same passport is delivered.
    # (cn-spi-10k cannot be disabled -- the exemptions name it -- so its threshold is raised.)
    raised = [
        {"fact": "ciio", "is": False},
        {"fact": "cn_pi", "is": "sensitive"},
        {"fact": "year_sensitive_after", "at_least": 10_000_000},
    ]
    relax(lb, {"cn-core-data": {"disable": True}, "cn-spi-10k": {"when": {"all": raised}}})
    summary = rig.send(token, data)
    assert_delivered(lb, "dpo_issue-10-example", data, summary)


# --- frankfurt's own rules at ingress ---------------------------------------------------------


def test_a_transfer_lingang_allows_is_refused_at_frankfurts_offer(
    strict_frankfurt: Loopback,
) -> None:
    lb = strict_frankfurt
    token = lb.passport("dpo_house-rule", terms=PERSONAL_1200)

    with pytest.raises(PartnerError) as refused:
        lb.resend(token, os.urandom(300))

    assert_partner_error(
        refused.value,
        "PERMISSION_DENIED",
        f"partner frankfurt refused the offer (PERMISSION_DENIED): {FRANKFURT_REFUSAL}",
    )
    assert lb.link.calls == ["key_set", "offer"]
    assert lb.frankfurt.ledger.inbound("dpo_house-rule") is None  # refused at the offer: unspent
    assert_not_visible(lb, "dpo_house-rule")
    assert_counts_nothing(lb)
    assert lb.frankfurt.ledger.compliance_counts("ingress", "acme", this_year(lb)) == (0, 0)

    # The rule is what refused: with the contract in the passport, frankfurt takes it.
    contract = (EvidenceClaim("pi-standard-contract", "SC-2026-0007"),)
    data = os.urandom(300)
    summary = lb.send(
        "dpo_house-rule-contract", data, terms={**PERSONAL_1200, "evidence": contract}
    )
    assert_delivered(lb, "dpo_house-rule-contract", data, summary)


def test_frankfurt_in_record_mode_takes_the_transfer_and_logs_the_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lb = make_loopback(tmp_path, compliance={"frankfurt": frankfurt_rules(tmp_path, "record")})
    caplog.set_level(logging.INFO, logger="xbgw.compliance")
    try:
        data = os.urandom(300)
        summary = lb.send("dpo_house-rule-recorded", data, terms=PERSONAL_1200)

        assert_delivered(lb, "dpo_house-rule-recorded", data, summary)
        lines = compliance_lines(caplog)
        assert [(line["msg"].split()[1], line["outcome"]) for line in lines] == [
            ("egress", "allowed"),
            ("ingress", "recorded"),  # once: the re-judgement under the lock adds no line
        ]
        recorded = lines[1]
        assert recorded["msg"] == f"compliance ingress recorded: {FRANKFURT_REFUSAL}"
        assert (recorded["level"], recorded["rule"], recorded["partner"]) == (
            "warning",
            "frankfurt-pi-contract",
            "lingang",
        )
        (entry,) = [e for e in recorded["trail"] if e["rule"] == "frankfurt-pi-contract"]
        assert (entry["outcome"], entry["needs"], entry["table"]) == (
            "required-missing",
            ["pi-standard-contract"],
            "frankfurt-house v1",
        )
        # Recorded, not refused: it counts like any transfer received.
        year = this_year(lb)
        assert lb.frankfurt.ledger.compliance_counters() == [
            Counter("ingress", "acme", year, 1200, 0)
        ]
    finally:
        lb.close()


# --- counters ---------------------------------------------------------------------------------


def test_a_delivered_transfer_counts_on_both_sides(rig: Rig) -> None:
    lb = rig.lb
    data = os.urandom(300)
    summary = rig.send(lb.passport("dpo_counted", terms=PERSONAL_1200), data)
    assert_delivered(lb, "dpo_counted", data, summary)
    year = this_year(lb)
    assert lb.lingang.ledger.compliance_counters() == [Counter("egress", "acme", year, 1200, 0)]
    assert lb.frankfurt.ledger.compliance_counters() == [Counter("ingress", "acme", year, 1200, 0)]
    # Committed, no longer in flight: the totals the next decision sees are the same 1,200.
    assert lb.lingang.ledger.compliance_counts("egress", "acme", year) == (1200, 0)
    assert lb.frankfurt.ledger.compliance_counts("ingress", "acme", year) == (1200, 0)


def test_a_transfer_refused_after_the_offer_counts_nothing(rig: Rig) -> None:
    """Frankfurt refuses for good mid-stream (the data runs past the passport's limit): its
    reservation goes with the refusal and nothing is committed on either side."""
    lb = rig.lb
    token = lb.passport("dpo_over-limit", byte_limit=300, terms=PERSONAL_1200)
    with pytest.raises(PartnerError) as refused:
        rig.send_chunks(token, iter([os.urandom(SHORT_FINAL)]), None)
    assert_partner_error(refused.value, "RESOURCE_EXHAUSTED", "exceeds its limit of 300 bytes")
    row = lb.frankfurt.ledger.inbound("dpo_over-limit")
    assert row is not None and row.state is TransferState.REFUSED
    assert_counts_nothing(lb)
    assert lb.frankfurt.ledger.compliance_counts("ingress", "acme", this_year(lb)) == (0, 0)


def test_a_cut_send_counts_in_flight_only_and_once_resumed(rig: Rig) -> None:
    lb = rig.lb
    year = this_year(lb)
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_cut-then-resumed", terms=PERSONAL_1200)
    lb.link.tamper = broken_after(3)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    assert_held(lb, "dpo_cut-then-resumed", rig.sent(0)[:3])

    # Cut, never finished: reserved while in flight, nothing committed.
    assert_counts_nothing(lb)
    assert lb.lingang.ledger.compliance_counts("egress", "acme", year) == (1200, 0)
    assert lb.frankfurt.ledger.compliance_counts("ingress", "acme", year) == (1200, 0)

    summary = rig.send(token, data)  # resumed: judged again on both sides, not against itself
    assert rig.last_held == 3 * SEGMENT
    assert_delivered(lb, "dpo_cut-then-resumed", data, summary)
    assert lb.lingang.ledger.compliance_counters() == [Counter("egress", "acme", year, 1200, 0)]
    assert lb.frankfurt.ledger.compliance_counters() == [Counter("ingress", "acme", year, 1200, 0)]
    assert lb.lingang.ledger.compliance_counts("egress", "acme", year) == (1200, 0)
    assert lb.frankfurt.ledger.compliance_counts("ingress", "acme", year) == (1200, 0)


def test_a_resume_near_the_threshold_is_not_refused_by_its_own_reservation(rig: Rig) -> None:
    """acme has 98,000 subjects committed this year; a send of 1,500 is cut and resumed. If
    the resume counted its own reservation it would reach 101,000 and be refused."""
    lb = rig.lb
    year = this_year(lb)
    for n in range(2):
        rig.send(lb.passport(f"dpo_earlier-{n}", terms={**PERSONAL_1200, "subjects": 49_000}), b"x")
    assert lb.lingang.ledger.compliance_counts("egress", "acme", year) == (98_000, 0)
    data = os.urandom(SHORT_FINAL)
    token = lb.passport("dpo_near", terms={**PERSONAL_1200, "subjects": 1500})
    lb.link.tamper = broken_after(2)
    with pytest.raises(PartnerError):
        rig.send(token, data)

    summary = rig.send(token, data)

    assert_delivered(lb, "dpo_near", data, summary)
    assert lb.lingang.ledger.compliance_counters() == [Counter("egress", "acme", year, 99_500, 0)]
    assert lb.frankfurt.ledger.compliance_counters() == [
        Counter("ingress", "acme", year, 99_500, 0)
    ]
    with pytest.raises(PolicyDeniedError, match=r"^cn-pi-100k: .* reaches 100000, at or above"):
        rig.send(lb.passport("dpo_one-too-many", terms={**PERSONAL_1200, "subjects": 500}), b"x")


def test_a_send_refused_at_the_offer_releases_its_reservation(
    strict_frankfurt: Loopback,
) -> None:
    lb = strict_frankfurt
    with pytest.raises(PartnerError):
        lb.send("dpo_house-rule", os.urandom(300), terms=PERSONAL_1200)
    assert lb.lingang.ledger.compliance_counts("egress", "acme", this_year(lb)) == (0, 0)

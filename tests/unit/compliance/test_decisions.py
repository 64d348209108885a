"""Decisions on the shipped tables: the issue's passport, expiry, thresholds, the trail."""

from __future__ import annotations

import json

import pytest

from gateway.compliance import Outcome
from tests.unit.compliance.support import (
    ALL,
    BASE,
    NOW,
    assessment,
    decide,
    outcome,
    pi,
    proof,
    transfer,
)

CONTRACT = proof("pi-standard-contract", "SC-2026-0001")

# The passport of issue 10: --classification core --pi sensitive --subjects 5000000
# --legal-basis none, CN-SH -> EU-DE. It was delivered; it must be refused, naming articles.
ISSUE_10 = transfer(cn_class="core", cn_pi="sensitive", subjects=5_000_000)


def test_issue_10_passport_is_refused_naming_the_articles() -> None:
    decision = decide(ISSUE_10)
    assert not decision.allow
    assert decision.reasons == (
        "cn-core-data: DSL Art. 21 (state core data): core data is not exported",
        "cn-spi-10k: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: exporter acme has sent "
        "sensitive personal information of 0 subjects this year; with 5000000 more it "
        "reaches 5000000, at or above the threshold of 10000: needs cac-assessment",
    )
    assert [e.rule for e in decision.refused_by] == ["cn-core-data", "cn-spi-10k"]


# --- evidence expiry --------------------------------------------------------------------------


def test_expired_assessment_is_refused_saying_when_it_expired() -> None:
    expired = assessment(expires=NOW - 1)
    decision = decide(transfer(cn_class="important", evidence=(expired,)))
    assert not decision.allow
    assert decision.reasons[0].endswith(
        "needs cac-assessment; cac-assessment CAC-SA-2025-0042 expired 2025-12-31T23:59:59Z"
    )


def test_assessment_expiring_now_is_expired() -> None:
    """Valid means ``expires > now``: at the second of expiry it no longer counts."""
    at_now = decide(transfer(cn_class="important", evidence=(assessment(expires=NOW),)))
    assert not at_now.allow
    later = decide(transfer(cn_class="important", evidence=(assessment(expires=NOW + 1),)))
    assert later.allow


def test_a_valid_assessment_next_to_an_expired_one_suffices() -> None:
    both = (assessment(expires=NOW - 1), assessment())
    assert decide(transfer(cn_class="important", evidence=both)).allow


def test_evidence_without_expiry_does_not_expire() -> None:
    assert decide(transfer(cn_class="important", evidence=(assessment(expires=None),))).allow


# --- thresholds at their bounds, counted with the year's counters ---------------------------


@pytest.mark.parametrize(
    ("before", "count", "rule", "needs"),
    [
        (99_000, 999, "cn-pi-below-100k", ""),  # 99,999: Art. 5(4)
        (99_999, 1, "cn-pi-100k", "pi-standard-contract or pi-certification"),  # 100,000
        (0, 100_000, "cn-pi-100k", "pi-standard-contract or pi-certification"),
        (999_998, 1, "cn-pi-100k", "pi-standard-contract or pi-certification"),  # 999,999
        (999_999, 1, "cn-pi-1m", "cac-assessment"),  # 1,000,000: Art. 7(2)
        (0, 1_000_000, "cn-pi-1m", "cac-assessment"),
    ],
)
def test_non_sensitive_thresholds(before: int, count: int, rule: str, needs: str) -> None:
    decision = decide(pi(count, before=before))
    applicable = [e.rule for e in decision.trail if e.outcome is not Outcome.NOT_APPLICABLE]
    assert applicable == [rule]
    assert decision.allow is not bool(needs)
    if needs:
        threshold = 100_000 if rule == "cn-pi-100k" else 1_000_000
        assert decision.reasons[0].endswith(
            f"reaches {before + count}, at or above the threshold of {threshold}: needs {needs}"
        )


@pytest.mark.parametrize(
    ("before", "count", "rule"),
    [
        (0, 1, "cn-spi-below-10k"),
        (9_998, 1, "cn-spi-below-10k"),  # 9,999: Art. 8
        (9_999, 1, "cn-spi-10k"),  # 10,000: Art. 7(2)
        (0, 10_000, "cn-spi-10k"),
    ],
)
def test_sensitive_thresholds(before: int, count: int, rule: str) -> None:
    decision = decide(pi(count, sensitive=True, before=before))
    assert [e.rule for e in decision.refused_by] == [rule]
    entry = decision.refused_by[0]
    assert ("year_sensitive_after", before + count) in entry.facts


def test_the_two_counters_are_apart() -> None:
    """Sensitive subjects sent earlier do not count towards the non-sensitive thresholds."""
    decision = decide(pi(10, before=0, year_sensitive=500_000))
    assert decision.allow
    assert outcome(decision, "cn-pi-below-100k") == "allowed"


def test_a_contract_does_not_meet_the_assessment_threshold() -> None:
    assert not decide(pi(1, before=999_999, evidence=(CONTRACT,))).allow
    assert decide(pi(1, before=999_998, evidence=(CONTRACT,))).allow


# --- the trail --------------------------------------------------------------------------------


def test_every_rule_leaves_one_trail_entry_in_table_order() -> None:
    decision = decide(BASE)
    assert [e.rule for e in decision.trail] == [r.id for r in ALL.rules]


def test_trail_entry_carries_rule_article_facts_and_outcome() -> None:
    decision = decide(pi(10_000, before=200_000))
    (entry,) = decision.refused_by
    assert entry.rule == "cn-pi-100k"
    assert entry.article == "CAC 2024 Provisions Art. 8; PIPL Art. 38"
    assert entry.outcome is Outcome.REQUIRED_MISSING
    assert entry.needs == ("pi-standard-contract", "pi-certification")
    assert entry.table == "prc-export v1"
    assert dict(entry.facts) == {
        "sender_jurisdiction": "CN-SH",
        "receiver_jurisdiction": "EU-DE",
        "ciio": False,
        "cn_pi": "personal",
        "year_subjects_after": 210_000,
    }


def test_trail_entry_as_dict_is_json() -> None:
    (entry,) = decide(pi(10_000, before=200_000)).refused_by
    logged = json.loads(json.dumps(entry.as_dict()))
    assert logged["rule"] == "cn-pi-100k"
    assert logged["outcome"] == "required-missing"
    assert logged["needs"] == ["pi-standard-contract", "pi-certification"]
    assert logged["facts"]["ciio"] == "false"
    assert logged["facts"]["year_subjects_after"] == "210000"


def test_explain_prints_the_decision_and_the_applicable_rules() -> None:
    text = decide(transfer(cn_class="important", evidence=(assessment(),))).explain()
    assert text.splitlines() == [
        "allowed",
        "trail:",
        "  required-met     cn-important-data [CAC 2024 Provisions Art. 7(1), 7(2); DSL Art. 31] "
        "sender_jurisdiction=CN-SH receiver_jurisdiction=EU-DE cn_class=important: "
        "met by cac-assessment CAC-SA-2025-0042",
    ]


def test_explain_everything_includes_rules_that_did_not_apply() -> None:
    decision = decide(ISSUE_10)
    text = decision.explain(everything=True)
    assert text.startswith("refused\n  cn-core-data: DSL Art. 21")
    assert text.count("\n  not-applicable") == len(ALL.rules) - 2

"""Facts for the compliance tests: a plain transfer from Lingang to Frankfurt, changed per test."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.compliance import Decision, Direction, Evidence, RuleSet, TransferFacts, load_tables

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
YEAR3 = 3 * 365 * DAY  # a CAC assessment is valid 3 years

#: Every shipped table, as a deployment on the Lingang side would load them.
ALL = load_tables(["baseline", "prc-export", "gdpr-chapter-v", "ftz-example"])

BASE = TransferFacts(
    direction=Direction.EGRESS,
    now=NOW,
    sender="lingang",
    receiver="frankfurt",
    sender_jurisdiction="CN-SH",
    receiver_jurisdiction="EU-DE",
    passport_src="CN-SH",
    passport_dst="EU-DE",
    zone=None,
    exporter="acme",
    ciio=False,
    cn_class="general",
    cn_pi="none",
    eu_class="non-personal",
    subjects=0,
    categories=(),
    purpose="logistics",
    evidence=(),
    byte_limit=10 * 2**20,
    year_subjects=0,
    year_sensitive=0,
)

#: The same, the other way: Frankfurt exports to Lingang (GDPR Chapter V applies).
FROM_EU = replace(
    BASE,
    sender="frankfurt",
    receiver="lingang",
    sender_jurisdiction="EU-DE",
    receiver_jurisdiction="CN-SH",
    passport_src="EU-DE",
    passport_dst="CN-SH",
)

_CLASSES = {"none": "non-personal", "personal": "personal", "sensitive": "special"}


def transfer(base: TransferFacts = BASE, /, **changes: Any) -> TransferFacts:
    """``base`` with ``changes``; ``eu_class`` follows ``cn_pi`` unless given."""
    if "cn_pi" in changes and "eu_class" not in changes:
        changes["eu_class"] = _CLASSES[changes["cn_pi"]]
    return replace(base, **changes)


def pi(count: int, *, sensitive: bool = False, before: int = 0, **changes: Any) -> TransferFacts:
    """A transfer of personal information of ``count`` subjects, ``before`` sent this year."""
    kind = "sensitive" if sensitive else "personal"
    changes["year_sensitive" if sensitive else "year_subjects"] = before
    return transfer(BASE, cn_pi=kind, subjects=count, **changes)


def proof(kind: str, reference: str = "", **fields: Any) -> Evidence:
    return Evidence(kind, reference or f"{kind.upper()}-0001", **fields)


def assessment(expires: int | None = NOW + YEAR3) -> Evidence:
    return Evidence("cac-assessment", "CAC-SA-2025-0042", expires=expires)


def exemption(article: str) -> Evidence:
    return Evidence("exemption", "claim-1", article=article)


def outcome(decision: Decision, rule: str) -> str:
    """The trail outcome of ``rule`` in ``decision`` (e.g. "required-missing")."""
    (entry,) = [e for e in decision.trail if e.rule == rule]
    return entry.outcome.value


def decide(facts: TransferFacts, rules: RuleSet = ALL) -> Decision:
    return rules.decide(facts)

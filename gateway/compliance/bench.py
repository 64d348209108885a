"""``python -m gateway.compliance.bench``: what one compliance decision costs.

Why it exists: a decision is made on every offer, on both sides, and the issue sets a budget
(under 0.1 ms per transfer). Tests must not time things -- a loaded CI machine makes timing
tests flaky -- so this measures and prints, and ``make bench`` (or anyone) can call
:func:`evaluation_microseconds`.
"""

from __future__ import annotations

import sys
import time

from gateway.compliance import RuleSet, load_tables, shipped_tables
from gateway.compliance.facts import Direction, Evidence, TransferFacts

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def sample_facts() -> TransferFacts:
    """A busy case: sensitive PI from Lingang to Frankfurt with a contract on file."""
    return TransferFacts(
        direction=Direction.EGRESS,
        now=NOW,
        sender="lingang",
        receiver="frankfurt",
        sender_jurisdiction="CN-SH",
        receiver_jurisdiction="EU-DE",
        passport_src="CN-SH",
        passport_dst="EU-DE",
        zone="example",
        exporter="acme",
        ciio=False,
        cn_class="general",
        cn_pi="sensitive",
        eu_class="special",
        subjects=1200,
        categories=("example-clinical-research",),
        purpose="clinical trial",
        evidence=(Evidence("pi-standard-contract", "SC-2026-0042"),),
        byte_limit=10 * 2**20,
        year_subjects=50_000,
        year_sensitive=3_000,
    )


def evaluation_microseconds(
    rules: RuleSet, n: int = 20_000, facts: TransferFacts | None = None
) -> float:
    """Mean wall-clock microseconds of ``rules.decide(facts)`` over ``n`` decisions."""
    facts = facts or sample_facts()
    decide = rules.decide
    start = time.perf_counter()
    for _ in range(n):
        decide(facts)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    rules = load_tables(shipped_tables())
    decide_us = evaluation_microseconds(rules)
    print(f"{len(rules.rules)} rules ({', '.join(rules.tables)}): {decide_us:.1f} us/decision")
    return 0


if __name__ == "__main__":
    sys.exit(main())

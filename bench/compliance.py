"""What a compliance decision costs a transfer, per side, as the daemon makes it.

A transfer is judged twice on each side (once early, once under the reservation lock just
before it is recorded: ``gateway.compliance.border``), each time building the facts -- the
passport's terms plus the exporter's yearly counters, a ledger query -- and running the rule
tables. This measures exactly that, in process, on a ledger holding ``HISTORY`` committed
transfers of the same exporter (so the counter query is not answered from an empty table).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.compliance import RuleSet
from gateway.compliance.border import Border
from gateway.compliance.facts import Direction, Evidence, TransferFacts
from gateway.config import ComplianceConfig
from gateway.ledger import Count, Ledger
from gateway.passport_claims import EvidenceClaim, XbgwClaims
from gateway.signed import Signed

HISTORY = 1000


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


TARGET_DECISION_MS = 0.1  # the budget per transfer


def _claims() -> XbgwClaims:
    return XbgwClaims(
        sender="lingang",
        src="CN-SH",
        dst="EU-DE",
        classification="general",
        pi="personal",
        subjects=1200,
        purpose="clinical trial",
        legal_basis="SC-2026-0042",
        byte_limit=10 * 2**20,
        exporter="acme",
        evidence=(EvidenceClaim("pi-standard-contract", "SC-2026-0042"),),
    )


def bench_compliance(decisions: int) -> dict[str, Any]:
    """Mean cost of one side's judgements of one transfer, and of ``decide`` alone."""
    config = ComplianceConfig()
    claims = _claims()
    with tempfile.TemporaryDirectory(prefix="xbgw-bench-compliance-") as scratch:
        ledger = Ledger(Path(scratch) / "ledger.sqlite3")
        try:
            receipt = Signed(b"body", b"sig", "frankfurt/signing/1")
            for n in range(HISTORY):
                ledger.create_outbound(
                    transfer_id=f"h-{n}",
                    partner="frankfurt",
                    passport_digest=bytes(32),
                    sent_header=b"sent",
                    stored_header=b"stored",
                    count=Count("acme", 2026, 10, 0),
                )
                ledger.deliver_outbound(f"h-{n}", 1, bytes(32), receipt)
            border = Border(config, ledger, clock=lambda: 1_780_000_000.0)  # in 2026
            sender, receiver = ("lingang", "CN-SH"), ("frankfurt", "EU-DE")

            def judge(transfer_id: str, again: bool) -> None:
                border.judge(
                    Direction.EGRESS,
                    claims,
                    transfer_id=transfer_id,
                    sender=sender,
                    receiver=receiver,
                    again=again,
                )

            for n in range(min(decisions, 200)):  # warm-up: imports, caches, the first pages
                judge(f"w-{n}", again=False)
            start = time.perf_counter()
            for n in range(decisions):
                judge(f"t-{n}", again=False)
                with border.reserving():
                    judge(f"t-{n}", again=True)
            per_transfer_ms = (time.perf_counter() - start) / decisions * 1000
        finally:
            ledger.close()
    return {
        "rules": len(config.rules.rules),
        "tables": list(config.rules.tables),
        "decide_us": evaluation_microseconds(config.rules, n=decisions),
        "per_transfer_ms": per_transfer_ms,
        "decisions": decisions,
        "source": (
            "measured in process: two judgements per transfer (early, and under the "
            "reservation lock), each the passport's terms + a counter query on a ledger of "
            f"{HISTORY} delivered transfers + the default rule tables"
        ),
    }

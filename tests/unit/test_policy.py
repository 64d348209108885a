"""The policy hook: facts of a transfer, and the jurisdiction checks no rule table turns off."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from gateway.policy import (
    BaselinePolicy,
    Decision,
    Direction,
    Policy,
    TransferFacts,
    facts,
)


@dataclass(frozen=True)
class Terms:
    """The passport claims a policy reads (what ``passport.XbgwClaims`` provides)."""

    src: str = "CN-SH"
    dst: str = "EU-DE"
    classification: str = "confidential"
    pi: str = "personal"
    subjects: int = 1200
    legal_basis: str = "CAC-SC-2026-0042"
    byte_limit: int = 10 * 2**20


SENDER = ("lingang", "CN-SH")
RECEIVER = ("frankfurt", "EU-DE")


def _facts(terms: Terms = Terms(), direction: Direction = Direction.INGRESS) -> TransferFacts:
    return facts(direction, terms, SENDER, RECEIVER)


def test_facts_maps_every_field() -> None:
    got = facts(Direction.EGRESS, Terms(), SENDER, RECEIVER)
    assert got == TransferFacts(
        direction=Direction.EGRESS,
        sender="lingang",
        receiver="frankfurt",
        sender_jurisdiction="CN-SH",
        receiver_jurisdiction="EU-DE",
        passport_src="CN-SH",
        passport_dst="EU-DE",
        classification="confidential",
        pi="personal",
        subjects=1200,
        legal_basis="CAC-SC-2026-0042",
        byte_limit=10 * 2**20,
    )


def test_facts_keeps_sender_and_receiver_apart() -> None:
    terms = Terms(src="A", dst="B", classification="c", pi="none", subjects=0, byte_limit=1)
    got = facts(Direction.INGRESS, terms, ("gw-x", "X"), ("gw-y", "Y"))
    assert (got.sender, got.sender_jurisdiction) == ("gw-x", "X")
    assert (got.receiver, got.receiver_jurisdiction) == ("gw-y", "Y")
    assert (got.passport_src, got.passport_dst) == ("A", "B")
    assert (got.pi, got.subjects, got.byte_limit) == ("none", 0, 1)
    assert got.direction is Direction.INGRESS


def test_direction_values() -> None:
    assert [d.value for d in Direction] == ["egress", "ingress"]


@pytest.mark.parametrize("direction", list(Direction))
def test_matching_jurisdictions_are_allowed(direction: Direction) -> None:
    decision = BaselinePolicy().decide(_facts(direction=direction))
    assert decision == Decision(allow=True, reasons=())


def test_source_mismatch_is_refused() -> None:
    decision = BaselinePolicy().decide(_facts(Terms(src="US-CA")))
    assert decision.allow is False
    assert decision.reasons == (
        "passport source jurisdiction US-CA is not the sending gateway's CN-SH",
    )


def test_destination_mismatch_is_refused() -> None:
    decision = BaselinePolicy().decide(_facts(Terms(dst="SG")))
    assert decision.allow is False
    assert decision.reasons == (
        "passport destination jurisdiction SG is not the receiving gateway's EU-DE",
    )


def test_both_mismatches_give_both_reasons_in_order() -> None:
    decision = BaselinePolicy().decide(_facts(Terms(src="EU-DE", dst="CN-SH")))
    assert decision.allow is False
    assert len(decision.reasons) == 2
    src_reason, dst_reason = decision.reasons
    assert "source" in src_reason
    assert "EU-DE" in src_reason
    assert "CN-SH" in src_reason
    assert "destination" in dst_reason
    assert "CN-SH" in dst_reason
    assert "EU-DE" in dst_reason


def test_comparison_is_exact() -> None:
    """No case folding or trimming: 'cn-sh' is another jurisdiction than 'CN-SH'."""
    decision = BaselinePolicy().decide(_facts(Terms(src="cn-sh", dst="EU-DE ")))
    assert decision.allow is False
    assert len(decision.reasons) == 2


def test_other_facts_do_not_matter_to_the_baseline() -> None:
    base = _facts()
    for changed in (
        replace(base, classification="secret"),
        replace(base, subjects=10**9),
        replace(base, legal_basis=""),
        replace(base, byte_limit=0),
    ):
        assert BaselinePolicy().decide(changed).allow is True


def test_baseline_policy_satisfies_the_protocol() -> None:
    policy: Policy = BaselinePolicy()
    assert policy.decide(_facts()).allow is True


def test_decision_defaults_to_no_reasons() -> None:
    assert Decision(allow=True).reasons == ()

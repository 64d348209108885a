"""The decision point where jurisdiction and classification rules apply.

The rule table itself comes later; what exists now is the hook, called on both sides at the
moment a transfer is authorised, and the checks no rule table may switch off: the passport's
jurisdictions must be those of the two gateways it moves data between.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Direction(StrEnum):
    EGRESS = "egress"
    INGRESS = "ingress"


class PassportTerms(Protocol):
    """The passport claims a policy reads (``passport.XbgwClaims`` satisfies it)."""

    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def classification(self) -> str: ...
    @property
    def pi(self) -> str: ...
    @property
    def subjects(self) -> int: ...
    @property
    def legal_basis(self) -> str: ...
    @property
    def byte_limit(self) -> int: ...


@dataclass(frozen=True)
class TransferFacts:
    """What the policy sees: the verified passport claims and the gateways involved."""

    direction: Direction
    sender: str
    receiver: str
    sender_jurisdiction: str
    receiver_jurisdiction: str
    passport_src: str
    passport_dst: str
    classification: str
    pi: str
    subjects: int
    legal_basis: str
    byte_limit: int


def facts(
    direction: Direction,
    terms: PassportTerms,
    sender: tuple[str, str],
    receiver: tuple[str, str],
) -> TransferFacts:
    """The facts of one transfer: passport terms plus ``(gateway id, jurisdiction)`` pairs."""
    return TransferFacts(
        direction=direction,
        sender=sender[0],
        receiver=receiver[0],
        sender_jurisdiction=sender[1],
        receiver_jurisdiction=receiver[1],
        passport_src=terms.src,
        passport_dst=terms.dst,
        classification=terms.classification,
        pi=terms.pi,
        subjects=terms.subjects,
        legal_basis=terms.legal_basis,
        byte_limit=terms.byte_limit,
    )


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)


class Policy(Protocol):
    def decide(self, facts: TransferFacts) -> Decision: ...


class BaselinePolicy:
    """Jurisdiction consistency only; every rule table is applied on top of this."""

    def decide(self, facts: TransferFacts) -> Decision:
        reasons = []
        if facts.passport_src != facts.sender_jurisdiction:
            reasons.append(
                f"passport source jurisdiction {facts.passport_src} is not the sending "
                f"gateway's {facts.sender_jurisdiction}"
            )
        if facts.passport_dst != facts.receiver_jurisdiction:
            reasons.append(
                f"passport destination jurisdiction {facts.passport_dst} is not the receiving "
                f"gateway's {facts.receiver_jurisdiction}"
            )
        return Decision(allow=not reasons, reasons=tuple(reasons))

"""The facts a compliance decision is made on: what the passport says about the data, who
moves it where, and what this gateway has already let the same exporter send this year.

Why a fact model of its own: rules are data (``gateway/compliance/tables/*.yaml``) and may
name only what is here, so a rule table can be checked completely at load time -- a rule that
names a fact that does not exist is a table error, never a transfer refused at 3 a.m. The
passport (``gateway.passport.XbgwClaims``) and the ledger's counters are turned into these
facts in one place (:func:`gateway.compliance.facts_of`, built with the passport claims), so
rules never read a claim or a table directly.

Classification per regime (one transfer, classified under each regime that may apply):

* ``cn_class`` -- PRC data classification (DSL Art. 21; GB/T 43697-2024): ``core``,
  ``important`` or ``general``.
* ``cn_pi`` -- PRC personal information (PIPL Art. 4, Art. 28): ``none``, ``personal`` or
  ``sensitive``.
* ``eu_class`` -- GDPR: ``non-personal``, ``personal`` (Art. 4(1)) or ``special`` (special
  categories, Art. 9).

The mapping between ``cn_pi`` and ``eu_class`` is data too (the rule table's ``mapping``):
a passport that gives one and not the other gets the other from it, and a passport that
gives both must agree with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from typing import Final


class Direction(StrEnum):
    EGRESS = "egress"  # this gateway sends: the exporting side enforces its jurisdiction
    INGRESS = "ingress"  # this gateway receives: it re-evaluates (enforce or record-only)


CN_CLASSES: Final = ("core", "important", "general")
CN_PI: Final = ("none", "personal", "sensitive")
EU_CLASSES: Final = ("non-personal", "personal", "special")

#: Evidence kinds a passport may carry and a rule may require.
EVIDENCE_KINDS: Final = (
    "cac-assessment",  # CAC security assessment (Provisions Art. 7); valid 3 years
    "pi-standard-contract",  # PI standard contract filing (Provisions Art. 8)
    "pi-certification",  # PI protection certification (Provisions Art. 8)
    "exemption",  # an exemption claimed; ``article`` names it (e.g. "Provisions Art. 5(1)")
    "ftz-procedure",  # the procedure an FTZ list requires for a category (Provisions Art. 6)
    "gdpr-scc",  # Art. 46(2)(c) standard contractual clauses; ``module`` and ``tia``
    "gdpr-bcr",  # Art. 47 binding corporate rules
    "gdpr-derogation",  # Art. 49; ``article`` names the derogation (e.g. "Art. 49(1)(b)")
)


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence a passport references (the issuer vouches that it exists)."""

    kind: str  # one of EVIDENCE_KINDS
    reference: str  # assessment number, filing id, certificate id, BCR approval, ...
    expires: int | None = None  # Unix seconds; None: does not expire
    article: str | None = None  # exemption / derogation claimed
    module: str | None = None  # SCC module ("1".."4", Decision 2021/914)
    tia: str | None = None  # transfer impact assessment reference (with SCCs)


@dataclass(frozen=True)
class TransferFacts:
    """Everything a rule may test. Counts are of data subjects."""

    direction: Direction
    now: int  # Unix seconds of the decision (evidence expiry is checked against it)
    # who moves it where
    sender: str
    receiver: str
    sender_jurisdiction: str  # e.g. "CN-SH"
    receiver_jurisdiction: str  # e.g. "EU-DE"
    passport_src: str
    passport_dst: str
    zone: str | None  # the free-trade zone the data is exported from, if any (e.g. "lingang")
    # the data handler
    exporter: str
    ciio: bool  # critical-information-infrastructure operator
    # the data
    cn_class: str
    cn_pi: str
    eu_class: str
    subjects: int  # in this transfer
    categories: tuple[str, ...]  # for FTZ list matching
    purpose: str
    evidence: tuple[Evidence, ...]
    byte_limit: int
    # this calendar year, for this exporter, before this transfer (ledger counters)
    year_subjects: int  # non-sensitive personal information
    year_sensitive: int  # sensitive personal information
    # the passport names the data set's SHA-256 (``sub``), binding the transfer to that data:
    # a table may require it for a classification ({fact: has_digest, is: false} -> refuse)
    has_digest: bool = False


# --- what a rule may name: the fields above and the derived facts, with their kinds -----------
# (gateway.compliance.engine builds its tests on this; a rule table may name nothing else.)

FactValue = str | int | bool | tuple[str, ...] | None


class Kind(StrEnum):
    TEXT = "text"  # a string (None for an absent optional one, such as zone)
    CHOICE = "choice"  # a string from a fixed set
    COUNT = "count"  # an integer
    FLAG = "flag"  # a boolean
    TEXTS = "texts"  # a tuple of strings


@dataclass(frozen=True, slots=True)
class Fact:
    name: str
    kind: Kind
    get: Callable[[TransferFacts], FactValue] = field(repr=False, compare=False)
    choices: tuple[str, ...] = ()
    derived: str = ""  # how a derived fact is computed; empty for a field of TransferFacts


def _field(name: str, kind: Kind, choices: tuple[str, ...] = ()) -> Fact:
    return Fact(name, kind, attrgetter(name), choices)


def _valid(facts: TransferFacts) -> Iterable[tuple[str, str | None]]:
    """(kind, article) of each piece of evidence that has not expired."""
    now = facts.now
    return ((e.kind, e.article) for e in facts.evidence if e.expires is None or e.expires > now)


_DERIVED = (
    Fact(
        "year_subjects_after",
        Kind.COUNT,
        lambda f: f.year_subjects + (f.subjects if f.cn_pi == "personal" else 0),
        derived="year_subjects, plus subjects when cn_pi is personal",
    ),
    Fact(
        "year_sensitive_after",
        Kind.COUNT,
        lambda f: f.year_sensitive + (f.subjects if f.cn_pi == "sensitive" else 0),
        derived="year_sensitive, plus subjects when cn_pi is sensitive",
    ),
    Fact(
        "sender_country",
        Kind.TEXT,
        lambda f: f.sender_jurisdiction.partition("-")[0],
        derived="sender_jurisdiction before the '-' (CN-SH -> CN)",
    ),
    Fact(
        "receiver_country",
        Kind.TEXT,
        lambda f: f.receiver_jurisdiction.partition("-")[0],
        derived="receiver_jurisdiction before the '-' (EU-DE -> EU)",
    ),
    Fact(
        "evidence_kinds",
        Kind.TEXTS,
        lambda f: tuple(sorted({kind for kind, _ in _valid(f)})),
        derived="kinds of the evidence that has not expired",
    ),
    Fact(
        "exemptions_claimed",
        Kind.TEXTS,
        lambda f: tuple(a for kind, a in _valid(f) if kind == "exemption" and a),
        derived="articles named by 'exemption' evidence that has not expired",
    ),
)

#: Every fact a rule may name, by name: the fields of ``TransferFacts`` (``evidence`` only
#: through the derived facts and requirements) and the derived facts.
FACTS: Mapping[str, Fact] = {
    fact.name: fact
    for fact in (
        _field("direction", Kind.CHOICE, tuple(d.value for d in Direction)),
        _field("now", Kind.COUNT),
        *(_field(n, Kind.TEXT) for n in ("sender", "receiver", "sender_jurisdiction")),
        *(_field(n, Kind.TEXT) for n in ("receiver_jurisdiction", "passport_src")),
        *(_field(n, Kind.TEXT) for n in ("passport_dst", "zone", "exporter", "purpose")),
        _field("ciio", Kind.FLAG),
        _field("has_digest", Kind.FLAG),
        _field("cn_class", Kind.CHOICE, CN_CLASSES),
        _field("cn_pi", Kind.CHOICE, CN_PI),
        _field("eu_class", Kind.CHOICE, EU_CLASSES),
        *(_field(n, Kind.COUNT) for n in ("subjects", "byte_limit")),
        *(_field(n, Kind.COUNT) for n in ("year_subjects", "year_sensitive")),
        _field("categories", Kind.TEXTS),
        *_DERIVED,
    )
}


def show(value: FactValue) -> str:
    """A fact value as the trail and messages print it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return "none" if value is None else str(value)

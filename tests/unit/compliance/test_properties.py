"""Properties: a decision never allows when an applicable rule refuses or a requirement is
missing -- and allows otherwise -- checked against an independent reading of random tables.

The tables are generated as YAML documents and loaded through the same checks as files; a
small evaluator here, written from the table format and not from the engine, says which
rules apply. Hypothesis then looks for facts and tables on which the two disagree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.compliance import Direction, Evidence, Outcome, TransferFacts, rules_from_documents
from gateway.compliance.facts import CN_CLASSES, CN_PI
from tests.unit.compliance.support import NOW

KINDS = ("cac-assessment", "pi-standard-contract", "gdpr-scc", "exemption")
ARTICLES = ("A", "B")
CATEGORIES = ("c1", "c2", "c3")
JURISDICTIONS = ("CN", "CN-SH", "EU-DE", "US")

Doc = dict[str, Any]

# --- the reference reading of a condition ----------------------------------------------------


def _valid(e: Evidence, now: int) -> bool:
    return e.expires is None or e.expires > now


def _value(f: TransferFacts, fact: str) -> Any:
    if fact == "year_subjects_after":
        return f.year_subjects + (f.subjects if f.cn_pi == "personal" else 0)
    if fact == "exemptions_claimed":
        return tuple(e.article for e in f.evidence if e.kind == "exemption" and _valid(e, f.now))
    return getattr(f, fact)


def holds(cond: Doc, f: TransferFacts) -> bool:
    if "all" in cond:
        return all(holds(c, f) for c in cond["all"])
    if "any" in cond:
        return any(holds(c, f) for c in cond["any"])
    if "not" in cond:
        return not holds(cond["not"], f)
    value = _value(f, cond["fact"])
    if "is" in cond:
        return bool(value == cond["is"])
    if "in" in cond:
        return value in cond["in"]
    if "within" in cond:
        return any(value == c or value.startswith(c + "-") for c in cond["within"])
    if "at_least" in cond:
        return bool(value >= cond["at_least"])
    if "below" in cond:
        return bool(value < cond["below"])
    if "contains" in cond:
        return cond["contains"] in value
    return bool(set(cond["intersects"]) & set(value))


def expected_allow(doc: Doc, f: TransferFacts) -> bool:
    rules = doc["rules"]
    applies = {
        r["id"]: holds(r.get("when", {"all": []}), f)
        and (not r.get("scope") or holds({"fact": "sender_jurisdiction", "within": ["CN"]}, f))
        for r in rules
    }
    waived = {
        target
        for r in rules
        if applies[r["id"]] and isinstance(r["outcome"], dict) and "exempt" in r["outcome"]
        for target in r["outcome"]["exempt"]
    }
    for r in rules:
        if not applies[r["id"]]:
            continue
        if r["outcome"] == "refuse":
            return False
        need = r["outcome"].get("require") if isinstance(r["outcome"], dict) else None
        if need and r["id"] not in waived and not any(_met(w, f) for w in need):
            return False
    return True


def _met(wanted: str | Doc, f: TransferFacts) -> bool:
    kind, fields = (wanted, []) if isinstance(wanted, str) else (wanted["kind"], wanted["with"])
    return any(
        e.kind == kind and _valid(e, f.now) and all(getattr(e, n) for n in fields)
        for e in f.evidence
    )


# --- strategies -------------------------------------------------------------------------------

leaves = st.one_of(
    st.sampled_from(CN_CLASSES).map(lambda v: {"fact": "cn_class", "is": v}),
    st.lists(st.sampled_from(CN_PI), min_size=1, unique=True).map(
        lambda v: {"fact": "cn_pi", "in": v}
    ),
    st.booleans().map(lambda v: {"fact": "ciio", "is": v}),
    st.integers(0, 2_000_000).map(lambda v: {"fact": "year_subjects_after", "at_least": v}),
    st.integers(0, 2_000_000).map(lambda v: {"fact": "subjects", "below": v}),
    st.lists(st.sampled_from(CATEGORIES), min_size=1, unique=True).map(
        lambda v: {"fact": "categories", "intersects": v}
    ),
    st.sampled_from(CATEGORIES).map(lambda v: {"fact": "categories", "contains": v}),
    st.sampled_from(ARTICLES).map(lambda v: {"fact": "exemptions_claimed", "contains": v}),
    st.sampled_from(("CN", "EU")).map(lambda v: {"fact": "sender_jurisdiction", "within": [v]}),
)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda v: {"all": v}),
        st.lists(inner, min_size=1, max_size=3).map(lambda v: {"any": v}),
        inner.map(lambda v: {"not": v}),
    ),
    max_leaves=6,
)
wanted = st.one_of(
    st.sampled_from(("cac-assessment", "pi-standard-contract")),
    st.just({"kind": "gdpr-scc", "with": ["module", "tia"]}),
)


@st.composite
def tables(draw: st.DrawFn) -> Doc:
    count = draw(st.integers(1, 6))
    outcomes = st.sampled_from(("allow", "refuse", "flag", "require", "exempt"))
    kinds = [draw(outcomes) for _ in range(count)]
    requires = [f"r{i}" for i, k in enumerate(kinds) if k == "require"]
    rules = []
    for i, kind in enumerate(kinds):
        rule: Doc = {"id": f"r{i}", "article": f"Art. {i}"}
        if kind == "require":
            rule["outcome"] = {"require": draw(st.lists(wanted, min_size=1, max_size=2))}
        elif kind == "exempt" and requires:
            ids = draw(st.lists(st.sampled_from(requires), min_size=1, unique=True))
            rule["outcome"] = {"exempt": ids}
        else:
            rule["outcome"] = "flag" if kind == "exempt" else kind
        if draw(st.booleans()):
            rule["when"] = draw(conditions)
        if draw(st.booleans()):
            rule["scope"] = {"from": ["CN"]}
        rules.append(rule)
    header = {"table": "xbgw-rules", "version": 1, "name": "random", "description": "random"}
    return {**header, "rules": rules}


evidence = st.builds(
    Evidence,
    kind=st.sampled_from(KINDS),
    reference=st.just("ref"),
    expires=st.sampled_from((None, NOW - 1, NOW, NOW + 1)),
    article=st.sampled_from((None, *ARTICLES)),
    module=st.sampled_from((None, "2")),
    tia=st.sampled_from((None, "TIA-1")),
)


@st.composite
def transfers(draw: st.DrawFn) -> TransferFacts:
    src, dst = draw(st.sampled_from(JURISDICTIONS)), draw(st.sampled_from(JURISDICTIONS))
    return TransferFacts(
        direction=draw(st.sampled_from(tuple(Direction))),
        now=NOW,
        sender="a",
        receiver="b",
        sender_jurisdiction=src,
        receiver_jurisdiction=dst,
        passport_src=src,
        passport_dst=dst,
        zone=None,
        exporter="acme",
        ciio=draw(st.booleans()),
        cn_class=draw(st.sampled_from(CN_CLASSES)),
        cn_pi=draw(st.sampled_from(CN_PI)),
        eu_class="personal",
        subjects=draw(st.integers(0, 1_500_000)),
        categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), unique=True))),
        purpose="p",
        evidence=tuple(draw(st.lists(evidence, max_size=4))),
        byte_limit=1,
        year_subjects=draw(st.integers(0, 1_500_000)),
        year_sensitive=draw(st.integers(0, 20_000)),
    )


# --- the properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(tables(), transfers())
def test_never_allows_when_an_applicable_rule_refuses_or_a_requirement_is_missing(
    doc: Doc, facts: TransferFacts
) -> None:
    decision = rules_from_documents([("random.yaml", doc)]).decide(facts)
    assert decision.allow == expected_allow(doc, facts), decision.explain(everything=True)


@settings(max_examples=200, deadline=None)
@given(tables(), transfers())
def test_the_trail_explains_the_decision(doc: Doc, facts: TransferFacts) -> None:
    """Allowed exactly when no entry refused or misses evidence; one reason per such entry."""
    decision = rules_from_documents([("random.yaml", doc)]).decide(facts)
    bad = [e for e in decision.trail if e.outcome in (Outcome.REFUSED, Outcome.REQUIRED_MISSING)]
    assert decision.allow is (not bad)
    assert [r.split(":")[0] for r in decision.reasons] == [e.rule for e in bad]
    assert [e.rule for e in decision.trail] == [r["id"] for r in doc["rules"]]

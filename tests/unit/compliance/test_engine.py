"""The engine on its own: facts, leaf tests, combinators, rules built in code, RuleSet checks."""

from __future__ import annotations

import dataclasses

import pytest

from bench.compliance import evaluation_microseconds, sample_facts
from gateway.compliance import (
    FACTS,
    AllOf,
    AnyOf,
    Exempt,
    LeafError,
    Not,
    Outcome,
    Plain,
    Require,
    Rule,
    RuleSet,
    TransferFacts,
    Wanted,
    leaf,
)
from gateway.compliance.facts import Kind
from tests.unit.compliance.support import ALL, BASE, NOW, exemption, pi, proof, transfer


def test_every_field_of_transfer_facts_is_a_fact_but_evidence() -> None:
    """Evidence is structured: rules reach it through requirements and derived facts."""
    fields = {f.name for f in dataclasses.fields(TransferFacts)}
    assert fields - set(FACTS) == {"evidence"}
    assert all(FACTS[name].derived == "" for name in fields - {"evidence"})


def test_derived_facts() -> None:
    facts = pi(
        300,
        before=1000,
        year_sensitive=7,
        evidence=(
            exemption("Provisions Art. 5(1)"),
            dataclasses.replace(exemption("Provisions Art. 5(2)"), expires=NOW),
            proof("gdpr-bcr", expires=NOW + 1),
        ),
    )
    got = {name: fact.get(facts) for name, fact in FACTS.items() if fact.derived}
    assert got == {
        "year_subjects_after": 1300,
        "year_sensitive_after": 7,
        "sender_country": "CN",
        "receiver_country": "EU",
        "evidence_kinds": ("exemption", "gdpr-bcr"),
        "exemptions_claimed": ("Provisions Art. 5(1)",),
    }
    sensitive = pi(300, sensitive=True, before=7, year_subjects=1000)
    assert FACTS["year_subjects_after"].get(sensitive) == 1000
    assert FACTS["year_sensitive_after"].get(sensitive) == 307


@pytest.mark.parametrize(
    ("fact", "op", "operand", "true_for", "false_for"),
    [
        ("cn_class", "is", "core", {"cn_class": "core"}, {"cn_class": "important"}),
        ("ciio", "is", True, {"ciio": True}, {"ciio": False}),
        ("subjects", "is", 5, {"subjects": 5}, {"subjects": 6}),
        ("cn_pi", "in", ["personal", "sensitive"], {"cn_pi": "sensitive"}, {"cn_pi": "none"}),
        ("exporter", "prefix", "ac", {"exporter": "acme"}, {"exporter": "bac"}),
        ("zone", "prefix", "lin", {"zone": "lingang"}, {"zone": None}),
        ("zone", "is", "lingang", {"zone": "lingang"}, {"zone": None}),
        ("sender_jurisdiction", "within", ["CN"], {}, {"sender_jurisdiction": "EU-CN"}),
        (
            "sender_jurisdiction",
            "within",
            ["CN"],
            {"sender_jurisdiction": "CN"},
            {"sender_jurisdiction": "CNX"},
        ),
        ("receiver_jurisdiction", "within", ["CN-SH"], {"receiver_jurisdiction": "CN-SH"}, {}),
        ("year_subjects", "at_least", 10, {"year_subjects": 10}, {"year_subjects": 9}),
        ("year_subjects", "below", 10, {"year_subjects": 9}, {"year_subjects": 10}),
        ("categories", "contains", "a", {"categories": ("b", "a")}, {"categories": ("b",)}),
        ("categories", "intersects", ["a", "c"], {"categories": ("c",)}, {"categories": ()}),
        ("passport_src", "same_as", "sender_jurisdiction", {}, {"passport_src": "US"}),
    ],
)
def test_leaf_tests(
    fact: str, op: str, operand: object, true_for: dict[str, object], false_for: dict[str, object]
) -> None:
    test = leaf(fact, op, operand)
    assert test.holds(transfer(**true_for))
    assert not test.holds(transfer(**false_for))


def test_in_list_tests_against_a_named_list() -> None:
    test = leaf("receiver_country", "in_list", "adequate", {"adequate": ["JP", "EU"]})
    assert test.holds(BASE)
    assert not test.holds(transfer(receiver_jurisdiction="US"))


@pytest.mark.parametrize(
    ("fact", "op", "operand", "key", "message"),
    [
        ("cn_clas", "is", "core", "fact", "unknown fact 'cn_clas' (known: direction, now,"),
        ("cn_class", "iss", "core", "iss", "unknown test 'iss' (known: is, in, in_list,"),
        ("ciio", "at_least", 1, "at_least", "at_least does not apply to ciio, a flag fact"),
        ("subjects", "is", True, "is", "subjects takes an integer, got true (a boolean)"),
        ("ciio", "is", "yes", "is", "ciio takes true or false, got 'yes'"),
        ("cn_pi", "in", "personal", "in", "expected a non-empty list, got 'personal'"),
        ("direction", "is", "out", "is", "'out' is not a value of direction (known: egress,"),
        ("zone", "in_list", "x", "in_list", "unknown list 'x' (known: none)"),
        ("ciio", "same_as", "ciio", "same_as", "expected another flag fact, got 'ciio'"),
    ],
)
def test_leaf_errors_name_the_key_at_fault(
    fact: str, op: str, operand: object, key: str, message: str
) -> None:
    with pytest.raises(LeafError) as caught:
        leaf(fact, op, operand)
    assert caught.value.key == key
    assert str(caught.value).startswith(message)


def test_combinators() -> None:
    core, ciio = leaf("cn_class", "is", "core"), leaf("ciio", "is", True)
    facts = transfer(cn_class="core")
    assert AllOf(()).holds(facts)
    assert not AnyOf(()).holds(facts)
    assert AnyOf((core, ciio)).holds(facts)
    assert not AllOf((core, ciio)).holds(facts)
    assert Not(ciio).holds(facts)
    assert AllOf((core, Not(AnyOf((ciio, core))))).facts == ("cn_class", "ciio")


def test_rules_built_in_code_decide_like_tables() -> None:
    """The engine needs no YAML: sigstore-style policies composed in code."""
    rules = RuleSet(
        [
            Rule("no-core", "art. 1", leaf("cn_class", "is", "core"), Plain.REFUSE),
            Rule("big", "art. 2", leaf("subjects", "at_least", 10), Require((Wanted("gdpr-bcr"),))),
            Rule("claim", "art. 3", leaf("exemptions_claimed", "contains", "X"), Exempt(("big",))),
        ]
    )
    assert rules.decide(BASE).allow
    assert rules.decide(transfer(subjects=10)).reasons == ("big: art. 2: needs gdpr-bcr",)
    assert rules.decide(transfer(subjects=10, evidence=(exemption("X"),))).allow
    refused = rules.decide(transfer(cn_class="core", evidence=(exemption("X"),)))
    assert refused.reasons == ("no-core: art. 1: refused",)


def test_a_waived_requirement_stays_waived_when_also_met() -> None:
    rules = RuleSet(
        [
            Rule("need", "a", AllOf(()), Require((Wanted("gdpr-bcr"),))),
            Rule("waive", "b", AllOf(()), Exempt(("need",))),
        ]
    )
    decision = rules.decide(transfer(evidence=(proof("gdpr-bcr"),)))
    assert [e.outcome for e in decision.trail] == [Outcome.WAIVED, Outcome.EXEMPTING]
    assert decision.trail[0].detail == "waived by waive (b)"


def test_rule_set_refuses_duplicates_and_waivers_of_refusals() -> None:
    refuse = Rule("r", "a", AllOf(()), Plain.REFUSE)
    with pytest.raises(ValueError, match="duplicate rule ids"):
        RuleSet([refuse, refuse])
    with pytest.raises(ValueError, match="exempts 'r', which is not a requirement"):
        RuleSet([refuse, Rule("w", "b", AllOf(()), Exempt(("r",)))])


def test_a_rules_message_may_name_only_facts() -> None:
    with pytest.raises(LeafError, match=r"unknown fact \{who\} in the template"):
        Rule("r", "a", AllOf(()), Plain.REFUSE, message="{who}")
    with pytest.raises(LeafError, match="not a template"):
        Rule("r", "a", AllOf(()), Plain.REFUSE, message="a { b")
    rule = Rule("r", "a", AllOf(()), Plain.FLAG, message="{categories} {ciio} {zone} {{x}}")
    assert rule.render(transfer(categories=("a", "b"))) == "[a, b] false none {x}"


def test_an_empty_rule_set_allows() -> None:
    assert RuleSet([]).decide(BASE).allow


def test_fact_kinds_are_what_tables_are_checked_against() -> None:
    assert {name for name, f in FACTS.items() if f.kind is Kind.CHOICE} == {
        "direction",
        "cn_class",
        "cn_pi",
        "eu_class",
    }
    assert FACTS["cn_class"].choices == ("core", "important", "general")


def test_evaluation_microseconds_measures_without_asserting_a_time() -> None:
    """The benchmark hook runs (``make bench`` prints the figure)."""
    assert ALL.decide(sample_facts()).allow
    assert evaluation_microseconds(ALL, 10) > 0

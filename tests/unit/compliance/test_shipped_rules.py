"""Every shipped rule, both ways: the transfer it allows and the transfer it refuses.

Each test names the rule and cites its article. ``test_every_shipped_rule_is_tested`` keeps
it so: a rule added to a shipped table without tests here fails the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.compliance import load_tables, shipped_tables
from tests.unit.compliance.support import (
    ALL,
    BASE,
    FROM_EU,
    NOW,
    assessment,
    decide,
    exemption,
    outcome,
    pi,
    proof,
    transfer,
)

CONTRACT = proof("pi-standard-contract", "SC-2026-0001")
CERTIFICATE = proof("pi-certification", "CERT-2026-0001")
SCC = proof("gdpr-scc", "SCC-2026-0001", module="2", tia="TIA-2026-0001")


def test_every_shipped_rule_is_tested() -> None:
    """Each rule id of each shipped table is named in two tests of this module."""
    shipped = {rule.id for rule in load_tables(shipped_tables()).rules}
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    named: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            strings = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
            for rule in shipped & strings:
                named[rule] = named.get(rule, 0) + 1
    assert {rule for rule in shipped if named.get(rule, 0) < 2} == set()


# --- baseline ---------------------------------------------------------------------------------


def test_baseline_passport_src_allows_the_sending_gateways_jurisdiction() -> None:
    """baseline: the passport's source is the sender's jurisdiction."""
    decision = decide(BASE)
    assert decision.allow
    assert outcome(decision, "baseline-passport-src") == "not-applicable"


def test_baseline_passport_src_refuses_another_source() -> None:
    decision = decide(transfer(passport_src="US-CA"))
    assert not decision.allow
    assert outcome(decision, "baseline-passport-src") == "refused"
    assert decision.reasons == (
        "baseline-passport-src: xbgw baseline: passport jurisdictions: passport source "
        "jurisdiction US-CA is not the sending gateway's CN-SH",
    )


def test_baseline_passport_dst_allows_the_receiving_gateways_jurisdiction() -> None:
    decision = decide(FROM_EU)
    assert outcome(decision, "baseline-passport-dst") == "not-applicable"


def test_baseline_passport_dst_refuses_another_destination() -> None:
    decision = decide(transfer(passport_dst="SG"))
    assert not decision.allow
    assert outcome(decision, "baseline-passport-dst") == "refused"
    assert (
        "passport destination jurisdiction SG is not the receiving gateway's EU-DE"
        in (decision.reasons[0])
    )


# --- PRC export -------------------------------------------------------------------------------


def test_cn_core_data_dsl_art_21_is_refused_with_any_evidence() -> None:
    """DSL Art. 21: core data is not exported, whatever evidence or exemption is given."""
    facts = transfer(cn_class="core", evidence=(assessment(), exemption("Provisions Art. 5(1)")))
    decision = decide(facts)
    assert not decision.allow
    assert outcome(decision, "cn-core-data") == "refused"
    assert "cn-core-data: DSL Art. 21 (state core data): core data is not exported" in (
        decision.reasons
    )


def test_cn_core_data_dsl_art_21_does_not_apply_inside_the_mainland() -> None:
    """DSL Art. 21 / prc-export scope: CN-SH to CN-BJ is not an export."""
    domestic = transfer(cn_class="core", receiver_jurisdiction="CN-BJ", passport_dst="CN-BJ")
    decision = decide(domestic)
    assert decision.allow
    assert outcome(decision, "cn-core-data") == "not-applicable"


def test_cn_important_data_provisions_art_7_allowed_with_a_valid_assessment() -> None:
    """CAC 2024 Provisions Art. 7(1), 7(2): important data with a valid CAC assessment."""
    decision = decide(transfer(cn_class="important", evidence=(assessment(),)))
    assert decision.allow
    assert outcome(decision, "cn-important-data") == "required-met"


def test_cn_important_data_provisions_art_7_refused_without_assessment() -> None:
    decision = decide(transfer(cn_class="important", evidence=(CONTRACT,)))
    assert not decision.allow
    assert decision.reasons == (
        "cn-important-data: CAC 2024 Provisions Art. 7(1), 7(2); DSL Art. 31: important data "
        "needs a CAC security assessment (valid 3 years): needs cac-assessment",
    )


def test_cn_ciio_pi_provisions_art_7_1_allowed_with_assessment() -> None:
    """CAC 2024 Provisions Art. 7(1); PIPL Art. 40: a CIIO exporting any PI, assessed."""
    decision = decide(pi(1, ciio=True, evidence=(assessment(),)))
    assert decision.allow
    assert outcome(decision, "cn-ciio-pi") == "required-met"


def test_cn_ciio_pi_provisions_art_7_1_refused_even_for_one_subject() -> None:
    """Art. 7(1): no threshold for a CIIO -- and no Art. 5(4) exemption below 100,000."""
    decision = decide(pi(1, ciio=True, evidence=(CONTRACT,)))
    assert not decision.allow
    assert outcome(decision, "cn-ciio-pi") == "required-missing"
    assert outcome(decision, "cn-pi-below-100k") == "not-applicable"
    assert (
        "exporter acme is a CIIO exporting personal information (1 subjects)"
        in (decision.reasons[0])
    )


def test_cn_pi_below_100k_provisions_art_5_4_allowed_without_procedure() -> None:
    """CAC 2024 Provisions Art. 5(4): a non-CIIO below 100,000 subjects this year."""
    decision = decide(pi(1000, before=50_000))
    assert decision.allow
    assert outcome(decision, "cn-pi-below-100k") == "allowed"


def test_cn_pi_below_100k_provisions_art_5_4_not_for_sensitive_pi() -> None:
    """Art. 5(4) excludes sensitive PI: one sensitive subject needs a contract (Art. 8)."""
    decision = decide(pi(1, sensitive=True))
    assert not decision.allow
    assert outcome(decision, "cn-pi-below-100k") == "not-applicable"


def test_cn_pi_100k_provisions_art_8_allowed_with_contract_or_certification() -> None:
    """CAC 2024 Provisions Art. 8: 100,000 to < 1,000,000 subjects: contract or certificate."""
    for evidence in (CONTRACT, CERTIFICATE):
        decision = decide(pi(10_000, before=200_000, evidence=(evidence,)))
        assert decision.allow
        assert outcome(decision, "cn-pi-100k") == "required-met"


def test_cn_pi_100k_provisions_art_8_refused_without() -> None:
    decision = decide(pi(10_000, before=200_000))
    assert not decision.allow
    assert decision.reasons == (
        "cn-pi-100k: CAC 2024 Provisions Art. 8; PIPL Art. 38: exporter acme has sent personal "
        "information of 200000 subjects this year; with 10000 more it reaches 210000, at or "
        "above the threshold of 100000: needs pi-standard-contract or pi-certification",
    )


def test_cn_pi_1m_provisions_art_7_2_allowed_with_assessment() -> None:
    """CAC 2024 Provisions Art. 7(2): >= 1,000,000 subjects this year needs an assessment."""
    decision = decide(pi(100_000, before=950_000, evidence=(assessment(),)))
    assert decision.allow
    assert outcome(decision, "cn-pi-1m") == "required-met"


def test_cn_pi_1m_provisions_art_7_2_refused_with_threshold_and_count() -> None:
    """The message names the rule, the article, the count, the threshold and the evidence."""
    decision = decide(pi(100_000, before=950_000, evidence=(CONTRACT,)))
    assert not decision.allow
    assert decision.reasons == (
        "cn-pi-1m: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: exporter acme has sent personal "
        "information of 950000 subjects this year; with 100000 more it reaches 1050000, at or "
        "above the threshold of 1000000: needs cac-assessment",
    )


def test_cn_spi_below_10k_provisions_art_8_allowed_with_contract() -> None:
    """CAC 2024 Provisions Art. 8: sensitive PI of < 10,000 subjects: contract or certificate."""
    decision = decide(pi(100, sensitive=True, before=500, evidence=(CERTIFICATE,)))
    assert decision.allow
    assert outcome(decision, "cn-spi-below-10k") == "required-met"


def test_cn_spi_below_10k_provisions_art_8_refused_without() -> None:
    decision = decide(pi(100, sensitive=True, before=500))
    assert not decision.allow
    assert outcome(decision, "cn-spi-below-10k") == "required-missing"
    assert "reaches 600, below the assessment threshold of 10000" in decision.reasons[0]
    assert decision.reasons[0].startswith("cn-spi-below-10k: CAC 2024 Provisions Art. 8")


def test_cn_spi_10k_provisions_art_7_2_allowed_with_assessment() -> None:
    """CAC 2024 Provisions Art. 7(2): sensitive PI of >= 10,000 subjects needs an assessment."""
    decision = decide(pi(5_000, sensitive=True, before=5_000, evidence=(assessment(),)))
    assert decision.allow
    assert outcome(decision, "cn-spi-10k") == "required-met"


def test_cn_spi_10k_provisions_art_7_2_refused_with_a_contract_only() -> None:
    decision = decide(pi(5_000, sensitive=True, before=5_000, evidence=(CONTRACT,)))
    assert not decision.allow
    assert outcome(decision, "cn-spi-10k") == "required-missing"
    assert "at or above the threshold of 10000: needs cac-assessment" in decision.reasons[0]


def test_cn_exempt_art3_provisions_art_3_claimed_for_trade_data() -> None:
    """CAC 2024 Provisions Art. 3: trade data without PI or important data, claimed."""
    decision = decide(transfer(evidence=(exemption("CAC 2024 Provisions Art. 3"),)))
    assert decision.allow
    assert outcome(decision, "cn-exempt-art3") == "exempting"


def test_cn_exempt_art3_provisions_art_3_does_not_cover_personal_information() -> None:
    """Art. 3 requires data without PI: claimed for 200,000 subjects, the contract is due."""
    facts = pi(200_000, evidence=(exemption("CAC 2024 Provisions Art. 3"),))
    decision = decide(facts)
    assert not decision.allow
    assert outcome(decision, "cn-exempt-art3") == "not-applicable"
    assert outcome(decision, "cn-pi-100k") == "required-missing"


def test_cn_exempt_art5_1_provisions_art_5_1_contract_necessity_waives_the_contract() -> None:
    """CAC 2024 Provisions Art. 5(1): necessary for a contract with the individual."""
    decision = decide(pi(200_000, evidence=(exemption("Provisions Art. 5(1)"),)))
    assert decision.allow
    assert outcome(decision, "cn-exempt-art5-1") == "exempting"
    assert outcome(decision, "cn-pi-100k") == "waived"


def test_cn_exempt_art5_1_provisions_art_5_1_does_not_waive_important_data() -> None:
    """Art. 5 is about personal information: important data still needs its assessment."""
    facts = pi(200_000, cn_class="important", evidence=(exemption("Provisions Art. 5(1)"),))
    decision = decide(facts)
    assert not decision.allow
    assert outcome(decision, "cn-important-data") == "required-missing"
    assert outcome(decision, "cn-exempt-art5-1") == "exempting"


def test_cn_exempt_art5_2_provisions_art_5_2_hr_management_waives_the_assessment() -> None:
    """CAC 2024 Provisions Art. 5(2): cross-border HR management, even past 1,000,000."""
    decision = decide(pi(2_000_000, evidence=(exemption("CAC 2024 Provisions Art. 5(2)"),)))
    assert decision.allow
    assert outcome(decision, "cn-pi-1m") == "waived"
    assert outcome(decision, "cn-exempt-art5-2") == "exempting"


def test_cn_exempt_art5_2_provisions_art_5_2_expired_claim_waives_nothing() -> None:
    """An exemption evidence past its expiry is no claim."""
    claim = exemption("CAC 2024 Provisions Art. 5(2)")
    expired = claim.__class__(claim.kind, claim.reference, expires=NOW, article=claim.article)
    decision = decide(pi(2_000_000, evidence=(expired,)))
    assert not decision.allow
    assert outcome(decision, "cn-exempt-art5-2") == "not-applicable"


def test_cn_exempt_art5_3_provisions_art_5_3_emergency_waives_sensitive_pi() -> None:
    """CAC 2024 Provisions Art. 5(3): an emergency protecting life, health or property."""
    facts = pi(20_000, sensitive=True, evidence=(exemption("Provisions Art. 5(3)"),))
    decision = decide(facts)
    assert decision.allow
    assert outcome(decision, "cn-spi-10k") == "waived"
    assert outcome(decision, "cn-exempt-art5-3") == "exempting"


def test_cn_exempt_art5_3_provisions_art_5_3_another_article_is_no_claim() -> None:
    """A claim of Art. 5(4) -- a threshold, not a claim -- exempts nothing."""
    decision = decide(pi(20_000, sensitive=True, evidence=(exemption("Provisions Art. 5(4)"),)))
    assert not decision.allow
    assert outcome(decision, "cn-exempt-art5-3") == "not-applicable"


def test_prc_rules_never_waive_core_data() -> None:
    """Refusals cannot be waived: every exemption claimed, core data still refused."""
    claims = tuple(exemption(f"Provisions Art. {a}") for a in ("3", "5(1)", "5(2)", "5(3)"))
    decision = decide(transfer(cn_class="core", evidence=claims))
    assert not decision.allow
    assert outcome(decision, "cn-core-data") == "refused"


# --- GDPR Chapter V ---------------------------------------------------------------------------


def test_eu_adequate_gdpr_art_45_allows_personal_data_to_japan() -> None:
    """GDPR Art. 45(1): Japan has an adequacy decision."""
    facts = transfer(FROM_EU, receiver_jurisdiction="JP", passport_dst="JP", cn_pi="personal")
    decision = decide(facts)
    assert decision.allow
    assert outcome(decision, "eu-adequate") == "allowed"
    assert outcome(decision, "eu-third-country") == "not-applicable"


def test_eu_adequate_gdpr_art_45_does_not_cover_the_united_states() -> None:
    """GDPR Art. 45: the US decision covers DPF participants only; xbgw does not assume it."""
    facts = transfer(FROM_EU, receiver_jurisdiction="US", passport_dst="US", cn_pi="personal")
    decision = decide(facts)
    assert not decision.allow
    assert outcome(decision, "eu-adequate") == "not-applicable"


def test_eu_third_country_gdpr_art_46_allowed_with_scc_module_and_tia() -> None:
    """GDPR Art. 46(2)(c): SCCs (Decision 2021/914) with module and TIA reference."""
    decision = decide(transfer(FROM_EU, cn_pi="personal", subjects=10, evidence=(SCC,)))
    assert decision.allow
    assert outcome(decision, "eu-third-country") == "required-met"


def test_eu_third_country_gdpr_art_46_refused_with_scc_lacking_tia() -> None:
    scc = proof("gdpr-scc", "SCC-2026-0002", module="2")
    decision = decide(transfer(FROM_EU, cn_pi="personal", subjects=10, evidence=(scc,)))
    assert not decision.allow
    assert decision.reasons == (
        "eu-third-country: GDPR Art. 44, 46(2)(c), 47, 49(1): personal data to CN-SH, which has "
        "no adequacy decision (Art. 45): needs gdpr-scc (with module, tia) or gdpr-bcr or "
        "gdpr-derogation (with article); gdpr-scc SCC-2026-0002 lacks tia",
    )


def test_eu_third_country_gdpr_art_47_and_49_bcr_or_named_derogation() -> None:
    """GDPR Art. 47 (BCRs) or Art. 49 (a derogation, named) each suffice."""
    for evidence in (proof("gdpr-bcr"), proof("gdpr-derogation", article="Art. 49(1)(b)")):
        decision = decide(transfer(FROM_EU, cn_pi="personal", evidence=(evidence,)))
        assert decision.allow
        assert outcome(decision, "eu-third-country") == "required-met"


def test_eu_third_country_gdpr_art_49_derogation_must_be_named() -> None:
    decision = decide(transfer(FROM_EU, cn_pi="personal", evidence=(proof("gdpr-derogation"),)))
    assert not decision.allow
    assert outcome(decision, "eu-third-country") == "required-missing"


def test_eu_special_categories_gdpr_art_9_flagged_in_the_decision() -> None:
    """GDPR Art. 9(1): special categories are flagged; the flag does not refuse."""
    decision = decide(transfer(FROM_EU, cn_pi="sensitive", evidence=(SCC,)))
    assert decision.allow
    assert outcome(decision, "eu-special-categories") == "flagged"
    assert decision.flags[0].startswith("eu-special-categories: GDPR Art. 9(1): special categ")


def test_eu_special_categories_gdpr_art_9_not_flagged_for_ordinary_personal_data() -> None:
    decision = decide(transfer(FROM_EU, cn_pi="personal", evidence=(SCC,)))
    assert outcome(decision, "eu-special-categories") == "not-applicable"
    assert decision.flags == ()


def test_gdpr_rules_do_not_apply_inside_the_eea() -> None:
    """GDPR Art. 44: Chapter V is about third countries; EU-DE to EU-FR or NO is not one."""
    for dst in ("EU-FR", "NO"):
        facts = transfer(FROM_EU, receiver_jurisdiction=dst, passport_dst=dst, cn_pi="sensitive")
        decision = decide(facts)
        assert decision.allow
        assert outcome(decision, "eu-third-country") == "not-applicable"


# --- FTZ list (EXAMPLE) -----------------------------------------------------------------------


def test_ftz_listed_category_provisions_art_6_allowed_with_its_procedure() -> None:
    """CAC 2024 Provisions Art. 6: a listed category needs the list's procedure."""
    facts = transfer(zone="example", categories=("example-road-test-data",))
    decision = decide(transfer(facts, evidence=(assessment(),)))
    assert decision.allow
    assert outcome(decision, "ftz-example-example-road-test-data") == "required-met"


def test_ftz_listed_category_provisions_art_6_refused_without() -> None:
    facts = transfer(zone="example", categories=("example-road-test-data", "invoices"))
    decision = decide(facts)
    assert not decision.allow
    assert outcome(decision, "ftz-example-example-road-test-data") == "required-missing"
    assert decision.reasons == (
        "ftz-example-example-road-test-data: CAC 2024 Provisions Art. 6 (EXAMPLE list, not "
        "official): data category example-road-test-data is on the list of zone example: "
        "needs cac-assessment",
    )
    assert outcome(decision, "ftz-example-unlisted") == "not-applicable"


def test_ftz_second_category_provisions_art_6_refused_without_its_procedure() -> None:
    """CAC 2024 Provisions Art. 6: an assessment is not what the list asks for this one."""
    facts = transfer(zone="example", categories=("example-clinical-research",))
    decision = decide(transfer(facts, evidence=(assessment(),)))
    assert not decision.allow
    assert outcome(decision, "ftz-example-example-clinical-research") == "required-missing"


def test_ftz_second_category_provisions_art_6_accepts_any_listed_procedure() -> None:
    facts = transfer(zone="example", categories=("example-clinical-research",))
    for evidence in (CONTRACT, CERTIFICATE, proof("ftz-procedure")):
        decision = decide(transfer(facts, evidence=(evidence,)))
        assert decision.allow
        assert outcome(decision, "ftz-example-example-clinical-research") == "required-met"


def test_ftz_unlisted_provisions_art_6_exempts_data_off_the_list() -> None:
    """CAC 2024 Provisions Art. 6: from the zone, not on its list: no contract needed."""
    decision = decide(pi(200_000, zone="example", categories=("invoices",)))
    assert decision.allow
    assert outcome(decision, "ftz-example-unlisted") == "exempting"
    assert outcome(decision, "cn-pi-100k") == "waived"


def test_ftz_unlisted_provisions_art_6_only_from_the_zone() -> None:
    """Outside the zone the national rules apply: the same data needs its contract."""
    decision = decide(pi(200_000, zone=None, categories=("invoices",)))
    assert not decision.allow
    assert outcome(decision, "ftz-example-unlisted") == "not-applicable"


def test_ftz_unlisted_provisions_art_6_never_waives_core_data() -> None:
    decision = decide(transfer(cn_class="core", zone="example"))
    assert not decision.allow
    assert outcome(decision, "ftz-example-unlisted") == "exempting"
    assert outcome(decision, "cn-core-data") == "refused"


def test_all_shipped_tables_load_in_any_order() -> None:
    """Exemptions may name rules of a table loaded after them."""
    names = ["ftz-example", "gdpr-chapter-v", "prc-export", "baseline"]
    assert {r.id for r in load_tables(names).rules} == {r.id for r in ALL.rules}

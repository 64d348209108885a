"""The compliance facts in a passport (issue #10, part 2): every claim accepted at its edges,
every way to get one wrong refused with its exact message, older passports read with the
documented defaults, and the passport's share of the facts a compliance decision reads.

The ``--claims`` file and ``--evidence`` parsing of ``xbgw passport issue`` are tested here
in process; the real program against a SoftHSM issuer is in
``tests/system/test_cli_passport_claims.py``.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser, main
from gateway.cli.passport import load_claims_file, parse_evidence, parse_time
from gateway.compliance import facts as fact_model
from gateway.errors import PassportClaimsError, UsageError
from gateway.keys import KeyRef, Purpose
from gateway.passport import PassportVerifier, issue
from gateway.passport_claims import (
    CN_CLASSES,
    EU_CLASS_OF_PI,
    EU_CLASSES,
    EVIDENCE_KINDS,
    MAX_TIME,
    PI_CATEGORIES,
    ComplianceTerms,
    EvidenceClaim,
    PassportClaims,
    XbgwClaims,
    compliance_terms,
)
from tests.fakes import SoftwareHsm

ISSUER = "dpo"
KID = KeyRef(ISSUER, Purpose.SIGNING, 1)
NOW = 1_780_000_000
EXPIRES_2029_01_31 = 1_864_512_000  # 2029-01-31T00:00:00Z
DELETE = object()

OLD_XBGW: dict[str, Any] = {
    "sender": "lingang",
    "src": "CN-SH",
    "dst": "EU-DE",
    "classification": "important",
    "pi": "personal",
    "subjects": 120_000,
    "purpose": "Quarterly supplier quality report",
    "legal_basis": "CAC-SC-2026-0042",
    "byte_limit": 10 * 2**20,
}
FULL_XBGW: dict[str, Any] = {
    **OLD_XBGW,
    "exporter": "上海临港精密制造有限公司",
    "ciio": True,
    "eu_class": "personal",
    "categories": ["supplier-quality", "hr.payroll"],
    "zone": "lingang",
    "evidence": [
        {"kind": "cac-assessment", "reference": "CAC-2026-0042", "expires": EXPIRES_2029_01_31},
        {"kind": "gdpr-scc", "reference": "SCC-2026-7", "module": "2", "tia": "TIA-2026-7"},
        {"kind": "exemption", "reference": "HR-2026-1", "article": "Provisions Art. 5(2)"},
    ],
}


def claims_json(xbgw: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "jti": "dpo_tx-0001",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3600,
        "aud": "frankfurt",
        "xbgw": copy.deepcopy(xbgw),
    }


_STEP = re.compile(r"\.?([a-z_]+)|\[(\d+)\]")


def mutated(path: str, value: object, base: dict[str, Any] = FULL_XBGW) -> dict[str, Any]:
    """``base`` with the member at ``path`` (e.g. ``evidence[1].expires``) set or deleted."""
    obj = copy.deepcopy(base)
    steps: list[str | int] = [
        name or int(index) for name, index in _STEP.findall(path) if name or index
    ]
    target: Any = obj
    for step in steps[:-1]:
        target = target[step]
    if value is DELETE:
        del target[steps[-1]]
    else:
        target[steps[-1]] = value
    return obj


@pytest.fixture(scope="module")
def signer() -> SoftwareHsm:
    return SoftwareHsm()


def verifier(signer: SoftwareHsm) -> PassportVerifier:
    trusted = {str(KID): signer.public_key(Purpose.SIGNING, 1)}
    return PassportVerifier(trusted, "frankfurt", clock=lambda: NOW)


# --- accepted -------------------------------------------------------------------------------


def test_every_compliance_claim_round_trips_through_a_signed_passport(
    signer: SoftwareHsm,
) -> None:
    claims = PassportClaims.from_json(claims_json(FULL_XBGW))
    assert claims.to_json()["xbgw"] == FULL_XBGW
    terms = claims.xbgw
    assert terms.exporter == "上海临港精密制造有限公司"
    assert terms.ciio is True
    assert (terms.cn_class, terms.cn_pi, terms.eu_class) == ("important", "personal", "personal")
    assert terms.categories == ("supplier-quality", "hr.payroll")
    assert terms.zone == "lingang"
    assert terms.evidence == (
        EvidenceClaim("cac-assessment", "CAC-2026-0042", expires=EXPIRES_2029_01_31),
        EvidenceClaim("gdpr-scc", "SCC-2026-7", module="2", tia="TIA-2026-7"),
        EvidenceClaim("exemption", "HR-2026-1", article="Provisions Art. 5(2)"),
    )
    verified = verifier(signer).verify(issue(claims, signer, KID))
    assert verified.claims == claims


EVIDENCE_OF_EVERY_KIND = [
    {"kind": "cac-assessment", "reference": "CAC-2026-0042", "expires": 0},
    {"kind": "pi-standard-contract", "reference": "SC-310000-2026-17"},
    {"kind": "pi-certification", "reference": "CERT 2026/0042", "expires": MAX_TIME},
    {"kind": "exemption", "reference": "x", "article": "Provisions Art. 3"},
    {"kind": "ftz-procedure", "reference": "LG-FTZ-2026-88"},
    {"kind": "gdpr-scc", "reference": "SCC-1", "module": "1"},
    {"kind": "gdpr-scc", "reference": "SCC-4", "module": "4", "tia": "t" * 128},
    {"kind": "gdpr-scc", "reference": "SCC-bare"},
    {"kind": "gdpr-bcr", "reference": "BCR-DE-2019-3"},
    {"kind": "gdpr-derogation", "reference": "r" * 128, "article": "a" * 64},
]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("exporter", "A"),
        ("exporter", "E" * 128),
        ("exporter", "Café Müller GmbH"),  # NFC
        ("exporter", "91310000MA1FL4XQ2X"),  # unified social credit code
        ("ciio", False),
        ("eu_class", DELETE),
        ("categories", []),
        ("categories", ["a"]),
        ("categories", ["0" + "c" * 63]),
        ("categories", [f"c{i}" for i in range(64)]),
        ("categories", ["hr.payroll", "hr.payroll-2", "9.x"]),
        ("zone", "a"),
        ("zone", "z" * 32),
        ("zone", "shanghai-ftz"),
        ("evidence", []),
        ("evidence", EVIDENCE_OF_EVERY_KIND),
        ("evidence", [{"kind": "gdpr-bcr", "reference": f"BCR-{i}"} for i in range(16)]),
        ("evidence[0].reference", "CAC:2026/0042 (renewed)"),  # a colon is fine in JSON
        ("evidence[2].article", "Art. 49(1)(b)"),
    ],
)
def test_compliance_claim_at_its_edges_accepted(path: str, value: object) -> None:
    claims = PassportClaims.from_json(claims_json(mutated(path, value)))
    assert PassportClaims.from_json(claims.to_json()) == claims


@pytest.mark.parametrize(("pi", "subjects"), [("none", 0), ("personal", 1), ("sensitive", 9)])
def test_eu_class_that_agrees_with_pi_accepted(pi: str, subjects: int) -> None:
    xbgw = {**OLD_XBGW, "pi": pi, "subjects": subjects, "eu_class": EU_CLASS_OF_PI[pi]}
    assert XbgwClaims.from_json(xbgw).eu_class == EU_CLASS_OF_PI[pi]


@pytest.mark.parametrize("cn_class", CN_CLASSES)
def test_every_prc_class_accepted(cn_class: str) -> None:
    assert XbgwClaims.from_json({**OLD_XBGW, "classification": cn_class}).cn_class == cn_class


def test_the_issues_example_passport_can_be_issued(signer: SoftwareHsm) -> None:
    """Core data, 5,000,000 sensitive subjects, no legal basis: refusing it is the policy's job."""
    xbgw = {
        **OLD_XBGW,
        "classification": "core",
        "pi": "sensitive",
        "subjects": 5_000_000,
        "legal_basis": "none",
    }
    claims = PassportClaims.from_json(claims_json(xbgw))
    verified = verifier(signer).verify(issue(claims, signer, KID))
    terms = compliance_terms(verified.claims.xbgw)
    assert (terms.cn_class, terms.cn_pi, terms.eu_class) == ("core", "sensitive", "special")
    assert (terms.subjects, terms.evidence, terms.exporter) == (5_000_000, (), "lingang")


# --- refused, with the exact message ----------------------------------------------------------

P = "passport claim"
KINDS = ", ".join(EVIDENCE_KINDS)
MAPPING = "none <-> non-personal, personal <-> personal, sensitive <-> special"
REFUSED = [
    # the PRC class: the old free-form values are refused, naming the three
    ("classification", "internal",
     f"{P} 'xbgw.classification' must be one of core, important, general "
     "(the PRC data class, DSL Art. 21), got 'internal'"),
    ("classification", "General",
     f"{P} 'xbgw.classification' must be one of core, important, general "
     "(the PRC data class, DSL Art. 21), got 'General'"),
    ("classification", 1, f"{P} 'xbgw.classification' must be a string, got int"),
    ("pi", "public", f"{P} 'xbgw.pi' must be one of none, personal, sensitive, got 'public'"),
    # exporter
    ("exporter", "", f"{P} 'xbgw.exporter' must be 1 to 128 characters, got 0"),
    ("exporter", "E" * 129, f"{P} 'xbgw.exporter' must be 1 to 128 characters, got 129"),
    ("exporter", "   ", f"{P} 'xbgw.exporter' must not be blank"),
    ("exporter", " Acme", f"{P} 'xbgw.exporter' must not begin or end with white space"),
    ("exporter", "Acme\u00a0", f"{P} 'xbgw.exporter' must not begin or end with white space"),
    ("exporter", "Acme\nLtd", f"{P} 'xbgw.exporter' must not contain the character U+000A"),
    ("exporter", "Acme\u200bLtd", f"{P} 'xbgw.exporter' must not contain the character U+200B"),
    ("exporter", "Cafe\u0301",
     f"{P} 'xbgw.exporter' must be in Unicode NFC form (counters are kept per exporter: "
     "one spelling)"),
    ("exporter", 7, f"{P} 'xbgw.exporter' must be a string, got int"),
    ("exporter", None, f"{P} 'xbgw.exporter' must be left out, not null"),
    # ciio
    ("ciio", 1, f"{P} 'xbgw.ciio' must be true or false, got int"),
    ("ciio", "true", f"{P} 'xbgw.ciio' must be true or false, got str"),
    ("ciio", None, f"{P} 'xbgw.ciio' must be left out, not null"),
    # eu_class
    ("eu_class", "sensitive",
     f"{P} 'xbgw.eu_class' must be one of non-personal, personal, special, got 'sensitive'"),
    ("eu_class", "special",
     f"{P} 'xbgw.eu_class' is 'special', but xbgw.pi 'personal' maps to 'personal' ({MAPPING})"),
    ("eu_class", "non-personal",
     f"{P} 'xbgw.eu_class' is 'non-personal', but xbgw.pi 'personal' maps to 'personal' "
     f"({MAPPING})"),
    ("eu_class", None, f"{P} 'xbgw.eu_class' must be left out, not null"),
    # categories
    ("categories", "hr", f"{P} 'xbgw.categories' must be a list, got str"),
    ("categories", {"hr": 1}, f"{P} 'xbgw.categories' must be a list, got dict"),
    ("categories", [f"c{i}" for i in range(65)],
     f"{P} 'xbgw.categories' must have at most 64 entries, got 65"),
    ("categories", ["hr", "HR"],
     f"{P} 'xbgw.categories[1]' must be 1-64 characters of a-z 0-9 . -, starting with a "
     "letter or digit, got 'HR'"),
    ("categories", ["hr", ""],
     f"{P} 'xbgw.categories[1]' must be 1-64 characters of a-z 0-9 . -, starting with a "
     "letter or digit, got ''"),
    ("categories", [".hr"],
     f"{P} 'xbgw.categories[0]' must be 1-64 characters of a-z 0-9 . -, starting with a "
     "letter or digit, got '.hr'"),
    ("categories", ["c" * 65],
     f"{P} 'xbgw.categories[0]' must be 1-64 characters of a-z 0-9 . -, starting with a "
     f"letter or digit, got '{'c' * 36}..."),  # values are cut to 40 characters
    ("categories", ["hr_payroll"],
     f"{P} 'xbgw.categories[0]' must be 1-64 characters of a-z 0-9 . -, starting with a "
     "letter or digit, got 'hr_payroll'"),
    ("categories", ["hr", 5], f"{P} 'xbgw.categories[1]' must be a string, got int"),
    ("categories", ["hr", "ops", "hr"],
     f"{P} 'xbgw.categories[2]' repeats xbgw.categories[0] (hr)"),
    ("categories", None, f"{P} 'xbgw.categories' must be left out, not null"),
    # zone
    ("zone", "Lingang",
     f"{P} 'xbgw.zone' must be 1-32 characters of a-z 0-9 -, starting with a letter, "
     "got 'Lingang'"),
    ("zone", "",
     f"{P} 'xbgw.zone' must be 1-32 characters of a-z 0-9 -, starting with a letter, got ''"),
    ("zone", "z" * 33,
     f"{P} 'xbgw.zone' must be 1-32 characters of a-z 0-9 -, starting with a letter, "
     f"got '{'z' * 33}'"),
    ("zone", 3, f"{P} 'xbgw.zone' must be a string, got int"),
    # evidence: the list
    ("evidence", {"kind": "gdpr-bcr"}, f"{P} 'xbgw.evidence' must be a list, got dict"),
    ("evidence", [{"kind": "gdpr-bcr", "reference": f"B{i}"} for i in range(17)],
     f"{P} 'xbgw.evidence' must have at most 16 entries, got 17"),
    ("evidence[1]", "SCC-2026-7", f"{P} 'xbgw.evidence[1]' must be a JSON object, got str"),
    ("evidence[1].colour", "red", f"{P} 'xbgw.evidence[1].colour' is not allowed (unknown member)"),
    ("evidence[1].kind", DELETE, f"{P} 'xbgw.evidence[1].kind' is missing"),
    ("evidence[1].reference", DELETE, f"{P} 'xbgw.evidence[1].reference' is missing"),
    ("evidence[2]", {"kind": "cac-assessment", "reference": "CAC-2026-0042"},
     f"{P} 'xbgw.evidence[2]' repeats xbgw.evidence[0] (cac-assessment CAC-2026-0042)"),
    # evidence: kind and reference
    ("evidence[0].kind", "cac", f"{P} 'xbgw.evidence[0].kind' must be one of {KINDS}, got 'cac'"),
    ("evidence[0].kind", None, f"{P} 'xbgw.evidence[0].kind' must be a string, got NoneType"),
    ("evidence[0].reference", "",
     f"{P} 'xbgw.evidence[0].reference' must be 1 to 128 printable ASCII characters, got 0"),
    ("evidence[0].reference", "R" * 129,
     f"{P} 'xbgw.evidence[0].reference' must be 1 to 128 printable ASCII characters, got 129"),
    ("evidence[0].reference", "CAC-2026-0042\n",
     f"{P} 'xbgw.evidence[0].reference' must be printable ASCII (U+0020 to U+007E), got the "
     "character U+000A"),
    ("evidence[0].reference", "评估-2026",
     f"{P} 'xbgw.evidence[0].reference' must be printable ASCII (U+0020 to U+007E), got the "
     "character U+8BC4"),
    ("evidence[0].reference", "  ", f"{P} 'xbgw.evidence[0].reference' must not be blank"),
    ("evidence[0].reference", 42, f"{P} 'xbgw.evidence[0].reference' must be a string, got int"),
    # evidence: expires
    ("evidence[0].expires", "2029-01-31",
     f"{P} 'xbgw.evidence[0].expires' must be an integer (Unix seconds), got str"),
    ("evidence[0].expires", True,
     f"{P} 'xbgw.evidence[0].expires' must be an integer (Unix seconds), got bool"),
    ("evidence[0].expires", 1.5e9,
     f"{P} 'xbgw.evidence[0].expires' must be an integer (Unix seconds), got float"),
    ("evidence[0].expires", -1,
     f"{P} 'xbgw.evidence[0].expires' must be from 0 to {MAX_TIME} (Unix seconds), got -1"),
    ("evidence[0].expires", MAX_TIME + 1,
     f"{P} 'xbgw.evidence[0].expires' must be from 0 to {MAX_TIME} (Unix seconds), "
     f"got {MAX_TIME + 1}"),
    ("evidence[1].expires", None, f"{P} 'xbgw.evidence[1].expires' must be left out, not null"),
    # evidence: article, module, tia by kind
    ("evidence[2].article", DELETE,
     f"{P} 'xbgw.evidence[2].article' is missing: kind exemption names the article"),
    ("evidence[2]", {"kind": "gdpr-derogation", "reference": "D-1"},
     f"{P} 'xbgw.evidence[2].article' is missing: kind gdpr-derogation names the article"),
    ("evidence[0].article", "Provisions Art. 7",
     f"{P} 'xbgw.evidence[0].article' is not allowed for kind cac-assessment "
     "(only for exemption, gdpr-derogation)"),
    ("evidence[2].article", "",
     f"{P} 'xbgw.evidence[2].article' must be 1 to 64 printable ASCII characters, got 0"),
    ("evidence[2].article", "A" * 65,
     f"{P} 'xbgw.evidence[2].article' must be 1 to 64 printable ASCII characters, got 65"),
    ("evidence[2].article", "第五条",
     f"{P} 'xbgw.evidence[2].article' must be printable ASCII (U+0020 to U+007E), got the "
     "character U+7B2C"),
    ("evidence[1].module", "5",
     f"{P} 'xbgw.evidence[1].module' must be one of 1, 2, 3, 4 "
     "(the SCC module, Decision 2021/914), got '5'"),
    ("evidence[1].module", 2, f"{P} 'xbgw.evidence[1].module' must be a string, got int"),
    ("evidence[0].module", "2",
     f"{P} 'xbgw.evidence[0].module' is not allowed for kind cac-assessment (only for gdpr-scc)"),
    ("evidence[0].tia", "TIA-1",
     f"{P} 'xbgw.evidence[0].tia' is not allowed for kind cac-assessment (only for gdpr-scc)"),
    ("evidence[1].tia", "",
     f"{P} 'xbgw.evidence[1].tia' must be 1 to 128 printable ASCII characters, got 0"),
    ("evidence[1].tia", None, f"{P} 'xbgw.evidence[1].tia' must be left out, not null"),
    # unknown members still refused
    ("cn_class", "core", f"{P} 'xbgw.cn_class' is not allowed (unknown member)"),
    ("cn_pi", "none", f"{P} 'xbgw.cn_pi' is not allowed (unknown member)"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), REFUSED)
def test_compliance_claim_refused_with_its_exact_message(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(PassportClaimsError) as caught:
        PassportClaims.from_json(claims_json(mutated(path, value)))
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [case for case in REFUSED if case[0] in ("classification", "evidence[0].expires", "eu_class")],
)
def test_a_trusted_signature_does_not_make_bad_compliance_claims_good(
    signer: SoftwareHsm, path: str, value: object, message: str
) -> None:
    """The same refusals through verify(), on tokens signed by the trusted key."""
    from tests.unit.test_passport import good_header, sign_raw

    payload = json.dumps(claims_json(mutated(path, value)), separators=(",", ":")).encode()
    token = sign_raw(signer, good_header(KID), payload, raw=True)
    with pytest.raises(PassportClaimsError) as caught:
        verifier(signer).verify(token)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("pi", "subjects", "eu_class"),
    [
        (pi, 0 if pi == "none" else 1, eu)
        for pi in PI_CATEGORIES
        for eu in EU_CLASSES
        if EU_CLASS_OF_PI[pi] != eu
    ],
)
def test_every_disagreement_between_pi_and_eu_class_refused(
    pi: str, subjects: int, eu_class: str
) -> None:
    xbgw = {**OLD_XBGW, "pi": pi, "subjects": subjects, "eu_class": eu_class}
    with pytest.raises(PassportClaimsError) as caught:
        XbgwClaims.from_json(xbgw)
    assert str(caught.value) == (
        f"passport claim 'xbgw.eu_class' is {eu_class!r}, but xbgw.pi {pi!r} maps to "
        f"{EU_CLASS_OF_PI[pi]!r} ({MAPPING})"
    )


def test_constructor_validates_like_from_json() -> None:
    good = XbgwClaims.from_json(FULL_XBGW)
    fields = dict(good.__dict__)
    with pytest.raises(PassportClaimsError) as caught:
        XbgwClaims(**{**fields, "evidence": (FULL_XBGW["evidence"][0],)})
    assert str(caught.value) == "passport claim 'xbgw.evidence[0]' must be EvidenceClaim, got dict"
    with pytest.raises(PassportClaimsError, match=re.escape("'xbgw.evidence[1].kind'")):
        XbgwClaims(**{**fields, "evidence": (good.evidence[0], EvidenceClaim("bogus", "x"))})
    with pytest.raises(PassportClaimsError, match=re.escape("'xbgw.ciio' must be true or false")):
        XbgwClaims(**{**fields, "ciio": 1})
    # Lists are kept as tuples: the terms stay immutable and hashable.
    listed = XbgwClaims(**{**fields, "categories": ["a", "b"], "evidence": list(good.evidence)})
    assert listed.categories == ("a", "b")
    assert listed.evidence == good.evidence
    assert hash(listed) == hash(XbgwClaims(**{**fields, "categories": ("a", "b")}))


# --- older passports ------------------------------------------------------------------------


def test_an_older_passport_is_read_with_the_documented_defaults() -> None:
    terms = XbgwClaims.from_json(OLD_XBGW)
    assert (terms.exporter, terms.ciio, terms.eu_class) == (None, False, None)
    assert (terms.categories, terms.zone, terms.evidence) == ((), None, ())
    # Issued again, it is byte for byte the old format: no member an older gateway refuses.
    assert terms.to_json() == OLD_XBGW
    got = compliance_terms(terms)
    assert got == ComplianceTerms(
        passport_src="CN-SH",
        passport_dst="EU-DE",
        zone=None,
        exporter="lingang",  # the sender gateway
        ciio=False,
        cn_class="important",
        cn_pi="personal",
        eu_class="personal",  # from pi
        subjects=120_000,
        categories=(),
        purpose="Quarterly supplier quality report",
        evidence=(),
        byte_limit=10 * 2**20,
    )


@pytest.mark.parametrize(("pi", "subjects"), [("none", 0), ("personal", 5), ("sensitive", 5)])
def test_an_older_passport_gets_eu_class_from_pi(pi: str, subjects: int) -> None:
    terms = XbgwClaims.from_json({**OLD_XBGW, "pi": pi, "subjects": subjects})
    assert compliance_terms(terms).eu_class == EU_CLASS_OF_PI[pi]


def test_defaults_given_explicitly_are_left_out_when_written_again() -> None:
    explicit = {**OLD_XBGW, "ciio": False, "categories": [], "evidence": []}
    assert XbgwClaims.from_json(explicit) == XbgwClaims.from_json(OLD_XBGW)
    assert XbgwClaims.from_json(explicit).to_json() == OLD_XBGW


# --- the facts a decision reads ---------------------------------------------------------------


def test_vocabularies_are_the_fact_models() -> None:
    assert CN_CLASSES == fact_model.CN_CLASSES
    assert PI_CATEGORIES == fact_model.CN_PI
    assert EU_CLASSES == fact_model.EU_CLASSES
    assert EVIDENCE_KINDS == fact_model.EVIDENCE_KINDS
    assert set(EU_CLASS_OF_PI) == set(PI_CATEGORIES)
    assert sorted(EU_CLASS_OF_PI.values()) == sorted(EU_CLASSES)  # one to one


def test_compliance_terms_with_what_the_gateway_supplies_are_the_transfer_facts() -> None:
    terms = compliance_terms(XbgwClaims.from_json(FULL_XBGW))
    got = terms.facts(
        direction=fact_model.Direction.EGRESS,
        now=NOW,
        sender="lingang",
        receiver="frankfurt",
        sender_jurisdiction="CN-SH",
        receiver_jurisdiction="EU-DE",
        year_subjects=80_000,
        year_sensitive=12,
    )
    assert got == fact_model.TransferFacts(
        direction=fact_model.Direction.EGRESS,
        now=NOW,
        sender="lingang",
        receiver="frankfurt",
        sender_jurisdiction="CN-SH",
        receiver_jurisdiction="EU-DE",
        passport_src="CN-SH",
        passport_dst="EU-DE",
        zone="lingang",
        exporter="上海临港精密制造有限公司",
        ciio=True,
        cn_class="important",
        cn_pi="personal",
        eu_class="personal",
        subjects=120_000,
        categories=("supplier-quality", "hr.payroll"),
        purpose="Quarterly supplier quality report",
        evidence=(
            fact_model.Evidence("cac-assessment", "CAC-2026-0042", expires=EXPIRES_2029_01_31),
            fact_model.Evidence("gdpr-scc", "SCC-2026-7", module="2", tia="TIA-2026-7"),
            fact_model.Evidence("exemption", "HR-2026-1", article="Provisions Art. 5(2)"),
        ),
        byte_limit=10 * 2**20,
        year_subjects=80_000,
        year_sensitive=12,
    )
    assert all(isinstance(item, fact_model.Evidence) for item in got.evidence)


def test_compliance_terms_takes_only_verified_terms() -> None:
    with pytest.raises(TypeError, match="terms must be XbgwClaims, not dict"):
        compliance_terms(OLD_XBGW)  # type: ignore[arg-type]


# --- xbgw passport issue: flags and the --claims file, in process ------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2029-01-31", EXPIRES_2029_01_31),
        ("2029-01-31T12:00:00+08:00", EXPIRES_2029_01_31 + 4 * 3600),
        ("2029-01-31T00:00:00Z", EXPIRES_2029_01_31),
        ("1864512000", EXPIRES_2029_01_31),
        (EXPIRES_2029_01_31, EXPIRES_2029_01_31),
        (datetime.date(2029, 1, 31), EXPIRES_2029_01_31),
        (datetime.datetime(2029, 1, 31, 1, tzinfo=datetime.UTC), EXPIRES_2029_01_31 + 3600),
    ],
)
def test_expiry_dates_accepted(value: object, seconds: int) -> None:
    assert parse_time(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("31.01.2029", "not a date or time: '31.01.2029'"),
        ("2029-02-30", "not a date or time: '2029-02-30'"),
        ("2029-01-31T12:00:00", "2029-01-31T12:00:00 has no time zone: add one (Z, +08:00)"),
        (datetime.datetime(2029, 1, 31), "2029-01-31T00:00:00 has no time zone"),
        (True, "not a date or time: True"),
        (1.5, "not a date or time: 1.5"),
    ],
)
def test_expiry_dates_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_time(value)


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        (
            "cac-assessment:CAC-2026-0042:expires=2029-01-31",
            {"kind": "cac-assessment", "reference": "CAC-2026-0042", "expires": EXPIRES_2029_01_31},
        ),
        ("gdpr-bcr:BCR-7", {"kind": "gdpr-bcr", "reference": "BCR-7"}),
        (
            "gdpr-scc:SCC-1:module=2,tia=TIA-9,expires=2029-01-31T00:00:00Z",
            {
                "kind": "gdpr-scc",
                "reference": "SCC-1",
                "module": "2",
                "tia": "TIA-9",
                "expires": EXPIRES_2029_01_31,
            },
        ),
        (
            "exemption:HR-1:article=Provisions Art. 5(2)",
            {"kind": "exemption", "reference": "HR-1", "article": "Provisions Art. 5(2)"},
        ),
    ],
)
def test_evidence_flag_parsed(text: str, entry: dict[str, object]) -> None:
    assert parse_evidence(text) == entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cac-assessment", "--evidence 'cac-assessment': expected KIND:REFERENCE[:KEY=VALUE,...]"),
        (":CAC-1", "--evidence ':CAC-1': expected KIND:REFERENCE[:KEY=VALUE,...]"),
        ("cac-assessment:", "--evidence 'cac-assessment:': expected KIND:REFERENCE"),
        (
            "gdpr-scc:SCC-1:modul=2",
            "--evidence 'gdpr-scc:SCC-1:modul=2': 'modul=2' is not KEY=VALUE with KEY one of "
            "expires, article, module, tia",
        ),
        ("gdpr-scc:SCC-1:", "--evidence 'gdpr-scc:SCC-1:': '' is not KEY=VALUE"),
        ("gdpr-scc:SCC-1:module=1,module=2", "module is given twice"),
        ("cac-assessment:C-1:expires=soon", "expires: not a date or time: 'soon'"),
    ],
)
def test_evidence_flag_refused(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_evidence(text)


def test_claims_file_read_with_dates_sizes_and_module_numbers(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(
        "exporter: 上海临港精密制造有限公司\n"
        "ciio: true\n"
        "cn_class: important\n"
        "pi: personal\n"
        "subjects: 120000\n"
        "eu_class:\n"  # no value: left out
        "categories: [supplier-quality, hr.payroll]\n"
        "zone: lingang\n"
        "evidence:\n"
        "  - {kind: cac-assessment, reference: CAC-2026-0042, expires: 2029-01-31}\n"
        "  - {kind: gdpr-scc, reference: SCC-2026-7, module: 2, tia: TIA-2026-7}\n"
        "  - kind: exemption\n"
        "    reference: HR-2026-1\n"
        "    article: Provisions Art. 5(2)\n",
        encoding="utf-8",
    )
    terms = load_claims_file(str(path))
    assert terms == {
        key: FULL_XBGW[key]
        for key in (
            *("exporter", "ciio", "classification", "pi", "subjects", "categories"),
            *("zone", "evidence"),
        )
    }


def test_claims_file_mistakes_all_at_once_with_file_and_key_path(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(
        "exporter: Acme\n"
        "colour: red\n"
        "legal-basis: none\n"
        "byte_limit: lots\n"
        "evidence:\n"
        "  - {kind: cac-assessment, reference: C-1, expiry: 2029-01-31}\n"
        "  - {kind: cac-assessment, reference: C-2, expires: next year}\n"
        "  - just a string\n"
        "exporter: Acme Ltd\n",
        encoding="utf-8",
    )
    with pytest.raises(UsageError) as caught:
        load_claims_file(str(path))
    assert str(caught.value).splitlines() == [
        f"{path}: line 9: key 'exporter' is given twice",
        f"{path}: colour: unknown key (allowed: {', '.join(_FILE_KEYS)})",
        f"{path}: legal-basis: unknown key (did you mean 'legal_basis'?)",
        f"{path}: byte_limit: give it with --byte-limit: it names the transfer",
        f"{path}: evidence[0].expiry: unknown key (did you mean 'expires'?)",
        f"{path}: evidence[1].expires: not a date or time: 'next year' (give an ISO date "
        "(2029-01-31, meaning 00:00 UTC), an ISO time with a zone (2029-01-31T12:00:00+08:00) "
        "or Unix seconds)",
        f"{path}: evidence[2]: expected a mapping, got a string",
    ]


_FILE_KEYS = (
    "classification", "cn_class", "pi", "eu_class", "subjects", "purpose", "legal_basis",
    "exporter", "ciio", "categories", "zone", "evidence",
)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "{path}: the top level must be a mapping of claim names"),
        ("a: [1,\n", "{path}: line 2, column 1: invalid YAML: "),
        ("evidence: CAC-1\n", "{path}: evidence: expected a list of mappings, got a string"),
        (
            "cn_class: core\nclassification: core\n",
            "{path}: cn_class: the same claim as classification: give one",
        ),
        ("evidence:\n  - {kind: x, expires: 2024-13-01}\n", "{path}: not valid YAML: month"),
    ],
)
def test_claims_file_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(message.format(path=path))):
        load_claims_file(str(path))


def test_claims_file_missing_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--claims: cannot read .*missing\.yaml: No such file"):
        load_claims_file(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "claims.bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match=r"claims\.bin is not UTF-8 text"):
        load_claims_file(str(binary))


def test_empty_claims_file_is_no_terms(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_claims_file(str(path)) == {}


ISSUE = ["passport", "issue", "--kid", "dpo/signing/1", "--to", "frankfurt"]
TRANSFER = ["--sender", "lingang", "--src", "CN-SH", "--dst", "EU-DE", "--byte-limit", "1"]
TERMS = [*TRANSFER, "--purpose", "p", "--legal-basis", "x"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            [*ISSUE, *TRANSFER],
            2,
            "xbgw: give --purpose, --legal-basis (as flags, or in the --claims file as "
            "purpose, legal_basis)\n",
        ),
        (
            [*ISSUE, *TRANSFER, "--purpose", "p"],
            2,
            "xbgw: give --legal-basis (as flags, or in the --claims file as legal_basis)\n",
        ),
        (
            [*ISSUE, *TERMS, "--category", "HR"],
            1,
            "xbgw: passport claim 'xbgw.categories[0]' must be 1-64 characters of a-z 0-9 . -, "
            "starting with a letter or digit, got 'HR'\n",
        ),
        (
            [*ISSUE, *TERMS, "--evidence", "cac:C-1"],
            1,
            f"xbgw: passport claim 'xbgw.evidence[0].kind' must be one of {KINDS}, got 'cac'\n",
        ),
        (
            [*ISSUE, *TERMS, "--eu-class", "special"],
            1,
            f"xbgw: passport claim 'xbgw.eu_class' is 'special', but xbgw.pi 'none' maps to "
            f"'non-personal' ({MAPPING})\n",
        ),
    ],
)
def test_issue_refuses_bad_terms_before_opening_the_hsm(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main(argv) == code
    assert capsys.readouterr().err == message


@pytest.mark.parametrize(
    ("flag", "values"),
    [("--cn-class", CN_CLASSES), ("--pi", PI_CATEGORIES), ("--eu-class", EU_CLASSES)],
)
def test_issue_flag_choices_are_the_claims_vocabulary(
    capsys: pytest.CaptureFixture[str], flag: str, values: tuple[str, ...]
) -> None:
    parser = build_parser()
    for value in values:
        parser.parse_args([*ISSUE, *TRANSFER, flag, value])
    with pytest.raises(SystemExit):
        parser.parse_args([*ISSUE, *TRANSFER, flag, "internal"])
    assert "invalid choice: 'internal'" in capsys.readouterr().err
    args = parser.parse_args([*ISSUE, *TRANSFER, "--classification", "core"])
    assert (args.classification, args.explicit_terms) == ("core", {"classification"})


def test_a_flags_default_never_overrides_the_claims_file_but_a_flag_given_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen through the claims check, before any HSM: which pi and subjects were merged."""
    path = tmp_path / "claims.yaml"
    path.write_text("pi: personal\nsubjects: 10\npurpose: p\nlegal_basis: x\n", "utf-8")
    with_file = [*ISSUE, *TRANSFER, "--claims", str(path)]
    # The file's pi (personal) stands against --pi's default (none) ...
    assert main([*with_file, "--subjects", "0"]) == 1
    assert capsys.readouterr().err == (
        "xbgw: passport claim 'xbgw.subjects' must be at least 1 when xbgw.pi is personal\n"
    )
    # ... and the file's subjects (10) against --subjects' default (0); --pi given wins.
    assert main([*with_file, "--pi", "none"]) == 1
    assert capsys.readouterr().err == (
        "xbgw: passport claim 'xbgw.subjects' must be 0 when xbgw.pi is none, got 10\n"
    )
    # --classification given wins over the file's cn_class; its default does not.
    path.write_text("cn_class: core\npurpose: p\nlegal_basis: x\n", "utf-8")
    assert main([*with_file, "--eu-class", "special"]) == 1
    assert "xbgw.pi 'none' maps to 'non-personal'" in capsys.readouterr().err


def test_flags_name_the_transfer_and_the_file_does_not(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text("sender: lingang\nsrc: CN-SH\ndst: EU-DE\nbyte_limit: 1\n", "utf-8")
    with pytest.raises(UsageError) as caught:
        load_claims_file(str(path))
    assert str(caught.value).splitlines() == [
        f"{path}: {key}: give it with {flag}: it names the transfer"
        for key, flag in [
            ("sender", "--sender"),
            ("src", "--src"),
            ("dst", "--dst"),
            ("byte_limit", "--byte-limit"),
        ]
    ]

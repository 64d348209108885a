"""The compliance facts through the real program: ``xbgw passport issue`` with the new flags
and a ``--claims`` YAML file, signed by a SoftHSM issuer token, then ``passport inspect`` and
``passport verify`` on what it wrote.

Every command is a child process (``python -m gateway.cli``) with ``SOFTHSM2_CONF`` naming
the issuer's token directory, as ``devtools.provision`` runs them. Children that log in to
the token run one at a time (SoftHSM rewrites a token's flags on every login); the issuing
is done once, in a module fixture, and the tests judge what it produced.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.provision import GatewaySpec, Issuer, issue_passport, provision_issuer

TIMEOUT = 60.0
XBGW = [sys.executable, "-m", "gateway.cli"]
AUDIENCE = "frankfurt"
EXPIRES_2029_01_31 = 1_864_512_000  # 2029-01-31T00:00:00Z
BASE = [
    "--to", AUDIENCE, "--sender", "lingang", "--src", "CN-SH", "--dst", "EU-DE",
    "--purpose", "supplier quality report", "--byte-limit", "64MiB",
]  # fmt: skip

# The issue's passport: core data, 5,000,000 sensitive subjects, no legal basis. Issuing it
# is not the issuer's business to refuse; the rule table refuses it at the offer.
EXAMPLE = ["--classification", "core", "--pi", "sensitive", "--subjects", "5000000",
           "--legal-basis", "none"]  # fmt: skip
ALL_FLAGS = [
    "--legal-basis", "CAC-SC-2026-0042",
    "--exporter", "上海临港精密制造有限公司", "--ciio",
    "--cn-class", "important", "--pi", "personal", "--eu-class", "personal",
    "--subjects", "120000",
    "--category", "supplier-quality", "--category", "hr.payroll",
    "--zone", "lingang",
    "--evidence", "cac-assessment:CAC-2026-0042:expires=2029-01-31",
    "--evidence", "gdpr-scc:SCC-2026-7:module=2,tia=TIA-2026-7",
    "--evidence", "exemption:HR-2026-1:article=Provisions Art. 5(2)",
]  # fmt: skip
CLAIMS_YAML = """\
# The standing facts of one data set; flags override them per transfer.
exporter: 上海临港精密制造有限公司
ciio: true
cn_class: important
pi: personal
eu_class: personal
subjects: 120000
categories: [supplier-quality, hr.payroll]
zone: lingang
legal_basis: CAC-SC-2026-0042
evidence:
  - kind: cac-assessment
    reference: CAC-2026-0042
    expires: 2029-01-31            # an ISO date: 00:00 UTC
  - kind: gdpr-scc
    reference: SCC-2026-7
    module: 2
    tia: TIA-2026-7
  - {kind: exemption, reference: HR-2026-1, article: Provisions Art. 5(2)}
"""
FULL_XBGW = {
    "sender": "lingang",
    "src": "CN-SH",
    "dst": "EU-DE",
    "classification": "important",
    "pi": "personal",
    "subjects": 120000,
    "purpose": "supplier quality report",
    "legal_basis": "CAC-SC-2026-0042",
    "byte_limit": 64 * 2**20,
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


def run(argv: Sequence[str], issuer: Issuer, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**issuer.env(), "GRPC_VERBOSITY": "ERROR"}
    return subprocess.run(
        list(argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@dataclass(frozen=True)
class Issued:
    issuer: Issuer
    root: Path
    claims_file: Path
    results: dict[str, subprocess.CompletedProcess[str]]

    def xbgw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*XBGW, *args], self.issuer, self.root)

    def token(self, case: str) -> str:
        done = self.results[case]
        assert done.returncode == 0, outcome(done)
        return done.stdout.strip()

    def inspected(self, case: str) -> dict[str, Any]:
        """``passport inspect`` of the case's token: the claims as the program shows them."""
        shown = self.xbgw("passport", "inspect", self.token(case))
        assert shown.returncode == 0, outcome(shown)
        first, _, rest = shown.stdout.partition("\n")
        assert "UNVERIFIED" in first, outcome(shown)
        claims: dict[str, Any] = json.loads(rest)["claims"]
        return claims


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    root = tmp_path_factory.mktemp("cli-passport-claims")
    issuer = provision_issuer(root / "issuer", "dpo")
    claims_file = root / "claims.yaml"
    claims_file.write_text(CLAIMS_YAML, encoding="utf-8")
    bad_file = root / "bad-claims.yaml"
    bad_file.write_text(
        "exporter: Acme\ncolour: red\nevidence:\n  - {kind: gdpr-bcr, reference: B-1, expiry: 1}\n",
        encoding="utf-8",
    )
    issue = [*XBGW, "passport", "issue", *issuer.hsm_args(), "--kid", issuer.kid]
    cases = {
        "example": [*issue, *BASE, *EXAMPLE],
        "flags": [*issue, *BASE, *ALL_FLAGS],
        "file": [*issue, *BASE, "--claims", str(claims_file)],
        "file-and-flags": [
            *issue, *BASE, "--claims", str(claims_file),
            "--subjects", "130000", "--no-ciio", "--category", "hr.payroll",
            "--evidence", "pi-standard-contract:SC-310000-2026-17:expires=1900000000",
            "--legal-basis", "SC filing",
        ],
        "file-mistakes": [*issue, *BASE, "--legal-basis", "x", "--claims", str(bad_file)],
        "article-missing": [*issue, *BASE, *EXAMPLE, "--evidence", "exemption:HR-2026-1"],
        "old-classification": [*issue, *BASE, "--legal-basis", "x", "--classification", "internal"],
    }  # fmt: skip
    results = {name: run(argv, issuer, root) for name, argv in cases.items()}  # one at a time
    return Issued(issuer, root, claims_file, results)


def test_the_issues_example_passport_is_issued(issued: Issued) -> None:
    assert issued.inspected("example")["xbgw"] == {
        "sender": "lingang",
        "src": "CN-SH",
        "dst": "EU-DE",
        "classification": "core",
        "pi": "sensitive",
        "subjects": 5000000,
        "purpose": "supplier quality report",
        "legal_basis": "none",
        "byte_limit": 64 * 2**20,
    }  # no compliance facts given: the old format, read with the documented defaults


def test_every_compliance_flag_reaches_the_signed_claims(issued: Issued) -> None:
    assert issued.inspected("flags")["xbgw"] == FULL_XBGW


def test_a_claims_file_gives_the_same_passport_terms_as_the_flags(issued: Issued) -> None:
    assert issued.inspected("file")["xbgw"] == FULL_XBGW


def test_flags_override_the_claims_file(issued: Issued) -> None:
    xbgw = issued.inspected("file-and-flags")["xbgw"]
    # --no-ciio: false, which is the default and so left out of the claims.
    assert xbgw == {
        **{key: value for key, value in FULL_XBGW.items() if key != "ciio"},
        "subjects": 130000,
        "legal_basis": "SC filing",
        "categories": ["hr.payroll"],  # a repeatable flag replaces the file's list
        "evidence": [
            {
                "kind": "pi-standard-contract",
                "reference": "SC-310000-2026-17",
                "expires": 1900000000,
            }
        ],
    }


def test_verify_accepts_the_passport_with_compliance_facts(issued: Issued) -> None:
    trusted = f"{issued.issuer.kid}={issued.issuer.public_key}"
    done = issued.xbgw(
        "passport", "verify", issued.token("flags"), "--issuer", trusted, "--audience", AUDIENCE
    )
    assert done.returncode == 0, outcome(done)
    assert done.stdout.startswith("valid passport "), outcome(done)
    assert "lingang (CN-SH) -> frankfurt (EU-DE), important, " in done.stdout


def _one_line_refusal(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, outcome(done)
    assert done.stdout == "", outcome(done)
    assert "Traceback" not in done.stderr, outcome(done)
    assert done.stderr.startswith("xbgw: "), outcome(done)
    return done.stderr


def test_claims_file_mistakes_are_named_with_file_and_key_path(issued: Issued) -> None:
    stderr = _one_line_refusal(issued.results["file-mistakes"], 2)
    bad = issued.root / "bad-claims.yaml"
    assert stderr.splitlines() == [
        f"xbgw: {bad}: colour: unknown key (allowed: classification, cn_class, pi, eu_class, "
        "subjects, purpose, legal_basis, exporter, ciio, categories, zone, evidence)",
        f"{bad}: evidence[0].expiry: unknown key (did you mean 'expires'?)",
    ]


def test_evidence_without_the_article_it_claims_is_refused(issued: Issued) -> None:
    stderr = _one_line_refusal(issued.results["article-missing"], 1)
    assert stderr == (
        "xbgw: passport claim 'xbgw.evidence[0].article' is missing: kind exemption names "
        "the article\n"
    )


def test_an_old_free_form_classification_is_refused_by_the_flag(issued: Issued) -> None:
    done = issued.results["old-classification"]
    assert done.returncode == 2, outcome(done)
    assert "Traceback" not in done.stderr, outcome(done)
    assert "argument --cn-class/--classification: invalid choice: 'internal'" in done.stderr


def test_provisioning_helper_issues_from_a_claims_file(issued: Issued) -> None:
    """``devtools.provision.issue_passport(claims_file=...)``: the file's terms, not the demo's."""
    lingang = GatewaySpec("lingang", "CN-SH", "Lingang", 0)
    frankfurt = GatewaySpec(AUDIENCE, "EU-DE", "Frankfurt", 0)
    claims_file = issued.root / "helper-claims.yaml"
    claims_file.write_text(CLAIMS_YAML + "purpose: supplier quality report\n", encoding="utf-8")
    token = issue_passport(
        issued.issuer, lingang, frankfurt, 64 * 2**20, jti="dpo_t-helper", claims_file=claims_file
    )
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["jti"] == "dpo_t-helper"
    assert claims["xbgw"] == FULL_XBGW
    demo = issue_passport(issued.issuer, lingang, frankfurt, 1024, jti="t-demo")
    payload = demo.split(".")[1]
    demo_claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert demo_claims["xbgw"]["classification"] == "general"
    assert "evidence" not in demo_claims["xbgw"]

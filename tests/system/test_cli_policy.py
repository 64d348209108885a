"""``xbgw policy explain|check|counters`` through the real program, on the demo pair.

One pair for the module: provisioned once (lingang counts its years in Asia/Shanghai,
frankfurt in Europe/Berlin), its passports issued once by the demo issuer. The explain and
check tests need no daemon (they read the configs, and the ledgers read-only); the counters
test starts both daemons for one real transfer and reads the counters while they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devtools.pair import Pair, provision_pair
from devtools.provision import GatewaySpec, issue_passport
from tests.system.keys_helpers import send

XBGW = [sys.executable, "-m", "gateway.cli"]
TIMEOUT = 60.0
ZONES = {"lingang": "Asia/Shanghai", "frankfurt": "Europe/Berlin"}
# The issue's example: core data, 5,000,000 sensitive subjects, no legal basis.
EXAMPLE = ["--classification", "core", "--pi", "sensitive", "--subjects", "5000000",
           "--legal-basis", "none"]  # fmt: skip
ACME = ["--pi", "personal", "--subjects", "1200", "--exporter", "acme"]
BROKEN_TABLE = """\
table: xbgw-rules
version: 2
name: broken
description: every kind of mistake at once
rules:
  - id: r1
    article: "X Art. 1"
    when: {fact: colour, is: red}
    outcome: refuse
  - id: r2
    when: {fact: subjects, at_least: many}
    outcome: {require: [cac-assesment]}
"""


@dataclass
class Rig:
    pair: Pair
    root: Path
    tokens: dict[str, Path]  # name -> a file holding the passport
    first_explain: subprocess.CompletedProcess[str]  # before any daemon ran
    ledger_after_first: bool

    def config(self, gateway: str) -> str:
        return str(self.pair.gateway(gateway).paths.config)

    def xbgw(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*XBGW, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )

    def explain(self, token: str, gateway: str, *more: str) -> subprocess.CompletedProcess[str]:
        return self.xbgw(
            "policy", "explain", str(self.tokens[token]), "-c", self.config(gateway), *more
        )

    def counters(self, gateway: str) -> dict[str, Any]:
        done = self.xbgw("policy", "counters", "-c", self.config(gateway), "--json")
        assert done.returncode == 0, outcome(done)
        data: dict[str, Any] = json.loads(done.stdout)
        return data


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("cli-policy")

    def zone(gateway_id: str, data: dict[str, Any]) -> None:
        data["compliance"] = {"year_timezone": ZONES[gateway_id]}

    pair = provision_pair(root / "pair", configure=zone)
    paris = GatewaySpec("paris", "EU-FR", "Paris", 0)
    tokens = {
        "example": pair.passport(1 << 20, jti="dpo_t-example", extra=EXAMPLE),
        "general": pair.passport(1 << 20, jti="dpo_t-general"),
        "acme": pair.passport(1 << 20, jti="dpo_t-acme", extra=ACME),
        "acme-next": pair.passport(1 << 20, jti="dpo_t-acme-next", extra=ACME),
        "to-paris": issue_passport(pair.issuer, pair.lingang.spec, paris, 1024, jti="dpo_t-paris"),
    }
    files = {}
    for name, token in tokens.items():
        files[name] = root / f"{name}.jwt"
        files[name].write_text(token + "\n", encoding="ascii")
    rig = Rig(pair, root, files, subprocess.CompletedProcess([], 0), False)
    rig.first_explain = rig.explain("acme", "lingang")
    rig.ledger_after_first = (pair.lingang.paths.state_dir / "ledger.sqlite3").exists()
    try:
        yield rig
    finally:
        pair.stop()  # by PID, should a test have left them running


# --- explain -----------------------------------------------------------------------------------


def test_explain_refuses_the_issues_example_naming_the_articles(rig: Rig) -> None:
    done = rig.explain("example", "lingang")
    assert done.returncode == 1, outcome(done)
    assert done.stderr == "", outcome(done)
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "passport dpo_t-example: lingang (CN-SH) -> frankfurt (EU-DE), egress at lingang (enforced)"
    )
    assert lines[1] == (
        "  verified: signed by dpo/signing/1, audience frankfurt (the partner it is addressed to)"
    )
    assert lines[3] == "refused"
    assert lines[4] == ("  cn-core-data: DSL Art. 21 (state core data): core data is not exported")
    assert lines[5].startswith("  cn-spi-10k: CAC 2024 Provisions Art. 7(2); PIPL Art. 40: ")
    assert lines[5].endswith(": needs cac-assessment")
    trail = lines[lines.index("trail:") + 1 : lines.index("facts:")]
    assert [line.split()[:2] for line in trail] == [
        ["refused", "cn-core-data"],
        ["required-missing", "cn-spi-10k"],
    ]
    assert "  exporter    lingang (not a CIIO)" in lines
    assert (
        "  data        cn_class core, cn_pi sensitive, eu_class special, 5000000 subjects" in lines
    )
    assert any(line.startswith("  this year   ") and "(Asia/Shanghai)" in line for line in lines)


def test_explain_at_the_receiver_is_ingress_and_says_what_it_verified(rig: Rig) -> None:
    done = rig.explain("example", "frankfurt", "--all")
    assert done.returncode == 1, outcome(done)
    lines = done.stdout.splitlines()
    assert lines[0].endswith("ingress at frankfurt (enforced)"), outcome(done)
    assert lines[1] == (
        "  verified: signed by dpo/signing/1, audience frankfurt (this gateway), sender "
        "lingang (a partner)"
    )
    assert "DSL Art. 21" in done.stdout
    # --all: every rule of every table, those that do not apply too.
    trail = lines[lines.index("trail:") + 1 : lines.index("facts:")]
    assert len(trail) == 17
    assert sum(line.split()[0] == "not-applicable" for line in trail) == 15
    assert "(Europe/Berlin)" in done.stdout


def test_explain_allows_general_data_without_personal_information(rig: Rig) -> None:
    done = rig.explain("general", "lingang")
    assert done.returncode == 0, outcome(done)
    lines = done.stdout.splitlines()
    assert lines[3:6] == [
        "allowed",
        "trail:",
        "  (no rule applies; --all lists every rule with the facts it read)",
    ]


def test_explain_json_carries_decision_trail_and_facts(rig: Rig) -> None:
    done = rig.explain("example", "lingang", "--json")
    assert done.returncode == 1, outcome(done)
    data = json.loads(done.stdout)
    assert (data["passport"], data["gateway"], data["direction"]) == (
        "dpo_t-example",
        "lingang",
        "egress",
    )
    assert data["decision"]["allow"] is False
    assert data["decision"]["refused_by"] == ["cn-core-data", "cn-spi-10k"]
    core = data["trail"][0]
    assert (core["rule"], core["article"], core["outcome"]) == (
        "cn-core-data",
        "DSL Art. 21 (state core data)",
        "refused",
    )
    assert core["facts"]["cn_class"] == "core"
    assert data["trail"][1]["needs"] == ["cac-assessment"]
    facts = data["facts"]
    assert (facts["exporter"], facts["cn_class"], facts["cn_pi"], facts["subjects"]) == (
        "lingang",
        "core",
        "sensitive",
        5000000,
    )
    assert (facts["year_sensitive"], facts["year_sensitive_after"]) == (0, 5000000)
    assert data["year_timezone"] == "Asia/Shanghai"
    assert data["tables"] == ["baseline v1", "prc-export v1", "gdpr-chapter-v v1"]


def test_explain_before_any_daemon_ran_reads_counts_of_zero_and_creates_nothing(
    rig: Rig,
) -> None:
    done = rig.first_explain
    assert done.returncode == 0, outcome(done)
    assert "acme has 0 subjects of personal information" in done.stdout
    assert not rig.ledger_after_first


@pytest.mark.parametrize(
    ("token", "gateway", "more", "message"),
    [
        (
            "to-paris",
            "lingang",
            (),
            "xbgw: the passport's audience 'paris' is not a partner of lingang "
            "(partners: frankfurt)\n",
        ),
        (
            "to-paris",
            "frankfurt",
            (),
            "xbgw: passport 'dpo_t-paris' is neither sent by this gateway (frankfurt) nor "
            "addressed to it (sender 'lingang', audience 'paris'): explain it with the "
            "configuration of the gateway that sends or receives it\n",
        ),
        (
            "example",
            "frankfurt",
            ("--direction", "egress"),
            "xbgw: passport dpo_t-example is for sender 'lingang', not this gateway (frankfurt)\n",
        ),
    ],
)
def test_explain_of_a_passport_this_gateway_would_not_take_is_one_line(
    rig: Rig, token: str, gateway: str, more: tuple[str, ...], message: str
) -> None:
    done = rig.explain(token, gateway, *more)
    assert (done.returncode, done.stdout) == (1, ""), outcome(done)
    assert done.stderr == message, outcome(done)


# --- check -------------------------------------------------------------------------------------


def test_check_passes_the_shipped_tables_and_lists_their_rules(rig: Rig) -> None:
    shipped = ["baseline", "prc-export", "gdpr-chapter-v", "ftz-example"]
    done = rig.xbgw("policy", "check", *shipped, "--with", "prc-export")
    assert done.returncode == 0, outcome(done)
    out = done.stdout
    assert "prc-export v1 (shipped: prc-export): 12 rules\n" in out
    assert "  cn-core-data       DSL Art. 21 (state core data)  -> refuse\n" in out
    assert "ftz-example v1 (shipped: ftz-example): 3 rules, checked with prc-export v1\n" in out
    assert "gdpr-chapter-v v1 (shipped: gdpr-chapter-v): 3 rules" in out


def test_check_reports_every_mistake_of_a_broken_table_with_its_file(rig: Rig) -> None:
    broken = rig.root / "broken.yaml"
    broken.write_text(BROKEN_TABLE, encoding="utf-8")
    done = rig.xbgw("policy", "check", "broken.yaml", "ftz-example")
    assert (done.returncode, done.stdout) == (78, ""), outcome(done)
    lines = done.stderr.splitlines()
    assert lines[:5] == [
        "xbgw: broken.yaml: version: version 2 is not supported (supported: 1)",
        "broken.yaml: rules[0].when.fact: unknown fact 'colour' (known: direction, now, "
        "sender, receiver, sender_jurisdiction, receiver_jurisdiction, passport_src, "
        "passport_dst, zone, exporter, purpose, ciio, has_digest, cn_class, cn_pi, eu_class, "
        "subjects, "
        "byte_limit, year_subjects, year_sensitive, categories, year_subjects_after, "
        "year_sensitive_after, sender_country, receiver_country, evidence_kinds, "
        "exemptions_claimed)",
        "broken.yaml: rules[1].article: required key is missing",
        "broken.yaml: rules[1].when.at_least: subjects takes an integer, got 'many'",
        "broken.yaml: rules[1].outcome.require[0]: unknown evidence kind 'cac-assesment' "
        "(known: cac-assessment, pi-standard-contract, pi-certification, exemption, "
        "ftz-procedure, gdpr-scc, gdpr-bcr, gdpr-derogation)",
    ]
    # The FTZ list alone names rules of prc-export it was not checked with: --with is for that.
    assert lines[5] == (
        "gateway/compliance/tables/ftz-example.yaml: zones[0].exempts[0]: exempt names "
        "unknown rule 'cn-ciio-pi'"
    )
    assert len(lines) == 10


# --- counters, and a refused send ----------------------------------------------------------------


def _years(gateway: str) -> set[int]:
    return {datetime.now(ZoneInfo(ZONES[gateway])).year}


def test_counters_count_a_real_transfer_on_both_sides(rig: Rig) -> None:
    before = rig.counters("lingang")
    assert (before["counters"], before["year_timezone"]) == ([], "Asia/Shanghai")
    years = _years("lingang") | _years("frankfurt")
    with rig.pair.running():
        refused = rig.pair.lingang.cli(
            "send", str(rig.tokens["general"]), "--to", "frankfurt", "-q",
            "--passport", str(rig.tokens["example"]),
        )  # fmt: skip
        assert refused.returncode == 1, outcome(refused)
        assert refused.stderr.startswith("xbgw: cn-core-data: DSL Art. 21 (state core data): ")
        send(rig.pair, rig.root, 4096, token=rig.tokens["acme"].read_text().strip())
        # Read while both daemons run, and read-only: explaining changes nothing.
        lingang, frankfurt = rig.counters("lingang"), rig.counters("frankfurt")
        explained = rig.explain("acme-next", "lingang")
        assert rig.counters("lingang") == lingang
        text = rig.xbgw("policy", "counters", "-c", rig.config("lingang"))
    years |= _years("lingang") | _years("frankfurt")
    (egress,) = lingang["counters"]
    assert (egress["direction"], egress["exporter"], egress["subjects"]) == ("egress", "acme", 1200)
    assert (egress["sensitive"], egress["in_flight_subjects"]) == (0, 0)
    assert egress["year"] in years
    (ingress,) = frankfurt["counters"]
    assert (ingress["direction"], ingress["exporter"], ingress["subjects"]) == (
        "ingress",
        "acme",
        1200,
    )
    assert frankfurt["year_timezone"] == "Europe/Berlin"
    # The next acme transfer is judged with what the first one counted.
    assert explained.returncode == 0, outcome(explained)
    assert "acme has 1200 subjects of personal information" in explained.stdout
    assert "cn-pi-below-100k [CAC 2024 Provisions Art. 5(4)]" in explained.stdout
    assert "year_subjects_after=2400" in explained.stdout
    assert "note:" not in explained.stdout
    # The one already sent: explained with today's counts, and said so.
    again = rig.explain("acme", "frankfurt")
    assert again.returncode == 0, outcome(again)
    assert "  note: this transfer is already in the ledger (committed); " in again.stdout
    assert text.returncode == 0, outcome(text)
    rows = text.stdout.splitlines()
    assert rows[1].startswith("years: calendar years in Asia/Shanghai (now "), outcome(text)
    assert rows[3].split() == [
        "YEAR",
        "DIRECTION",
        "PERSONAL",
        "SENSITIVE",
        "IN",
        "FLIGHT",
        "EXPORTER",
    ]
    assert rows[4].split() == [str(egress["year"]), "egress", "1200", "0", "-", "acme"]
    assert len(rows) == 5

"""Rule tables: loaded and checked like gateway.yaml -- every mistake at once, with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.compliance import (
    FACTS,
    Plain,
    RuleTableError,
    load_tables,
    rules_from_documents,
    shipped_tables,
)
from gateway.errors import ConfigError
from tests.unit.compliance.support import ALL, decide, pi, transfer

KNOWN_FACTS = ", ".join(FACTS)
HEADER = "table: xbgw-rules\nversion: 1\nname: t\ndescription: a test table\n"

BAD = """\
table: xbgw-rules
version: 2
name: Bad Table
description: many mistakes
rulez: []
rules:
  - id: keep-core
    article: "DSL Art. 21"
    when: {fact: cn_class, is: core}
    outcome: refuse
  - id: typo
    article: A
    when: {all: [{fact: ciio, is: false}, {fact: cn_clas, is: core}]}
    outcome: refuse
  - id: wrong-types
    article: B
    when:
      any: [{fact: subjects, at_least: many}, {fact: cn_class, is: secret}, {fact: ciio, below: 3}]
    outcome: {require: [cac-asessment, {kind: gdpr-scc, with: [modul]}]}
  - id: typo
    article: C
    outcome: allow
  - id: waiver
    article: D
    when: {fact: zone, in_list: ftz-lists}
    outcome: {exempt: [keep-core, no-such-rule, wrong-typos]}
    message: "exporter {exportr} claims it"
  - article: ""
    outcome: maybe
"""


def _write(tmp_path: Path, text: str, name: str = "table.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(*tables: str | Path, overrides: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(RuleTableError) as caught:
        load_tables(tables, overrides, overrides_file="gateway.yaml", overrides_key="overrides")
    return caught.value.problems


def test_every_mistake_of_a_bad_table_is_reported_at_once(tmp_path: Path) -> None:
    bad = _write(tmp_path, BAD)
    f = str(bad)
    # A document's mistakes in the order of the schema's keys, unknown keys last (pydantic's
    # order); then what is checked across rules and tables.
    assert _problems(bad) == [
        f"{f}: version: version 2 is not supported (supported: 1)",
        f"{f}: name: 'Bad Table' is not valid here (expected a-z, 0-9, '-', '.'; 1-64 long)",
        f"{f}: rules[1].when.all[1].fact: unknown fact 'cn_clas' (known: {KNOWN_FACTS})",
        f"{f}: rules[2].when.any[0].at_least: subjects takes an integer, got 'many'",
        f"{f}: rules[2].when.any[1].is: 'secret' is not a value of cn_class "
        "(known: core, important, general)",
        f"{f}: rules[2].when.any[2].below: below does not apply to ciio, a flag fact "
        "(tests for it: is, same_as)",
        f"{f}: rules[2].outcome.require[0]: unknown evidence kind 'cac-asessment' (known: "
        "cac-assessment, pi-standard-contract, pi-certification, exemption, ftz-procedure, "
        "gdpr-scc, gdpr-bcr, gdpr-derogation)",
        f"{f}: rules[2].outcome.require[1].with[0]: 'modul' is not valid here "
        "(expected one of article, module, tia)",
        f"{f}: rules[4].when.in_list: unknown list 'ftz-lists' (known: none)",
        f"{f}: rules[4].message: unknown fact {{exportr}} in the template (known: {KNOWN_FACTS})",
        f"{f}: rules[5].id: required key is missing",
        f"{f}: rules[5].article: expected a non-empty string, got ''",
        f"{f}: rules[5].outcome: expected allow, refuse, flag, {{require: [...]}} or "
        "{exempt: [...]}; got 'maybe'",
        f"{f}: rulez: unknown key (did you mean 'rules'?)",
        f"{f}: rules[3]: duplicate rule id 'typo' (also {f}: rules[1])",
        f"{f}: rules[4].outcome.exempt[0]: 'keep-core' refuses, and refusals can never be waived",
        f"{f}: rules[4].outcome.exempt[1]: exempt names unknown rule 'no-such-rule'",
        f"{f}: rules[4].outcome.exempt[2]: exempt names unknown rule 'wrong-typos'; "
        "did you mean 'wrong-types'?",
    ]


def test_the_error_is_a_config_error_one_line_per_mistake(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tables([_write(tmp_path, BAD)])
    assert len(str(caught.value).splitlines()) == 18


def test_shipped_tables_are_listed_and_load() -> None:
    assert shipped_tables() == ("baseline", "ftz-example", "gdpr-chapter-v", "prc-export")
    assert ALL.tables == ("baseline v1", "prc-export v1", "gdpr-chapter-v v1", "ftz-example v1")
    assert ALL.mapping == {"none": "non-personal", "personal": "personal", "sensitive": "special"}
    assert (ALL.eu_class_of("sensitive"), ALL.cn_pi_of("special")) == ("special", "sensitive")


def test_a_table_by_path_loads_next_to_shipped_ones(tmp_path: Path) -> None:
    mine = _write(
        tmp_path,
        HEADER + "rules:\n  - id: no-us\n    article: house rule\n    outcome: refuse\n"
        "    when: {fact: receiver_country, is: US}\n"
        "    message: not to {receiver_jurisdiction}\n",
    )
    rules = load_tables(["baseline", str(mine)])
    assert rules.tables == ("baseline v1", "t v1")
    decision = rules.decide(transfer(receiver_jurisdiction="US", passport_dst="US"))
    assert decision.reasons == ("no-us: house rule: not to US",)


def test_file_level_problems(tmp_path: Path) -> None:
    syntax = _write(tmp_path, HEADER + "rules: [\n", "syntax.yaml")
    twice = _write(tmp_path, HEADER + "name: again\nrules: []\n", "twice.yaml")
    scalar = _write(tmp_path, "just text\n", "scalar.yaml")
    problems = _problems("prc", tmp_path / "absent.yaml", syntax, twice, scalar)
    assert problems == [
        "prc: no such shipped table (shipped: baseline, ftz-example, gdpr-chapter-v, prc-export)",
        f"{tmp_path / 'absent.yaml'}: cannot read the rule table: No such file or directory",
        f"{syntax}: line 6, column 1: invalid YAML: expected the node content, but found "
        "'<stream end>'",
        f"{twice}: line 5: key 'name' is given twice",
        f"{scalar}: the top level must be a mapping, got 'just text'",
    ]


def test_header_problems(tmp_path: Path) -> None:
    doc = _write(tmp_path, "table: other\nname: x\nrules:\nscope: {from: [cn]}\n")
    f = str(doc)
    assert _problems(doc) == [  # in the order of the schema's keys
        f"{f}: table: expected 'xbgw-rules': this is not an xbgw rule table",
        f"{f}: version: required key is missing",
        f"{f}: description: required key is missing",
        f"{f}: scope.from[0]: 'cn' is not valid here (expected a code like CN, CN-SH or EU-DE)",
        f"{f}: rules: has no value",
    ]


def test_a_key_without_a_value_is_a_mistake_never_its_default(tmp_path: Path) -> None:
    """An empty ``when:`` must not make a rule apply to every transfer."""
    doc = _write(
        tmp_path,
        HEADER + "rules:\n  - {id: a, article: , outcome: refuse, when: , note: , zz: }\n",
    )
    f = str(doc)
    assert _problems(doc) == [
        f"{f}: rules[0].article: required key has no value",
        f"{f}: rules[0].when: has no value",
        f"{f}: rules[0].note: has no value",
        f"{f}: rules[0].zz: unknown key (allowed: id, article, scope, when, outcome, message, "
        "final, note)",
    ]


def test_unknown_keys_below_an_outcome_or_scope_get_did_you_mean(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        HEADER + "rules:\n  - {id: a, article: x, scope: {form: [CN]},\n"
        "     outcome: {require: [{kind: gdpr-scc, with: [tia], wiht: 1}]}}\n",
    )
    assert _problems(doc) == [
        f"{doc}: rules[0].scope.form: unknown key (did you mean 'from'?)",
        f"{doc}: rules[0].outcome.require[0].wiht: unknown key (did you mean 'with'?)",
    ]


def test_a_table_needs_rules_or_zones(tmp_path: Path) -> None:
    doc = _write(tmp_path, HEADER)
    assert _problems(doc) == [f"{doc}: a table needs rules, zones or both"]


def test_condition_shape_problems(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        HEADER + "rules:\n"
        "  - {id: a, article: x, outcome: refuse, when: {all: [], any: []}}\n"
        "  - {id: b, article: x, outcome: refuse, when: {fact: subjects, at_least: 1, is: 2}}\n"
        "  - {id: c, article: x, outcome: refuse, when: {fact: cn_pi}}\n"
        "  - {id: d, article: x, outcome: refuse, when: {al: []}}\n"
        "  - {id: e, article: x, outcome: refuse, when: {not: {fact: categories, intersects: []}}"
        "}\n"
        "  - {id: f, article: x, outcome: refuse, when: {fact: passport_src, same_as: subjects}}\n"
        "  - {id: g, article: x, outcome: refuse, when: [fact]}\n",
    )
    f = str(doc)
    assert _problems(doc) == [
        f"{f}: rules[0].when: all stands alone in its mapping (also given: any)",
        f"{f}: rules[1].when: a leaf has one test (at_least and below may go together); got 2",
        f"{f}: rules[2].when: a leaf has one test (at_least and below may go together); got 0",
        f"{f}: rules[3].when: expected one of all, any, not or fact; got al",
        f"{f}: rules[4].when.not.intersects: expected a non-empty list, got a list",
        f"{f}: rules[5].when.same_as: expected another text fact, got 'subjects'",
        f"{f}: rules[6].when: expected a condition (all, any, not or fact), got a list",
    ]


def test_requirement_and_scope_problems(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        HEADER + "rules:\n"
        "  - {id: a, article: x, outcome: {require: []}, scope: {direction: out, to: EU}}\n"
        "  - {id: b, article: x, outcome: {require: [{kind: gdpr-scc}]}, final: yes-please}\n"
        "  - {id: c, article: x, outcome: {exempt: [a], require: [cac-assessment]}}\n"
        "  - {id: d, article: x, outcome: flag, message: 'count {subjects:,}', extra: 1}\n",
    )
    f = str(doc)
    assert _problems(doc) == [
        f"{f}: rules[0].scope.to: expected a non-empty list, got 'EU'",
        f"{f}: rules[0].scope.direction: 'out' is not a value of direction (known: egress, "
        "ingress)",
        f"{f}: rules[0].outcome.require: expected a non-empty list, got a list",
        f"{f}: rules[1].outcome.require[0].with: required key is missing",
        f"{f}: rules[1].final: expected true or false, got 'yes-please'",
        f"{f}: rules[2].outcome: expected allow, refuse, flag, {{require: [...]}} or "
        "{exempt: [...]}; got a mapping",
        f"{f}: rules[3].message: {{subjects}}: name a fact, without format or conversion",
        f"{f}: rules[3].extra: unknown key (allowed: id, article, scope, when, outcome, "
        "message, final, note)",
    ]


def test_exempting_a_non_requirement_is_refused(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        HEADER + "rules:\n"
        "  - {id: ok, article: x, outcome: allow}\n"
        "  - {id: w, article: x, outcome: {exempt: [ok]}}\n",
    )
    assert _problems(doc) == [
        f"{doc}: rules[1].outcome.exempt[0]: 'ok' is not a requirement; only those are waived"
    ]


def test_ftz_example_alone_names_rules_of_no_table() -> None:
    """Its exemptions waive prc-export rules: loaded without that table, it is an error."""
    problems = _problems("ftz-example")
    assert len(problems) == 5
    assert problems[0] == (
        "gateway/compliance/tables/ftz-example.yaml: zones[0].exempts[0]: exempt names "
        "unknown rule 'cn-ciio-pi'"
    )


def test_zone_problems(tmp_path: Path) -> None:
    doc = _write(
        tmp_path,
        HEADER + "zones:\n"
        "  - zone: Lingang\n"
        "    article: x\n"
        "    exempts: []\n"
        "    categories:\n"
        "      - {category: a, requires: [cac-asessment]}\n"
        "      - {requires: [cac-assessment]}\n",
    )
    f = str(doc)
    assert _problems(doc) == [
        f"{f}: zones[0].zone: 'Lingang' is not valid here (expected a-z, 0-9, '-', '.'; 1-64 long)",
        f"{f}: zones[0].exempts: expected a non-empty list, got a list",
        f"{f}: zones[0].categories[0].requires[0]: unknown evidence kind 'cac-asessment' "
        "(known: cac-assessment, pi-standard-contract, pi-certification, exemption, "
        "ftz-procedure, gdpr-scc, gdpr-bcr, gdpr-derogation)",
        f"{f}: zones[0].categories[1].category: required key is missing",
    ]


def test_lists_and_mapping_problems(tmp_path: Path) -> None:
    one = _write(
        tmp_path,
        HEADER + "rules: []\nlists:\n  adequacy: {items: [JP], as_of: 2025-06-30}\n"
        "mapping:\n  - {cn_pi: personal, eu_class: personal}\n",
        "one.yaml",
    )
    two = _write(
        tmp_path,
        HEADER.replace("name: t", "name: u") + "rules: []\nlists:\n  adequacy: {items: [NZ]}\n"
        "  Bad: {items: []}\nmapping:\n  - {cn_pi: personal, eu_class: special}\n"
        "  - {cn_pi: personal, eu_class: speciall}\n",
        "two.yaml",
    )
    # Each document's own mistakes first (the schema's key order), then those across tables.
    assert _problems(one, two) == [
        f"{two}: mapping[1].eu_class: 'speciall' is not a eu_class (known: non-personal, "
        "personal, special)",
        f"{two}: lists.Bad: 'Bad' is not valid here (expected a-z, 0-9, '-', '.'; 1-64 long)",
        f"{two}: lists.Bad.items: expected a non-empty list, got a list",
        f"{two}: lists.adequacy: list 'adequacy' is defined by another table too",
        f"{two}: mapping[1]: personal or speciall is mapped twice; the mapping is one to one",
        f"{two}: mapping: disagrees with the mapping of another table",
    ]


def test_the_same_table_twice_is_an_error() -> None:
    problems = _problems("baseline", "baseline")
    assert problems[0] == (
        "gateway/compliance/tables/baseline.yaml: name: table 'baseline v1' is also loaded from "
        "gateway/compliance/tables/baseline.yaml"
    )


# --- overrides --------------------------------------------------------------------------------

TABLES = ["baseline", "prc-export"]


def test_an_override_disables_a_rule() -> None:
    """A deployment that wants a contract even below 100,000 subjects (Art. 5(4) off)."""
    rules = load_tables(TABLES, {"cn-pi-below-100k": {"disable": True}})
    assert "cn-pi-below-100k" not in {r.id for r in rules.rules}
    assert decide(pi(10)).allow  # nothing requires anything below 100,000


def test_an_override_changes_a_rules_outcome_and_condition() -> None:
    overrides = {
        "cn-pi-below-100k": {
            "outcome": {"require": ["pi-standard-contract"]},
            "when": {"fact": "cn_pi", "is": "personal"},
            "article": "house rule (stricter than CAC 2024 Provisions Art. 5(4))",
        }
    }
    rules = load_tables(TABLES, overrides)
    decision = rules.decide(pi(10))
    assert not decision.allow
    assert decision.reasons[0].startswith(
        "cn-pi-below-100k: house rule (stricter than CAC 2024 Provisions Art. 5(4)): exporter "
    )


def test_override_problems_name_the_deployments_file_and_key() -> None:
    overrides: dict[str, Any] = {
        "cn-pi-1m": {"when": {"fact": "year_subject", "at_least": 1}, "outcom": "allow"},
        "baseline-passport-src": {"disable": True},
        "cn-nope": {"disable": True},
        "cn-core-data": {"disable": "yes"},
        "cn-spi-10k": {"outcome": "allow"},  # an exemption of prc-export names it
        "cn-pi-100k": {"message": "{nothing}"},
    }
    problems = _problems(*TABLES, overrides=overrides)
    assert problems == [
        f"gateway.yaml: overrides.cn-pi-1m.when.fact: unknown fact 'year_subject' (known: "
        f"{KNOWN_FACTS})",
        "gateway.yaml: overrides.cn-pi-1m.outcom: unknown key (did you mean 'outcome'?)",
        "gateway.yaml: overrides.baseline-passport-src: rule 'baseline-passport-src' is final "
        "(gateway/compliance/tables/baseline.yaml: rules[0]): no override may touch it",
        "gateway.yaml: overrides.cn-nope: no rule 'cn-nope' in the tables loaded "
        "(baseline v1, prc-export v1)",
        "gateway.yaml: overrides.cn-core-data.disable: expected disable: true, alone",
        f"gateway.yaml: overrides.cn-pi-100k.message: unknown fact {{nothing}} in the template "
        f"(known: {KNOWN_FACTS})",
        *(
            f"gateway/compliance/tables/prc-export.yaml: rules[{i}].outcome.exempt[{j}]: "
            "'cn-spi-10k' is not a requirement; only those are waived"
            for i, j in ((8, 5), (9, 4), (10, 4), (11, 4))
        ),
    ]


def test_documents_can_be_checked_without_files() -> None:
    """``rules_from_documents``: for ``xbgw policy check`` on text already read."""
    doc = yaml.safe_load(HEADER + "rules: [{id: r, article: a, outcome: refuse}]")
    rules = rules_from_documents([("inline", doc)])
    assert [(r.id, r.action) for r in rules.rules] == [("r", Plain.REFUSE)]
    assert not rules.decide(transfer()).allow

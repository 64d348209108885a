"""Rule tables: versioned YAML files, checked completely before a single rule runs.

Why so strict: a rule naming a fact that does not exist, or a misspelt evidence kind, would
otherwise show up as a transfer wrongly allowed or refused in production. So, like
``gateway.yaml``, tables are checked at load -- keys, facts, tests, values, evidence kinds,
lists, duplicate ids, exemptions naming unknown rules or refusals, overrides -- and every
mistake is reported at once in one :class:`RuleTableError`, a line each: ``file: key.path:
reason``. The shipped tables (``tables/*.yaml``) are the worked examples of the format::

    table: xbgw-rules                    # and version: 1, name, description
    scope: {from: [CN], not_to: [CN]}    # for every rule that has none (also: to, direction)
    mapping: [{cn_pi: sensitive, eu_class: special}, ...]
    lists: {eu-adequacy: {as_of: 2025-06-30, source: URL, items: {JP: Japan}}}  # for in_list
    rules:
      - id: cn-pi-1m
        article: CAC 2024 Provisions Art. 7(2)
        when: {all: [{fact: ciio, is: false}, {fact: year_subjects_after, at_least: 1000000}]}
        outcome: {require: [cac-assessment]}   # allow | refuse | flag | {exempt: [rule ids]}
        message: exporter {exporter} has sent ...   # a template over facts
        final: true                      # no deployment override may touch it
    zones:                               # free-trade-zone lists (Provisions Art. 6)
      - {zone: z, article: ..., exempts: [ids], categories: [{category: c, requires: [...]}]}

Conditions: ``{all: [...]}``, ``{any: [...]}``, ``{not: ...}`` or ``{fact: NAME, TEST: VALUE}``
with a test of :data:`~gateway.compliance.engine.OPERATORS`. A requirement lists evidence
kinds, any one suffices; ``{kind: gdpr-scc, with: [module, tia]}`` also wants those fields.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gateway.compliance.engine import (
    ALWAYS,
    Action,
    AllOf,
    AnyOf,
    Condition,
    Exempt,
    LeafError,
    Not,
    Plain,
    Require,
    Rule,
    RuleSet,
    Wanted,
    leaf,
    show_raw,
    template_facts,
)
from gateway.compliance.facts import CN_PI, EU_CLASSES, EVIDENCE_KINDS
from gateway.errors import ConfigError

TABLE_FORMAT = "xbgw-rules"
VERSIONS = (1,)
EVIDENCE_FIELDS = ("article", "module", "tia")
_ID = re.compile(r"[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?"), "a-z, 0-9, '-', '.'; 1-64 long"
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?"), "a code like CN, CN-SH or EU-DE"
_TOP = ("table", "version", "name", "description", "scope", "mapping", "lists", "rules", "zones")
_RULE = ("id", "article", "scope", "when", "outcome", "message", "final", "note")
_OVERRIDE = ("disable", "article", "scope", "when", "outcome", "message")
_ZONE = ("zone", "article", "note", "exempts", "categories")
_LIST = ("as_of", "source", "note", "items")


class RuleTableError(ConfigError):
    """A rule table (or an override) is wrong; ``problems`` has one line per mistake."""


T = TypeVar("T")
_Format = tuple[re.Pattern[str], str]  # a pattern, and what it means in words
_FIELD = (re.compile("|".join(EVIDENCE_FIELDS)), f"one of {', '.join(EVIDENCE_FIELDS)}")


def _all(values: Sequence[T | None]) -> tuple[T, ...] | None:
    """The values if none is missing (whatever is missing has been reported)."""
    return None if any(v is None for v in values) else tuple(v for v in values if v is not None)


@dataclass(frozen=True)
class _Placed:
    """A rule and where it came from, for messages about it."""

    rule: Rule
    where: str  # "file: rules[3]"
    exempt_at: str = ""  # "file: rules[3].outcome.exempt"
    broken: bool = False  # its outcome is wrong (reported): a stand-in for the cross-checks


class _Check:
    """Where in which file we are; every problem goes to the one shared list."""

    def __init__(self, label: str, path: str, problems: list[str]) -> None:
        self.label, self.path, self.problems = label, path, problems

    def at(self, key: object) -> _Check:
        sub = f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}"
        return _Check(self.label, sub.lstrip("."), self.problems)

    def where(self) -> str:
        return f"{self.label}: {self.path}" if self.path else self.label

    def bad(self, reason: str) -> None:
        self.problems.append(f"{self.where()}: {reason}")

    def keys(self, value: object, allowed: Sequence[str], required: Sequence[str] = ()) -> bool:
        """Reports unknown and missing keys; False if ``value`` is not even a mapping."""
        if not isinstance(value, dict):
            self.bad(f"expected a mapping, got {show_raw(value)}")
            return False
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                self.at(key).bad(f"unknown key ({hint})")
        for key in required:
            if value.get(key) is None:
                self.at(key).bad(f"required key {'has no value' if key in value else 'is missing'}")
        return True

    def text(self, value: object, form: _Format | None = None) -> str | None:
        if isinstance(value, datetime.date):  # YAML reads 2025-06-30 as a date
            value = value.isoformat()
        if not isinstance(value, str) or not value.strip():
            self.bad(f"expected a non-empty string, got {show_raw(value)}")
        elif form and not form[0].fullmatch(value):
            self.bad(f"{value!r} is not valid here (expected {form[1]})")
        else:
            return value
        return None

    def get(self, raw: dict[Any, Any], key: str, form: _Format | None = None) -> str | None:
        """``raw[key]`` checked as text; None if absent (a missing required key is reported)."""
        return None if raw.get(key) is None else self.at(key).text(raw[key], form)

    def items(self, value: object, empty: bool = False) -> list[tuple[_Check, Any]]:
        """``(checker, item)`` of a list; None is a missing key, which ``keys`` reported."""
        if value is not None and (not isinstance(value, list) or not (value or empty)):
            self.bad(f"expected a non-empty list, got {show_raw(value)}")
            return []
        return [(self.at(i), item) for i, item in enumerate(value or [])]

    def texts(self, value: object, form: _Format | None = None) -> tuple[str, ...] | None:
        return _all([c.text(v, form) for c, v in self.items(value)]) or None


# --- conditions, outcomes, scope ------------------------------------------------------------


def _condition(ck: _Check, value: Any, lists: Mapping[str, Sequence[str]]) -> Condition | None:
    if not isinstance(value, dict) or not value:
        ck.bad(f"expected a condition (all, any, not or fact), got {show_raw(value)}")
        return None
    for combinator in ("all", "any", "not"):
        if combinator not in value:
            continue
        if len(value) != 1:
            others = ", ".join(str(k) for k in value if k != combinator)
            ck.bad(f"{combinator} stands alone in its mapping (also given: {others})")
            return None
        if combinator == "not":
            inner = _condition(ck.at("not"), value["not"], lists)
            return None if inner is None else Not(inner)
        c = ck.at(combinator)
        parts = _all([_condition(sub, v, lists) for sub, v in c.items(value[combinator])])
        if not parts:
            return None
        return AllOf(parts) if combinator == "all" else AnyOf(parts)
    tests = [str(key) for key in value if key != "fact"]
    if "fact" not in value:
        ck.bad(f"expected one of all, any, not or fact; got {', '.join(tests)}")
        return None
    if not tests or (len(tests) > 1 and set(tests) != {"at_least", "below"}):
        ck.bad(f"a leaf has one test (at_least and below may go together); got {len(tests)}")
        return None
    leaves: list[Condition | None] = []
    for op in tests:
        try:
            leaves.append(leaf(value["fact"], op, value[op], lists))
        except LeafError as exc:
            ck.at(exc.key).bad(str(exc))
            if exc.key == "fact":
                return None
            leaves.append(None)
    done = _all(leaves)
    return None if done is None else done[0] if len(done) == 1 else AllOf(done)


def _wanted(ck: _Check, value: Any) -> Wanted | None:
    """An evidence kind, or ``{kind: K, with: [fields it must fill]}``."""
    kind: Any = value
    needs: tuple[str, ...] = ()
    if isinstance(value, dict) and ck.keys(value, ("kind", "with"), ("kind", "with")):
        kind, needs = value.get("kind"), ck.at("with").texts(value.get("with"), _FIELD) or ()
        ck = ck.at("kind")
        if kind is None or not needs:
            return None
    if kind not in EVIDENCE_KINDS:
        ck.bad(f"unknown evidence kind {show_raw(kind)} (known: {', '.join(EVIDENCE_KINDS)})")
        return None
    return Wanted(kind, needs)


def _outcome(ck: _Check, value: Any) -> Action | None:
    if value in tuple(Plain):
        return Plain(value)
    if isinstance(value, dict) and list(value) == ["require"]:
        kinds = _all([_wanted(c, v) for c, v in ck.at("require").items(value["require"])])
        return None if kinds is None else Require(kinds)
    if isinstance(value, dict) and list(value) == ["exempt"]:
        ids = ck.at("exempt").texts(value["exempt"], _ID)
        return None if ids is None else Exempt(ids)
    expected = "allow, refuse, flag, {require: [...]} or {exempt: [...]}"
    ck.bad(f"expected {expected}; got {show_raw(value)}")
    return None


def _scope(ck: _Check, value: Any) -> Condition | None:
    """``{direction, from, to, not_to}``: a condition on the direction and jurisdictions."""
    if not ck.keys(value, ("direction", "from", "to", "not_to")):
        return None
    parts: list[Condition | None] = []
    for key, fact in (("from", "sender"), ("to", "receiver"), ("not_to", "receiver")):
        if key in value:
            codes = ck.at(key).texts(value[key], _JURISDICTION)
            test = None if codes is None else leaf(f"{fact}_jurisdiction", "within", codes)
            parts.append(Not(test) if test and key == "not_to" else test)
    if "direction" in value:
        raw = value["direction"]
        try:
            parts.append(leaf("direction", "in", raw if isinstance(raw, list) else [raw]))
        except LeafError as exc:
            ck.at("direction").bad(str(exc))
            parts.append(None)
    done = _all(parts)
    return None if done is None else AllOf(done)


# --- rules, zones, lists, mapping ---------------------------------------------------------------


def _rule(ck: _Check, raw: Any, scope: Condition, lists: _Lists, table: str) -> _Placed | None:
    """The rule, or a stand-in if it is wrong (so that the cross-checks still see its id)."""
    if not ck.keys(raw, _RULE, ("id", "article", "outcome")):
        return None
    rid, article = ck.get(raw, "id", _ID), ck.get(raw, "article")
    own = _scope(ck.at("scope"), raw["scope"]) if "scope" in raw else scope
    when = _condition(ck.at("when"), raw["when"], lists) if "when" in raw else ALWAYS
    action = _outcome(ck.at("outcome"), raw["outcome"]) if raw.get("outcome") else None
    message = ck.get(raw, "message") or ""
    ck.get(raw, "note")
    try:
        template_facts(message)
    except LeafError as exc:
        ck.at("message").bad(str(exc))
        message = ""
    if not isinstance(final := raw.get("final", False), bool):
        ck.at("final").bad(f"expected true or false, got {show_raw(final)}")
    if rid is None:
        return None
    good = Rule(rid, article or "", when or ALWAYS, action or Plain.FLAG, own or ALWAYS, message)
    rule = replace(good, table=table, final=final is True)
    return _Placed(rule, ck.where(), ck.at("outcome").at("exempt").where(), action is None)


def _zone(ck: _Check, raw: Any, scope: Condition, table: str) -> list[_Placed]:
    """A free-trade-zone list as rules: a requirement per listed category, an exemption."""
    if not ck.keys(raw, _ZONE, ("zone", "article", "exempts", "categories")):
        return []
    zone, article = ck.get(raw, "zone", _ID), ck.get(raw, "article")
    exempts, categories = ck.at("exempts").texts(raw.get("exempts")), raw.get("categories")
    ck.get(raw, "note")
    placed, listed = [], []
    for c, item in ck.at("categories").items(categories):
        if not c.keys(item, ("category", "requires", "note"), ("category", "requires")):
            continue
        category, _ = c.get(item, "category", _ID), c.get(item, "note")
        kinds = _all([_wanted(e, v) for e, v in c.at("requires").items(item.get("requires"))])
        if zone and article and category and kinds:
            listed.append(category)
            when = AllOf((leaf("zone", "is", zone), leaf("categories", "contains", category)))
            message = f"data category {category} is on the list of zone {zone}"
            rule = Rule(f"ftz-{zone}-{category}", article, when, Require(kinds), scope, message)
            placed.append(_Placed(replace(rule, table=table), c.at("category").where()))
    if not (zone and article and exempts and listed) or len(listed) != len(categories or ()):
        return []
    unlisted = AllOf((leaf("zone", "is", zone), Not(leaf("categories", "intersects", listed))))
    message = f"no data category on the list of zone {zone}"
    rule = Rule(f"ftz-{zone}-unlisted", article, unlisted, Exempt(exempts), scope, message, table)
    return [*placed, _Placed(rule, ck.at("zone").where(), ck.at("exempts").where())]


_Lists = dict[str, tuple[str, ...]]


def _lists(ck: _Check, raw: Any, into: _Lists) -> None:
    if not isinstance(raw, dict):
        ck.bad(f"expected a mapping of list names, got {show_raw(raw)}")
        return
    for name, spec in raw.items():
        c = ck.at(name)
        if c.text(name, _ID) is None or not c.keys(spec, _LIST, ("items",)):
            continue
        for key in ("as_of", "source", "note"):
            c.get(spec, key)
        items = spec.get("items")
        values = c.at("items").texts(list(items) if isinstance(items, dict) else items)
        if name in into:
            c.bad(f"list {name!r} is defined by another table too")
        elif values:
            into[name] = values


def _mapping(ck: _Check, raw: Any) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for c, pair in ck.items(raw):
        if not c.keys(pair, ("cn_pi", "eu_class"), ("cn_pi", "eu_class")):
            continue
        cn, eu = pair.get("cn_pi"), pair.get("eu_class")
        for key, value, known in (("cn_pi", cn, CN_PI), ("eu_class", eu, EU_CLASSES)):
            if value not in known:
                c.at(key).bad(f"{show_raw(value)} is not a {key} (known: {', '.join(known)})")
        if cn in pairs or eu in pairs.values():
            c.bad(f"{cn} or {eu} is mapped twice; the mapping is one to one")
        elif cn in CN_PI and eu in EU_CLASSES:
            pairs[cn] = eu
    return pairs


def _header(ck: _Check, doc: dict[Any, Any]) -> str:
    """Checks the header keys; returns "name vN"."""
    ck.keys(doc, _TOP, ("table", "version", "name", "description"))
    for key in (k for k in _TOP[4:] if k in doc and doc[k] is None):
        ck.at(key).bad("has no value")
    if doc.get("table") not in (None, TABLE_FORMAT):
        ck.at("table").bad(f"expected {TABLE_FORMAT!r}: this is not an xbgw rule table")
    version = doc.get("version")
    if version is not None and version not in VERSIONS:
        supported = ", ".join(map(str, VERSIONS))
        ck.at("version").bad(f"version {version!r} is not supported (supported: {supported})")
    for key in ("name", "description"):
        if doc.get(key) is not None:
            ck.at(key).text(doc[key], _ID if key == "name" else None)
    if "rules" not in doc and "zones" not in doc:
        ck.bad("a table needs rules, zones or both")
    return f"{doc.get('name')} v{version}"


# --- a set of tables, overrides, cross-checks ---------------------------------------------------


def _override(ck: _Check, raw: Any, placed: _Placed, lists: _Lists) -> _Placed | None:
    """The rule with one override applied; None if the override disables it."""
    if placed.rule.final:
        ck.bad(f"rule {placed.rule.id!r} is final ({placed.where}): no override may touch it")
        return placed
    if not ck.keys(raw, _OVERRIDE):
        return placed
    if raw.get("disable", False) is not False:
        if raw["disable"] is not True or len(raw) > 1:
            ck.at("disable").bad("expected disable: true, alone")
        return None
    parse: dict[str, Callable[[_Check, Any], Any]] = {
        "article": _Check.text,
        "message": _Check.text,
        "scope": _scope,
        "when": lambda c, v: _condition(c, v, lists),
        "outcome": _outcome,
    }
    changes: dict[str, Any] = {key: parse[key](ck.at(key), raw[key]) for key in parse if key in raw}
    if "outcome" in changes:
        changes["action"] = changes.pop("outcome")
    if None in changes.values():
        return placed
    try:
        rule = replace(placed.rule, **changes)
    except LeafError as exc:
        ck.at("message").bad(str(exc))
        return placed
    return _Placed(rule, ck.where(), ck.at("outcome").at("exempt").where())


def _cross_check(placed: list[_Placed], problems: list[str]) -> None:
    by_id: dict[str, _Placed] = {}
    for p in placed:
        if p.rule.id in by_id:
            also = by_id[p.rule.id].where
            problems.append(f"{p.where}: duplicate rule id {p.rule.id!r} (also {also})")
        by_id.setdefault(p.rule.id, p)
    for p in placed:
        for i, name in enumerate(p.rule.action.rules if isinstance(p.rule.action, Exempt) else ()):
            target, where = by_id.get(name), f"{p.exempt_at}[{i}]"
            if target is None:
                close = difflib.get_close_matches(name, list(by_id), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{where}: exempt names unknown rule {name!r}{hint}")
            elif target.rule.action is Plain.REFUSE:
                problems.append(f"{where}: {name!r} refuses, and refusals can never be waived")
            elif not isinstance(target.rule.action, Require) and not target.broken:
                problems.append(f"{where}: {name!r} is not a requirement; only those are waived")


def rules_from_documents(
    documents: Sequence[tuple[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_file: str = "overrides",
    overrides_key: str = "",
) -> RuleSet:
    """A :class:`RuleSet` from parsed tables ``(label, document)``, in order, and overrides.

    ``overrides`` maps a rule id to ``{disable: true}`` or to replacements for its
    ``article``, ``scope``, ``when``, ``outcome`` or ``message``; a mistake in one is reported
    as ``overrides_file: overrides_key.<id>.<key>: reason``. Rules marked ``final`` (the
    baseline's) take no overrides.
    """
    problems: list[str] = []
    lists: _Lists = {}
    heads: list[tuple[_Check, dict[Any, Any], str]] = []
    for label, doc in documents:
        ck = _Check(label, "", problems)
        if not isinstance(doc, dict):
            ck.bad(f"the top level must be a mapping, got {show_raw(doc)}")
            continue
        heads.append((ck, doc, _header(ck, doc)))
        if "lists" in doc:
            _lists(ck.at("lists"), doc["lists"], lists)
    placed: list[_Placed] = []
    mapping: dict[str, str] = {}
    names: dict[str, str] = {}
    for ck, doc, table in heads:
        if table in names:
            ck.at("name").bad(f"table {table!r} is also loaded from {names[table]}")
        names.setdefault(table, ck.label)
        scope = (_scope(ck.at("scope"), doc["scope"]) if "scope" in doc else None) or ALWAYS
        for c, raw in ck.at("rules").items(doc.get("rules"), empty=True):
            placed += filter(None, [_rule(c, raw, scope, lists, table)])
        for c, raw in ck.at("zones").items(doc.get("zones")):
            placed += _zone(c, raw, scope, table)
        if "mapping" in doc and (pairs := _mapping(ck.at("mapping"), doc["mapping"])):
            if mapping and pairs != mapping:
                ck.at("mapping").bad("disagrees with the mapping of another table")
            mapping = mapping or pairs
    ock = _Check(overrides_file, overrides_key, problems)
    for rid, raw in (overrides or {}).items():
        at = next((i for i, p in enumerate(placed) if p.rule.id == rid), None)
        if at is None:
            ock.at(rid).bad(f"no rule {rid!r} in the tables loaded ({', '.join(names)})")
        elif (changed := _override(ock.at(rid), raw, placed[at], lists)) is None:
            del placed[at]
        else:
            placed[at] = changed
    _cross_check(placed, problems)
    if problems:
        raise RuleTableError(problems)
    return RuleSet([p.rule for p in placed], list(names), mapping)

"""Rule tables: versioned YAML files, checked completely before a single rule runs.

Why so strict: a rule naming a fact that does not exist, or a misspelt evidence kind, would
otherwise show up as a transfer wrongly allowed or refused in production. So, like
``gateway.yaml``, tables are checked at load -- keys, facts, tests, values, evidence kinds,
lists, duplicate ids, exemptions naming unknown rules or refusals, overrides -- and every
mistake is reported at once in one :class:`RuleTableError`, a line each: ``file: key.path:
reason``. Each document is checked by the pydantic models of
:mod:`gateway.compliance.table_schema` (whose JSON Schema editors use:
``schemas/compliance-table.schema.json``); this module checks what spans documents and
builds the rules. The shipped tables (``tables/*.yaml``) are the worked examples::

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

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway import schema_common
from gateway.compliance.engine import (
    ALWAYS,
    AllOf,
    Condition,
    Exempt,
    Not,
    Plain,
    Require,
    Rule,
    RuleSet,
    leaf,
    show_raw,
)
from gateway.compliance.facts import CN_PI, EU_CLASSES
from gateway.compliance.table_schema import (
    Id,
    ListSpec,
    Outcome,
    OverrideSpec,
    RuleSpec,
    ScopeSpec,
    TableSpec,
    ZoneSpec,
)
from gateway.errors import ConfigError


class RuleTableError(ConfigError):
    """A rule table (or an override) is wrong; ``problems`` has one line per mistake."""


M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_ID: TypeAdapter[str] = TypeAdapter(Id)
_OUTCOME: TypeAdapter[Any] = TypeAdapter(Outcome)


@dataclass(frozen=True)
class _Placed:
    """A rule and where it came from, for messages about it."""

    rule: Rule
    where: str  # "file: rules[3]"
    exempt_at: str = ""  # "file: rules[3].outcome.exempt"
    broken: bool = False  # its outcome is wrong (reported): a stand-in for the cross-checks


def _lines(
    error: ValidationError, label: str, doc: Any, root: type[BaseModel], at: str = ""
) -> list[str]:
    return schema_common.problems(error, label, doc, root, at=at, show=show_raw)


def _valid(model: type[M], raw: Any, context: Mapping[str, Any]) -> M | None:
    """``raw`` as ``model``, or None if it is wrong (its mistakes are reported with its
    document's): pydantic gives a document's mistakes or its value, never both, and the rules
    that are right -- and stand-ins for those that are not -- still take part in the checks
    across documents."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError:
        return None


def _value(adapter: TypeAdapter[T], raw: Any) -> T | None:
    try:
        return adapter.validate_python(raw)
    except ValidationError:
        return None


def _items(raw: Any) -> list[tuple[int, Any]]:
    return list(enumerate(raw)) if isinstance(raw, list) else []


# --- the rules of one table -------------------------------------------------------------------


def _rule(
    label: str, i: int, raw: Any, scope: Condition, table: str, context: Any
) -> _Placed | None:
    """The rule, or a stand-in if it is wrong (so that the cross-checks still see its id)."""
    where = f"{label}: rules[{i}]"
    if spec := _valid(RuleSpec, raw, context):
        own = scope if spec.scope is None else spec.scope.condition()
        rule = Rule(spec.id, spec.article, spec.when, spec.outcome, own, spec.message, table)
        return _Placed(replace(rule, final=spec.final), where, f"{where}.outcome.exempt")
    rid = _value(_ID, raw.get("id")) if isinstance(raw, dict) else None
    if rid is None:
        return None
    action = _value(_OUTCOME, raw.get("outcome"))
    stand_in = Rule(
        rid, "", ALWAYS, action or Plain.FLAG, table=table, final=raw.get("final") is True
    )
    return _Placed(stand_in, where, f"{where}.outcome.exempt", action is None)


def _zone(label: str, i: int, spec: ZoneSpec, scope: Condition, table: str) -> list[_Placed]:
    """A free-trade-zone list as rules: a requirement per listed category, an exemption."""
    placed, listed, zone, at = [], [], spec.zone, f"{label}: zones[{i}]"
    for j, item in enumerate(spec.categories):
        listed.append(item.category)
        when = AllOf((leaf("zone", "is", zone), leaf("categories", "contains", item.category)))
        message = f"data category {item.category} is on the list of zone {zone}"
        rule = Rule(
            f"ftz-{zone}-{item.category}",
            spec.article,
            when,
            Require(tuple(item.requires)),
            scope,
            message,
            table,
        )
        placed.append(_Placed(rule, f"{at}.categories[{j}].category"))
    unlisted = AllOf((leaf("zone", "is", zone), Not(leaf("categories", "intersects", listed))))
    message = f"no data category on the list of zone {zone}"
    exempt = Exempt(tuple(spec.exempts))
    rule = Rule(f"ftz-{zone}-unlisted", spec.article, unlisted, exempt, scope, message, table)
    return [*placed, _Placed(rule, f"{at}.zone", f"{at}.exempts")]


def _mapping(label: str, raw: Any, problems: list[str]) -> dict[str, str]:
    """The ``cn_pi`` -> ``eu_class`` pairs that are right; a value mapped twice is a mistake."""
    pairs: dict[str, str] = {}
    for i, pair in _items(raw):
        cn, eu = (
            (pair.get("cn_pi"), pair.get("eu_class")) if isinstance(pair, dict) else (None, None)
        )
        if not isinstance(cn, str) or not isinstance(eu, str):
            continue
        if cn in pairs or eu in pairs.values():
            problems.append(
                f"{label}: mapping[{i}]: {cn} or {eu} is mapped twice; the mapping is one to one"
            )
        elif cn in CN_PI and eu in EU_CLASSES:
            pairs[cn] = eu
    return pairs


def _lists(
    tables: Sequence[tuple[str, dict[Any, Any]]], problems: list[str]
) -> dict[str, tuple[str, ...]]:
    """The lists of every table (for ``in_list``), the first definition of a name kept."""
    lists: dict[str, tuple[str, ...]] = {}
    for label, doc in tables:
        raw = doc.get("lists")
        for name, spec in raw.items() if isinstance(raw, dict) else ():
            if _value(_ID, name) is None or (valid := _valid(ListSpec, spec, {})) is None:
                continue
            if name in lists:
                problems.append(
                    f"{label}: lists.{name}: list {name!r} is defined by another table too"
                )
            else:
                lists[name] = tuple(valid.items)
    return lists


# --- a set of tables, overrides, cross-checks ---------------------------------------------------


def _override(placed: _Placed, spec: OverrideSpec, where: str) -> _Placed | None:
    """The rule with one override applied; None if the override disables it."""
    if spec.disable:
        return None
    return _Placed(replace(placed.rule, **spec.changes()), where, f"{where}.outcome.exempt")


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

    Each document's own mistakes come first, in the order of its keys (the schema's); then
    what spans documents: lists and names defined twice, mappings that disagree, overrides,
    duplicate rule ids and exemptions naming what they may not.
    """
    problems: list[str] = []
    tables: list[tuple[str, dict[Any, Any]]] = []
    for label, doc in documents:
        if isinstance(doc, dict):
            tables.append((label, doc))
        else:
            problems.append(f"{label}: the top level must be a mapping, got {show_raw(doc)}")
    across: list[str] = []
    context = {"lists": _lists(tables, across)}
    for label, doc in tables:
        try:
            TableSpec.model_validate(doc, context=context)
        except ValidationError as exc:
            problems += _lines(exc, label, doc, TableSpec)
    problems += across
    placed: list[_Placed] = []
    mapping: dict[str, str] = {}
    names: dict[str, str] = {}
    for label, doc in tables:
        table = f"{doc.get('name')} v{doc.get('version')}"
        if table in names:
            problems.append(f"{label}: name: table {table!r} is also loaded from {names[table]}")
        names.setdefault(table, label)
        scope_spec = _valid(ScopeSpec, doc.get("scope"), context)
        scope = ALWAYS if scope_spec is None else scope_spec.condition()
        for i, raw in _items(doc.get("rules")):
            placed += filter(None, [_rule(label, i, raw, scope, table, context)])
        for i, raw in _items(doc.get("zones")):
            if zone := _valid(ZoneSpec, raw, context):
                placed += _zone(label, i, zone, scope, table)
        if pairs := _mapping(label, doc.get("mapping"), problems):
            if mapping and pairs != mapping:
                problems.append(f"{label}: mapping: disagrees with the mapping of another table")
            mapping = mapping or pairs
    for rid, raw in (overrides or {}).items():
        at = next((i for i, p in enumerate(placed) if p.rule.id == rid), None)
        path = f"{overrides_key}.{rid}" if overrides_key else str(rid)
        if at is None:
            loaded = ", ".join(names)
            problems.append(
                f"{overrides_file}: {path}: no rule {rid!r} in the tables loaded ({loaded})"
            )
        elif placed[at].rule.final:
            why = f"rule {rid!r} is final ({placed[at].where}): no override may touch it"
            problems.append(f"{overrides_file}: {path}: {why}")
        else:
            try:
                spec = OverrideSpec.model_validate(raw, context=context)
            except ValidationError as exc:
                problems += _lines(exc, overrides_file, raw, OverrideSpec, path)
                continue
            if (changed := _override(placed[at], spec, f"{overrides_file}: {path}")) is None:
                del placed[at]
            else:
                placed[at] = changed
    _cross_check(placed, problems)
    if problems:
        raise RuleTableError(problems)
    return RuleSet([p.rule for p in placed], list(names), mapping)

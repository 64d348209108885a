"""The rule engine: conditions over the facts, rules, and one ``decide(facts)``.

Why it is this small: the law lives in the rule tables (``tables/*.yaml``), not here. This
module knows the facts a rule may test (``facts.FACTS``, the derived ones included), ten leaf
tests, three combinators (:class:`AllOf`, :class:`AnyOf`, :class:`Not`, in the style of
sigstore-python's verification policies) and five outcomes; it never names an article. A
reviewer checks the tables against the law, and this module against its tests, separately.

The decision rule is deliberately blunt: a transfer is allowed exactly when no applicable rule
refuses and every applicable requirement is met or waived by an applicable exemption.
Refusals cannot be waived. Every rule, applicable or not, leaves a :class:`TrailEntry`, so a
refusal -- and an allowance -- can be explained with the facts it was made on.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple, Protocol, cast

from gateway.compliance.facts import FACTS, Fact, FactValue, Kind, TransferFacts, show

# --- conditions -------------------------------------------------------------------------------


class Condition(Protocol):
    """A test over the facts; ``facts`` names what it reads (for the trail)."""

    @property
    def facts(self) -> tuple[str, ...]: ...

    def holds(self, facts: TransferFacts) -> bool: ...


class LeafError(ValueError):
    """A leaf test that cannot be built; ``key`` is the YAML key at fault."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


#: The leaf tests and the kinds of fact each applies to.
OPERATORS: Mapping[str, tuple[Kind, ...]] = {
    "is": (Kind.TEXT, Kind.CHOICE, Kind.COUNT, Kind.FLAG),
    "in": (Kind.TEXT, Kind.CHOICE, Kind.COUNT),
    "in_list": (Kind.TEXT, Kind.CHOICE),  # a named list of a table (``lists:``)
    "prefix": (Kind.TEXT,),
    "within": (Kind.TEXT,),  # a jurisdiction or its subdivisions: CN matches CN and CN-SH
    "at_least": (Kind.COUNT,),
    "below": (Kind.COUNT,),
    "contains": (Kind.TEXTS,),
    "intersects": (Kind.TEXTS,),
    "same_as": (Kind.TEXT, Kind.CHOICE, Kind.COUNT, Kind.FLAG, Kind.TEXTS),  # another fact
}
_ITEM = {Kind.TEXT: str, Kind.CHOICE: str, Kind.COUNT: int, Kind.FLAG: bool, Kind.TEXTS: str}
_ITEM_NAME = {str: "a string", int: "an integer", bool: "true or false"}
_LIST_OPERANDS = ("in", "within", "intersects")


@dataclass(frozen=True, slots=True)
class Leaf:
    """One test (``is``, ``at_least``, ...) of one fact; build it with :func:`leaf`."""

    fact: str
    op: str
    operand: object
    facts: tuple[str, ...]
    holds: Callable[[TransferFacts], bool] = field(repr=False, compare=False)


def _items(fact: Fact, op: str, raw: object) -> list[str | int | bool]:
    """The operand as a list of values of the fact's type; ``LeafError`` if it is not."""
    want = _ITEM[fact.kind]
    items = raw if op in _LIST_OPERANDS else [raw]
    if not isinstance(items, list | tuple) or not items:
        raise LeafError(op, f"expected a non-empty list, got {show_raw(raw)}")
    out: list[str | int | bool] = []
    for item in items:
        if not isinstance(item, want) or (want is int and isinstance(item, bool)):
            raise LeafError(op, f"{fact.name} takes {_ITEM_NAME[want]}, got {show_raw(item)}")
        if fact.choices and item not in fact.choices:
            known = ", ".join(fact.choices)
            raise LeafError(op, f"{item!r} is not a value of {fact.name} (known: {known})")
        out.append(cast(str | int | bool, item))
    return out


def show_raw(value: object) -> str:
    """A value from a table, with its YAML type when that is the surprise."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None or isinstance(value, list | dict):
        return {type(None): "nothing", list: "a list", dict: "a mapping"}[type(value)]
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _int(value: FactValue) -> int:
    return value if isinstance(value, int) else 0


def _strs(value: FactValue) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else ()


def leaf(
    fact_name: str, op: str, operand: object, lists: Mapping[str, Sequence[str]] | None = None
) -> Leaf:
    """The leaf ``{fact: fact_name, <op>: operand}``; ``LeafError`` says what is wrong."""
    fact = FACTS.get(fact_name)
    if fact is None:
        raise LeafError("fact", f"unknown fact {fact_name!r} (known: {', '.join(FACTS)})")
    if op not in OPERATORS:
        raise LeafError(op, f"unknown test {op!r} (known: {', '.join(OPERATORS)})")
    if fact.kind not in OPERATORS[op]:
        usable = ", ".join(t for t, kinds in OPERATORS.items() if fact.kind in kinds)
        what = f"{fact.name}, a {fact.kind} fact"
        raise LeafError(op, f"{op} does not apply to {what} (tests for it: {usable})")
    get = fact.get
    used: tuple[str, ...] = (fact_name,)
    check: Callable[[TransferFacts], bool]
    if op == "same_as":
        other = FACTS.get(operand) if isinstance(operand, str) else None
        if other is None or other.kind != fact.kind or other is fact:
            raise LeafError(op, f"expected another {fact.kind.value} fact, got {show_raw(operand)}")
        get_other, used = other.get, (fact_name, other.name)
        check = lambda f: get(f) == get_other(f)  # noqa: E731
    elif op == "in_list":
        known = lists or {}
        if not isinstance(operand, str) or operand not in known:
            names = ", ".join(known) or "none"
            raise LeafError(op, f"unknown list {show_raw(operand)} (known: {names})")
        listed = frozenset(known[operand])
        check = lambda f: get(f) in listed  # noqa: E731
    else:
        items = _items(fact, op, operand)
        first, members, texts = items[0], frozenset(items), tuple(str(i) for i in items)
        within = _within(texts)
        bound = first if isinstance(first, int) else 0
        operand = first if op not in _LIST_OPERANDS else tuple(items)
        check = {
            "is": lambda f: get(f) == first,
            "in": lambda f: get(f) in members,
            "prefix": lambda f: str(get(f) or "").startswith(texts[0]),
            "within": lambda f: within(get(f)),
            "at_least": lambda f: _int(get(f)) >= bound,
            "below": lambda f: _int(get(f)) < bound,
            "contains": lambda f: first in _strs(get(f)),
            "intersects": lambda f: not members.isdisjoint(_strs(get(f))),
        }[op]
    return Leaf(fact_name, op, operand, used, check)


def _within(codes: tuple[str, ...]) -> Callable[[FactValue], bool]:
    exact, prefixes = frozenset(codes), tuple(c + "-" for c in codes)
    return lambda v: isinstance(v, str) and (v in exact or v.startswith(prefixes))


def _union(conditions: Iterable[Condition]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for c in conditions for name in c.facts))


@dataclass(frozen=True, slots=True)
class AllOf:
    conditions: tuple[Condition, ...]

    @property
    def facts(self) -> tuple[str, ...]:
        return _union(self.conditions)

    def holds(self, facts: TransferFacts) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (hot path: no generator)
            if not condition.holds(facts):
                return False
        return True


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]

    @property
    def facts(self) -> tuple[str, ...]:
        return _union(self.conditions)

    def holds(self, facts: TransferFacts) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (hot path: no generator)
            if condition.holds(facts):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition

    @property
    def facts(self) -> tuple[str, ...]:
        return self.condition.facts

    def holds(self, facts: TransferFacts) -> bool:
        return not self.condition.holds(facts)


ALWAYS: Condition = AllOf(())


# --- outcomes, rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wanted:
    """One acceptable piece of evidence: its kind, and the fields it must fill (``with``)."""

    kind: str
    needs: tuple[str, ...] = ()  # of article, module, tia

    def __str__(self) -> str:
        return f"{self.kind} (with {', '.join(self.needs)})" if self.needs else self.kind


class Plain(StrEnum):
    """The outcomes that need nothing: ``flag`` only marks the decision (trail, flags)."""

    ALLOW = "allow"
    REFUSE = "refuse"
    FLAG = "flag"


@dataclass(frozen=True, slots=True)
class Require:
    any_of: tuple[Wanted, ...]  # any one suffices


@dataclass(frozen=True, slots=True)
class Exempt:
    rules: tuple[str, ...]  # ids of ``Require`` rules this waives while it applies


Action = Plain | Require | Exempt


def template_facts(message: str) -> tuple[str, ...]:
    """The facts a message template names (``{exporter}``); ``LeafError`` for anything else."""
    try:
        fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(message)]
    except ValueError as exc:  # "{" without "}"
        raise LeafError("message", f"not a template: {exc} (double a brace to write one)") from None
    for name, spec, conversion in fields:
        if name is not None and name not in FACTS:
            known = ", ".join(FACTS)
            raise LeafError("message", f"unknown fact {{{name}}} in the template (known: {known})")
        if spec or conversion:
            raise LeafError("message", f"{{{name}}}: name a fact, without format or conversion")
    return tuple(dict.fromkeys(name for name, _, _ in fields if name is not None))


@dataclass(frozen=True)
class Rule:
    """One rule; it applies when both its ``scope`` and its ``when`` hold."""

    id: str
    article: str
    when: Condition
    action: Action
    scope: Condition = ALWAYS
    message: str = ""  # a template over facts: "exporter {exporter} has sent ..."
    table: str = ""  # "name vN" of the table it came from
    final: bool = False  # a deployment may not override or disable it
    shown: tuple[str, ...] = field(init=False, repr=False, compare=False)  # in the message
    used: tuple[str, ...] = field(init=False, repr=False, compare=False)  # in scope and when

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown", template_facts(self.message))
        object.__setattr__(self, "used", _union((self.scope, self.when)))

    def applies(self, facts: TransferFacts) -> bool:
        return self.scope.holds(facts) and self.when.holds(facts)

    def render(self, facts: TransferFacts) -> str:
        return self.message.format_map({n: show(FACTS[n].get(facts)) for n in self.shown})


# --- decisions ---------------------------------------------------------------------------------


class Outcome(StrEnum):
    """What a rule did in one decision."""

    ALLOWED = "allowed"
    REFUSED = "refused"
    REQUIRED_MET = "required-met"
    REQUIRED_MISSING = "required-missing"
    WAIVED = "waived"
    EXEMPTING = "exempting"  # an exemption that applies (it waives the rules it names)
    FLAGGED = "flagged"
    NOT_APPLICABLE = "not-applicable"


class TrailEntry(NamedTuple):  # a NamedTuple: a decision makes one per rule, cheaply
    rule: str
    article: str
    outcome: Outcome
    facts: tuple[tuple[str, FactValue], ...]  # those its scope and condition read
    detail: str = ""  # its message; what met it, waived it or is missing
    needs: tuple[str, ...] = ()  # with REQUIRED_MISSING: the evidence that would meet it
    table: str = ""

    def as_dict(self) -> dict[str, object]:
        """For JSON log lines."""
        return {
            "rule": self.rule,
            "article": self.article,
            "outcome": self.outcome.value,
            "facts": {name: show(value) for name, value in self.facts},
            "detail": self.detail,
            "needs": list(self.needs),
            "table": self.table,
        }

    def __str__(self) -> str:
        facts = " ".join(f"{n}={show(v)}" for n, v in self.facts)
        text = f"{self.outcome.value:<16} {self.rule} [{self.article}]"
        return text + (f" {facts}" if facts else "") + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Decision:
    """``allow`` and ``reasons`` as ``gateway.policy.Decision``, and the rule trail."""

    allow: bool
    reasons: tuple[str, ...] = ()  # "rule: article: message: needs ..." per refusal
    trail: tuple[TrailEntry, ...] = ()  # one entry per rule, in table order
    flags: tuple[str, ...] = ()  # "rule: article: message" per applicable flag rule

    @property
    def refused_by(self) -> tuple[TrailEntry, ...]:
        """The entries that make this a refusal (refused, or required and missing)."""
        bad = (Outcome.REFUSED, Outcome.REQUIRED_MISSING)
        return tuple(e for e in self.trail if e.outcome in bad)

    def explain(self, everything: bool = False) -> str:
        """The decision and its trail, a rule a line (``everything``: not-applicable too)."""
        lines = ["allowed" if self.allow else "refused", *(f"  {r}" for r in self.reasons)]
        lines += [f"  flag: {flag}" for flag in self.flags]
        shown = [e for e in self.trail if everything or e.outcome is not Outcome.NOT_APPLICABLE]
        return "\n".join([*lines, "trail:", *(f"  {e}" for e in shown)])


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meet(need: Require, facts: TransferFacts) -> tuple[str, list[str]]:
    """What met the requirement ("" if nothing did), and why the near misses did not."""
    misses: list[str] = []
    for want in need.any_of:
        for e in facts.evidence:
            if e.kind != want.kind:
                continue
            lacking = [name for name in want.needs if not getattr(e, name)]
            if e.expires is not None and e.expires <= facts.now:
                misses.append(f"{e.kind} {e.reference} expired {_utc(e.expires)}")
            elif lacking:
                misses.append(f"{e.kind} {e.reference} lacks {', '.join(lacking)}")
            else:
                return f"{e.kind} {e.reference}", misses
    return "", misses


class RuleSet:
    """A ``Policy``: the rules of one or more tables, in order; see :meth:`decide`."""

    def __init__(
        self, rules: Sequence[Rule], tables: Sequence[str] = (), mapping: Mapping[str, str] = {}
    ) -> None:
        by_id = {r.id: r for r in rules}
        if len(by_id) != len(rules):
            raise ValueError("duplicate rule ids")
        for rule in rules:
            for name in rule.action.rules if isinstance(rule.action, Exempt) else ():
                if name in by_id and not isinstance(by_id[name].action, Require):
                    raise ValueError(f"{rule.id} exempts {name!r}, which is not a requirement")
        self.rules = tuple(rules)
        self._used = _union(rule.scope for rule in rules) + _union(rule.when for rule in rules)
        self.tables = tuple(tables)  # "name vN" of each table, in the order given
        self.mapping = dict(mapping)  # cn_pi -> eu_class, one to one

    def eu_class_of(self, cn_pi: str) -> str | None:
        return self.mapping.get(cn_pi)

    def cn_pi_of(self, eu_class: str) -> str | None:
        return next((cn for cn, eu in self.mapping.items() if eu == eu_class), None)

    def decide(self, facts: TransferFacts) -> Decision:
        scopes: dict[int, bool] = {}  # a table's rules share its scope: test it once
        on = []
        for rule in self.rules:
            if (in_scope := scopes.get(id(rule.scope))) is None:
                in_scope = scopes[id(rule.scope)] = rule.scope.holds(facts)
            on.append(in_scope and rule.when.holds(facts))
        waived: dict[str, Rule] = {}
        for rule, applies in zip(self.rules, on, strict=True):
            for name in rule.action.rules if applies and isinstance(rule.action, Exempt) else ():
                waived.setdefault(name, rule)
        values = {name: FACTS[name].get(facts) for name in self._used}
        trail, reasons, flags = [], [], []
        for rule, applies in zip(self.rules, on, strict=True):
            action, detail, needs = rule.action, "", cast(tuple[str, ...], ())
            if not applies:
                outcome = Outcome.NOT_APPLICABLE
            elif isinstance(action, Exempt):
                outcome, detail = Outcome.EXEMPTING, f"waives {', '.join(action.rules)}"
            elif isinstance(action, Require) and rule.id in waived:
                by = waived[rule.id]
                outcome, detail = Outcome.WAIVED, f"waived by {by.id} ({by.article})"
            elif isinstance(action, Require):
                met, misses = _meet(action, facts)
                if met:
                    outcome, detail = Outcome.REQUIRED_MET, f"met by {met}"
                else:
                    outcome, needs = Outcome.REQUIRED_MISSING, tuple(map(str, action.any_of))
                    detail = ": ".join(filter(None, (rule.render(facts), "needs ")))
                    detail += " or ".join(needs) + "".join(f"; {miss}" for miss in misses)
                    reasons.append(f"{rule.id}: {rule.article}: {detail}")
            else:
                outcome, detail = _PLAIN[action], rule.render(facts)
                if outcome is Outcome.REFUSED:
                    reasons.append(f"{rule.id}: {rule.article}: {detail or 'refused'}")
                elif outcome is Outcome.FLAGGED:
                    flags.append(f"{rule.id}: {rule.article}: {detail}")
            used = tuple([(name, values[name]) for name in rule.used])
            trail.append(
                TrailEntry(rule.id, rule.article, outcome, used, detail, needs, rule.table)
            )
        return Decision(not reasons, tuple(reasons), tuple(trail), tuple(flags))


_PLAIN = {Plain.ALLOW: Outcome.ALLOWED, Plain.REFUSE: Outcome.REFUSED, Plain.FLAG: Outcome.FLAGGED}

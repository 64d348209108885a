"""The schema of a rule table: pydantic models that check one parsed table (or override).

Why pydantic, as for ``gateway.yaml`` (:mod:`gateway.config_schema`): the shape of a table --
keys, required or not, lists, unknown keys -- is declared once, here, and the same models give
the JSON Schema editors use (``schemas/compliance-table.schema.json``). What is the engine's --
facts, tests, evidence kinds, message templates -- is a check on a field raising
``ValueError(reason)``; a condition, a small language of its own, is checked by
:func:`_condition`, which reports each of its mistakes where it is. The errors reach the user
as ``file: key.path: reason`` lines through :func:`gateway.schema_common.problems`, with the
value shown (:func:`~gateway.compliance.engine.show_raw`: a table holds no secrets).

What a single document cannot know -- duplicate rule ids, exemptions naming rules of another
table, lists and mappings across tables, overrides of rules -- is checked by
:mod:`gateway.compliance.table` on what these models give.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)

from gateway.compliance.engine import (
    ALWAYS,
    OPERATORS,
    Action,
    AllOf,
    AnyOf,
    Condition,
    Exempt,
    LeafError,
    Not,
    Plain,
    Require,
    Wanted,
    leaf,
    show_raw,
    template_facts,
)
from gateway.compliance.facts import CN_PI, EU_CLASSES, EVIDENCE_KINDS, FACTS
from gateway.schema_common import Check, KeyedValueError, Loc, also, fail

TABLE_FORMAT = "xbgw-rules"
VERSIONS = (1,)
EVIDENCE_FIELDS = ("article", "module", "tia")
ID = re.compile(r"[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?")
_ID_WORDS = "a-z, 0-9, '-', '.'; 1-64 long"
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
_JURISDICTION_WORDS = "a code like CN, CN-SH or EU-DE"
_FIELD_WORDS = f"one of {', '.join(EVIDENCE_FIELDS)}"
_OUTCOMES = "allow, refuse, flag, {require: [...]} or {exempt: [...]}"

#: What a validation is given: the lists of every table loaded, for ``in_list``.
Lists = Mapping[str, Sequence[str]]


# --- field checks -----------------------------------------------------------------------------


def _text(value: object) -> str:
    if isinstance(value, datetime.date):  # YAML reads 2025-06-30 as a date
        value = value.isoformat()
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {show_raw(value)}")
    return value


def _form(pattern: re.Pattern[str], words: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _text(value)
        if not pattern.fullmatch(text):
            raise ValueError(f"{text!r} is not valid here (expected {words})")
        return text

    return check


def _string(**json: Any) -> tuple[tuple[str, Any], ...]:
    return tuple({"type": "string", "minLength": 1, **json}.items())


def _non_empty_list(value: object) -> object:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list, got {show_raw(value)}")
    return value


def _non_empty_mapping(what: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of {what}, got {show_raw(value)}")
        return value

    return check


def _known(what: str, known: Sequence[str]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in known:
            raise ValueError(f"{show_raw(value)} is not a {what} (known: {', '.join(known)})")
        return value

    return check


def _evidence_kind(value: object) -> str:
    if not isinstance(value, str) or value not in EVIDENCE_KINDS:
        known = ", ".join(EVIDENCE_KINDS)
        raise ValueError(f"unknown evidence kind {show_raw(value)} (known: {known})")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show_raw(value)}")
    return value


def _template(value: object) -> str:
    text = _text(value)
    try:
        template_facts(text)
    except LeafError as exc:
        raise ValueError(str(exc)) from None
    return text


Text = Annotated[str, Check(_text, "any", _string())]
Id = Annotated[str, Check(_form(ID, _ID_WORDS), "any", _string(pattern=f"^{ID.pattern}$"))]
Jurisdiction = Annotated[
    str,
    Check(
        _form(_JURISDICTION, _JURISDICTION_WORDS),
        "any",
        _string(pattern=f"^{_JURISDICTION.pattern}$"),
    ),
]
EvidenceField = Annotated[
    str, Check(_form(re.compile("|".join(EVIDENCE_FIELDS)), _FIELD_WORDS), "any", _string())
]
EvidenceKind = Annotated[str, Check(_evidence_kind, "any", (("enum", list(EVIDENCE_KINDS)),))]
Flag = Annotated[bool, Check(_flag, "any", (("type", "boolean"),))]
Template = Annotated[
    str, Check(_template, "any", _string(description="a template over facts: {exporter}"))
]
T = TypeVar("T")
NonEmpty = Annotated[list[T], BeforeValidator(_non_empty_list), Field(min_length=1)]


# --- mappings -----------------------------------------------------------------------------------


class Strict(BaseModel):
    """A mapping of a table: unknown keys are mistakes, no value is coerced, and a key written
    without a value is a mistake too -- "required key has no value", or "has no value" -- never
    its default: an empty ``when:`` must not make a rule apply to every transfer."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    #: What an unknown key is told instead of did-you-mean (None: did-you-mean).
    unknown_key: ClassVar[str | None] = None

    @model_validator(mode="wrap")
    @classmethod
    def _no_empty_values(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        fields = {f.alias or n: f.is_required() for n, f in cls.model_fields.items()}
        empty = [k for k, v in data.items() if v is None and fields.get(k) is False]
        given = {k: v for k, v in data.items() if v is not None or k not in fields}
        return also(handler, given, [((k,), "has no value") for k in empty], list(fields))


class WantedSpec(Strict):
    """``{kind: gdpr-scc, with: [module, tia]}``: evidence of a kind that fills those fields."""

    kind: EvidenceKind
    with_: NonEmpty[EvidenceField] = Field(alias="with")


def _wanted(value: object) -> Wanted:
    if isinstance(value, dict):
        spec = WantedSpec.model_validate(value)
        return Wanted(spec.kind, tuple(spec.with_))
    return Wanted(_evidence_kind(value))


_WANTED_JSON = [{"type": "string", "enum": list(EVIDENCE_KINDS)}, {"x-ref": "WantedSpec"}]
WantedKind = Annotated[
    Wanted, Check(_wanted, "any", (("anyOf", _WANTED_JSON),), models=(WantedSpec,))
]


class RequireSpec(Strict):
    require: NonEmpty[WantedKind]


class ExemptSpec(Strict):
    exempt: NonEmpty[Id]


def _outcome(value: object) -> Action:
    if isinstance(value, str) and value in tuple(Plain):
        return Plain(value)
    if isinstance(value, dict) and list(value) == ["require"]:
        return Require(tuple(RequireSpec.model_validate(value).require))
    if isinstance(value, dict) and list(value) == ["exempt"]:
        return Exempt(tuple(ExemptSpec.model_validate(value).exempt))
    raise ValueError(f"expected {_OUTCOMES}; got {show_raw(value)}")


_OUTCOME_JSON = [
    {"type": "string", "enum": list(Plain)},
    {"x-ref": "RequireSpec"},
    {"x-ref": "ExemptSpec"},
]
Outcome = Annotated[
    Action, Check(_outcome, "any", (("anyOf", _OUTCOME_JSON),), models=(RequireSpec, ExemptSpec))
]


def _lists(info: ValidationInfo) -> Lists:
    lists = info.context.get("lists") if isinstance(info.context, dict) else None
    return lists if isinstance(lists, Mapping) else {}


def _condition(value: object, info: ValidationInfo) -> Condition:
    """``{all: [...]}``, ``{any: [...]}``, ``{not: ...}`` or ``{fact: NAME, TEST: VALUE}``;
    every mistake in it is reported where it is."""
    mistakes: list[tuple[Loc, str]] = []
    condition = _walk(value, (), _lists(info), mistakes)
    fail(mistakes, value)
    assert condition is not None  # no mistake: a condition
    return condition


def _walk(
    value: object, at: Loc, lists: Lists, mistakes: list[tuple[Loc, str]]
) -> Condition | None:
    if not isinstance(value, dict) or not value:
        mistakes.append(
            (at, f"expected a condition (all, any, not or fact), got {show_raw(value)}")
        )
        return None
    for combinator in ("all", "any", "not"):
        if combinator not in value:
            continue
        if len(value) != 1:
            others = ", ".join(str(k) for k in value if k != combinator)
            mistakes.append(
                (at, f"{combinator} stands alone in its mapping (also given: {others})")
            )
            return None
        inner = value[combinator]
        if combinator == "not":
            condition = _walk(inner, (*at, "not"), lists, mistakes)
            return None if condition is None else Not(condition)
        if not isinstance(inner, list) or not inner:
            mistakes.append(
                ((*at, combinator), f"expected a non-empty list, got {show_raw(inner)}")
            )
            return None
        parts = [_walk(v, (*at, combinator, i), lists, mistakes) for i, v in enumerate(inner)]
        done = tuple(p for p in parts if p is not None)
        if len(done) != len(parts):
            return None
        return AllOf(done) if combinator == "all" else AnyOf(done)
    tests = [str(key) for key in value if key != "fact"]
    if "fact" not in value:
        mistakes.append((at, f"expected one of all, any, not or fact; got {', '.join(tests)}"))
        return None
    if not tests or (len(tests) > 1 and set(tests) != {"at_least", "below"}):
        reason = f"a leaf has one test (at_least and below may go together); got {len(tests)}"
        mistakes.append((at, reason))
        return None
    leaves: list[Condition] = []
    for op in tests:
        try:
            leaves.append(leaf(str(value["fact"]), op, value[op], lists))
        except LeafError as exc:
            mistakes.append(((*at, exc.key), str(exc)))
            if exc.key == "fact":
                return None
    if len(leaves) != len(tests):
        return None
    return leaves[0] if len(leaves) == 1 else AllOf(tuple(leaves))


_FACT = {"type": "string", "enum": list(FACTS)}
_CONDITION_JSON: dict[str, Any] = {
    "description": "{all: [...]}, {any: [...]}, {not: ...} or {fact: NAME, TEST: VALUE}",
    "type": "object",
    "oneOf": [
        *(
            {
                "properties": {
                    name: {"type": "array", "minItems": 1, "items": {"x-ref": "Condition"}}
                },
                "required": [name],
                "additionalProperties": False,
            }
            for name in ("all", "any")
        ),
        {
            "properties": {"not": {"x-ref": "Condition"}},
            "required": ["not"],
            "additionalProperties": False,
        },
        {
            "properties": {"fact": _FACT} | {op: {} for op in OPERATORS},
            "required": ["fact"],
            "minProperties": 2,
            "additionalProperties": False,
        },
    ],
}
When = Annotated[Condition, Check(_condition, "any", (("x-ref", "Condition"),), info=True)]


def _direction(value: object) -> tuple[str, ...]:
    try:
        leaf("direction", "in", value if isinstance(value, list) else [value])
    except LeafError as exc:
        raise ValueError(str(exc)) from None
    return tuple(map(str, value if isinstance(value, list) else [value]))


_DIRECTIONS = {"enum": ["egress", "ingress"]}
Codes = NonEmpty[Jurisdiction]


class ScopeSpec(Strict):
    """``{from, to, not_to, direction}``: the transfers a rule (or every rule of a table)
    applies to, by the jurisdictions of the two gateways and the direction."""

    from_: Codes | None = Field(None, alias="from")
    to: Codes | None = None
    not_to: Codes | None = None
    direction: (
        Annotated[
            tuple[str, ...],
            Check(
                _direction,
                "any",
                (("anyOf", [_DIRECTIONS, {"type": "array", "items": _DIRECTIONS}]),),
            ),
        ]
        | None
    ) = None

    def condition(self) -> Condition:
        parts: list[Condition] = []
        for codes, fact in ((self.from_, "sender"), (self.to, "receiver")):
            if codes:
                parts.append(leaf(f"{fact}_jurisdiction", "within", codes))
        if self.not_to:
            parts.append(Not(leaf("receiver_jurisdiction", "within", self.not_to)))
        if self.direction:
            parts.append(leaf("direction", "in", list(self.direction)))
        return AllOf(tuple(parts))


class RuleSpec(Strict):
    """One rule of ``rules:``."""

    id: Id
    article: Text
    scope: ScopeSpec | None = None
    when: When = ALWAYS
    outcome: Outcome
    message: Template = ""
    final: Flag = False
    note: Text | None = None


class CategorySpec(Strict):
    category: Id
    requires: NonEmpty[WantedKind]
    note: Text | None = None


class ZoneSpec(Strict):
    """A free-trade-zone list (CAC 2024 Provisions Art. 6) of ``zones:``."""

    zone: Id
    article: Text
    note: Text | None = None
    exempts: NonEmpty[Text]
    categories: NonEmpty[CategorySpec]


def _items(value: object) -> object:
    """A list's items: a list of codes, or a mapping of codes to what they name."""
    return list(value) if isinstance(value, dict) else value


class ListSpec(Strict):
    """A named list of ``lists:``, for the ``in_list`` test."""

    as_of: Text | None = None
    source: Text | None = None
    note: Text | None = None
    items: Annotated[
        list[Text],
        BeforeValidator(_non_empty_list),
        BeforeValidator(_items),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    {"type": "object", "minProperties": 1, "description": "code: what it is"},
                ]
            }
        ),
    ]


class PairSpec(Strict):
    cn_pi: Annotated[str, Check(_known("cn_pi", CN_PI), "any", (("enum", list(CN_PI)),))]
    eu_class: Annotated[
        str, Check(_known("eu_class", EU_CLASSES), "any", (("enum", list(EU_CLASSES)),))
    ]


def _format(value: object) -> str:
    if value != TABLE_FORMAT:
        raise ValueError(f"expected {TABLE_FORMAT!r}: this is not an xbgw rule table")
    return TABLE_FORMAT


def _version(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value not in VERSIONS:
        supported = ", ".join(map(str, VERSIONS))
        raise ValueError(f"version {value!r} is not supported (supported: {supported})")
    return value


class TableSpec(Strict):
    """A whole rule table (``tables/*.yaml`` are the worked examples)."""

    model_config = ConfigDict(
        title="xbgw rule table",
        json_schema_extra={"anyOf": [{"required": ["rules"]}, {"required": ["zones"]}]},
    )

    table: Annotated[str, Check(_format, "any", (("const", TABLE_FORMAT),))]
    version: Annotated[int, Check(_version, "any", (("enum", list(VERSIONS)),))]
    name: Id
    description: Text
    scope: ScopeSpec | None = None
    mapping: NonEmpty[PairSpec] | None = None
    lists: (
        Annotated[dict[Id, ListSpec], BeforeValidator(_non_empty_mapping("list names"))] | None
    ) = None
    rules: list[RuleSpec] | None = None
    zones: NonEmpty[ZoneSpec] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _rules_or_zones(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        needs = isinstance(data, dict) and "rules" not in data and "zones" not in data
        return also(handler, data, [((), "a table needs rules, zones or both")] if needs else [])


class OverrideSpec(Strict):
    """An override of one rule in ``compliance.overrides``: ``{disable: true}`` alone, or new
    values for some of the rule's keys."""

    disable: Flag = False
    article: Text | None = None
    scope: ScopeSpec | None = None
    when: When | None = None
    outcome: Outcome | None = None
    message: Template | None = None

    @model_validator(mode="before")
    @classmethod
    def _disable_alone(cls, data: Any) -> Any:
        disable = data.get("disable", False) if isinstance(data, dict) else False
        if disable is not False and (disable is not True or len(data) > 1):
            raise KeyedValueError("disable", "expected disable: true, alone")
        return data

    def changes(self) -> dict[str, Any]:
        """The rule's fields this override replaces."""
        changes = {key: getattr(self, key) for key in self.model_fields_set - {"disable"}}
        if "scope" in changes and self.scope is not None:
            changes["scope"] = self.scope.condition()
        if "outcome" in changes:
            changes["action"] = changes.pop("outcome")
        return changes


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rule table (what ``schemas/compliance-table.schema.json`` holds).

    What a check validates by hand (a condition) or with a model pydantic does not see (a
    ``{kind, with}`` requirement) is marked ``{"x-ref": NAME}`` in the models: pydantic
    refuses a ``$ref`` to a definition it did not make, so the references are put in here.
    ``null`` is taken out of every ``anyOf``: a key written without a value is a mistake."""
    schema = TableSpec.model_json_schema()
    schema.setdefault("$defs", {})["Condition"] = _CONDITION_JSON
    for model in (WantedSpec, RequireSpec, ExemptSpec):
        schema["$defs"][model.__name__] = model.model_json_schema()
    refs: dict[str, Any] = _refs(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema"} | refs


def _refs(node: Any) -> Any:
    if isinstance(node, list):
        return [_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "x-ref" in node:
        return {"$ref": f"#/$defs/{node['x-ref']}"}
    out = {key: _refs(value) for key, value in node.items() if (key, value) != ("default", None)}
    if "anyOf" in out:
        options = [option for option in out.pop("anyOf") if option != {"type": "null"}]
        out |= options[0] if len(options) == 1 else {"anyOf": options}
    return out


def schema_text() -> str:
    """The published schema file's text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"

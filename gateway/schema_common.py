"""What ``gateway.yaml`` and the rule tables share: pydantic models that never speak to the user.

Why one module: both files are YAML checked by pydantic models (:mod:`gateway.config_schema`,
:mod:`gateway.compliance.table_schema`), and both must read the same to the person who fixes
them -- every mistake at once, one ``file: key.path: reason`` line each (``partners[0].ca``,
``rules[3].when.all[1].fact``), did-you-mean for an unknown key, required keys "missing" or
"with no value". Pydantic's own wording (``Input should be ...``) never shows: :func:`problems`
turns its errors into these lines. A check on a field raises ``ValueError(reason)`` in our
words, or a :class:`pydantic.ValidationError` (see :func:`fail`) for several mistakes below it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, core_schema

Loc = tuple[int | str, ...]


class KeyedValueError(ValueError):
    """A section-level check's reason, reported at ``key`` below the section."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


class PlacedLinesError(ValueError):
    """Lines that already carry their file and key (a rule table's, say): reported as they are."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list"}
_TYPE_NAMES |= {dict: "a mapping", type(None): "nothing"}


def kind(value: object) -> str:
    """The type of a value, in words, without the value (it might be a secret)."""
    if isinstance(value, bool):
        return "a boolean (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


# --- a field check: a base schema, a check raising ValueError(reason), the JSON Schema ---------

_BASES = {
    "str": core_schema.str_schema(strict=True),
    "int": core_schema.int_schema(strict=True),
    "any": core_schema.any_schema(),
}


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class Check:
    """Annotated metadata: validate with ``base``, then ``check`` (which may convert, and is
    given the :class:`ValidationInfo` when ``info``); ``json`` is added to the JSON Schema.
    The annotated type is what ``check`` returns; ``base`` says what the YAML must hold.
    ``models``: the models ``check`` validates parts of its value with, for did-you-mean on
    their unknown keys."""

    check: Callable[..., Any]
    base: Literal["str", "int", "any"] = "str"
    json: tuple[tuple[str, Any], ...] = ()
    info: bool = False
    models: tuple[type[BaseModel], ...] = ()

    def __get_pydantic_core_schema__(
        self, _source: Any, _handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        if self.info:
            return core_schema.with_info_after_validator_function(self.check, _BASES[self.base])
        return core_schema.no_info_after_validator_function(self.check, _BASES[self.base])

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), **dict(self.json)}


class Strict(BaseModel):
    """A mapping of a file: unknown keys are mistakes, and no value is coerced into another
    type (no ``"5"`` for an integer, no ``yes`` for a string). (``config_schema.Section`` is
    the same, declared there: ruff sees pydantic models only by their direct base.)"""

    model_config = ConfigDict(extra="forbid", strict=True)
    #: What an unknown key is told instead of did-you-mean (None: did-you-mean).
    unknown_key: ClassVar[str | None] = None


def fail(mistakes: Iterable[tuple[Loc, str]], value: object) -> None:
    """Raises the ``(key path below the value, reason)`` mistakes as one error, when there
    are any: a check that finds several at once reports each where it is."""
    if details := _details(mistakes, value):
        raise ValidationError.from_exception_data("mistakes", details)


def also(
    handler: ValidatorFunctionWrapHandler,
    data: Any,
    mistakes: list[tuple[Loc, str]],
    keys: Sequence[str] = (),
) -> Any:
    """``handler(data)`` in a wrap validator, with ``mistakes`` found beside pydantic's own
    checks: both reported at once, in the order of ``keys`` (a model's, as pydantic reports
    them; the mapping itself first, unknown keys last)."""
    try:
        value = handler(data)
    except ValidationError as exc:
        theirs = [
            InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"], ctx=e["ctx"])
            if "ctx" in e
            else InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"])
            for e in exc.errors()
        ]
        rank = {key: i for i, key in enumerate(keys)}

        def place(detail: InitErrorDetails) -> int:
            loc = detail["loc"]
            return rank.get(str(loc[0]), len(rank)) if loc else -1

        everything = sorted(_details(mistakes, data) + theirs, key=place)
        raise ValidationError.from_exception_data(exc.title, everything) from None
    fail(mistakes, data)
    return value


def _details(mistakes: Iterable[tuple[Loc, str]], value: object) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(type="value_error", loc=loc, input=value, ctx={"error": ValueError(why)})
        for loc, why in mistakes
    ]


# --- pydantic's errors, in the user's words ----------------------------------------------------


def problems(
    error: ValidationError,
    label: str,
    doc: Any,
    root: type[BaseModel],
    *,
    at: str = "",
    show: Callable[[object], str] = kind,
) -> list[str]:
    """One ``label: key.path: reason`` line per mistake of ``doc`` against ``root``; ``at``
    is the key path of ``doc`` in its file; ``show`` says what a wrong value was."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc, cause = item["loc"], item.get("ctx", {}).get("error")
        if isinstance(cause, PlacedLinesError):
            lines.extend(cause.lines)
            continue
        path = key_path(loc)
        if isinstance(cause, KeyedValueError):
            path = f"{path}.{cause.key}" if path else cause.key
        path = ".".join(filter(None, (at, path)))
        reason = _reason(item["type"], loc, item["input"], cause, doc, root, show)
        lines.append(f"{label}: {path}: {reason}" if path else f"{label}: {reason}")
    return lines


def key_path(loc: Sequence[int | str]) -> str:
    """``("partners", 0, "ca")`` as ``partners[0].ca`` (a mapping's key checked is at itself)."""
    out = ""
    for step in loc:
        if step != "[key]":
            out += f"[{step}]" if isinstance(step, int) else f".{step}" if out else step
    return out


def _reason(
    kind_: str,
    loc: Loc,
    value: Any,
    cause: Any,
    doc: Any,
    root: type[BaseModel],
    show: Callable[[object], str],
) -> str:
    parent = _raw_at(doc, loc[:-1])
    present = bool(loc) and isinstance(parent, dict) and loc[-1] in parent
    if kind_ == "missing":
        return f"required key {'has no value' if present else 'is missing'}"
    if isinstance(cause, ValueError):
        return str(cause)
    if kind_ == "extra_forbidden":
        return _unknown_key(root, loc)
    if kind_ == "literal_error":
        return _choice(root, loc, value, show)
    expected = {
        "int_type": "an integer",
        "string_type": "a string",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "dict_type": "a mapping",
        "list_type": "a list",
        "bool_type": "true or false",
    }.get(kind_)
    return f"expected {expected}, got {show(value)}" if expected else f"not accepted ({kind_})"


def _raw_at(doc: Any, loc: Loc) -> Any:
    for step in loc:
        try:
            doc = doc[step]
        except (KeyError, IndexError, TypeError):  # TypeError: a list by a key, or a scalar
            return None
    return doc


def _section_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model of the mapping at ``loc`` (list indices step into the items' model; where a
    check validates with one of several models, the one that has the next key)."""
    models = [root]
    for step in loc:
        if isinstance(step, int) or step == "[key]":
            continue
        fields = [f for m in models for n, f in m.model_fields.items() if (f.alias or n) == step]
        models = [
            m for f in fields[:1] for m in (*_models_in(f.annotation), *_models_in(f.metadata))
        ]
    return models[0] if models else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation (or its :class:`Check`, or field metadata) validates with."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, Check):
        return list(annotation.models)
    parts = annotation if isinstance(annotation, list) else get_args(annotation)
    return [model for part in parts for model in _models_in(part)]


def keys_of(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def unknown_key(key: object, allowed: Sequence[str]) -> str:
    """``unknown key (did you mean 'x'?)``, or the keys allowed when none is close."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key ({hint})"


def _unknown_key(root: type[BaseModel], loc: Loc) -> str:
    model = _section_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    told: str | None = getattr(model, "unknown_key", None)  # Strict.unknown_key, or the like
    return told or unknown_key(loc[-1], keys_of(model))


def _choice(root: type[BaseModel], loc: Loc, value: Any, show: Callable[[object], str]) -> str:
    if not isinstance(value, str):
        return f"expected a string, got {show(value)}"
    if not value.strip():
        return "must not be empty"
    model = _section_at(root, loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model else None
    options = [str(o) for o in get_args(field.annotation)] if field else []
    return f"expected one of {', '.join(options)}; got {value!r}"

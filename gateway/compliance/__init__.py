"""Cross-border compliance as data: rule tables, the engine that applies them, the trail.

Why a package of its own: which transfers the law allows changes more often than the
gateway, and differs per deployment (a free-trade zone's list, a new adequacy decision). So
the rules are versioned YAML tables (``tables/*.yaml``: ``baseline``, ``prc-export``,
``gdpr-chapter-v``, ``ftz-example``) checked completely at load, and the code only knows
facts (:mod:`gateway.compliance.facts`) and how to combine tests of them
(:mod:`gateway.compliance.engine`).

Wiring::

    rules = load_tables(["baseline", "prc-export", "/etc/xbgw/lingang-ftz.yaml"],
                        {"cn-pi-below-100k": {"disable": True}},
                        overrides_file="gateway.yaml", overrides_key="compliance.overrides")
    decision = rules.decide(facts)        # a Decision: allow, reasons, trail, flags
    decision.reasons                      # ("cn-pi-1m: CAC 2024 Provisions Art. 7(2); ...",)
    decision.explain()                    # for ``xbgw policy explain``
    [e.as_dict() for e in decision.trail] # for the JSON log line

``load_tables`` raises :class:`RuleTableError` (a ``ConfigError``) with every mistake.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway import files
from gateway.compliance.engine import (
    OPERATORS,
    AllOf,
    AnyOf,
    Condition,
    Decision,
    Exempt,
    Leaf,
    LeafError,
    Not,
    Outcome,
    Plain,
    Require,
    Rule,
    RuleSet,
    TrailEntry,
    Wanted,
    leaf,
)
from gateway.compliance.facts import (
    EVIDENCE_KINDS,
    FACTS,
    Direction,
    Evidence,
    TransferFacts,
)
from gateway.compliance.table import RuleTableError, rules_from_documents

__all__ = [
    "EVIDENCE_KINDS",
    "FACTS",
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Condition",
    "Decision",
    "Direction",
    "Evidence",
    "Exempt",
    "Leaf",
    "LeafError",
    "Not",
    "Outcome",
    "Plain",
    "Require",
    "Rule",
    "RuleSet",
    "RuleTableError",
    "TrailEntry",
    "TransferFacts",
    "Wanted",
    "leaf",
    "load_tables",
    "rules_from_documents",
    "shipped_tables",
]


# --- loading tables ------------------------------------------------------------------------


def shipped_tables() -> tuple[str, ...]:
    """The names of the tables shipped in the package (``baseline``, ``prc-export``, ...)."""
    folder = resources.files("gateway.compliance") / "tables"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


class _StrictLoader(yaml.SafeLoader):
    """``safe_load``'s loader, except that a key given twice is a mistake, not "last wins"."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                line = key.start_mark.line + 1
                self.duplicates.append(f"line {line}: key {key.value!r} is given twice")
            seen.add(getattr(key, "value", None))
        return super().construct_mapping(node, deep)


def _read(table: str | Path, problems: list[str]) -> tuple[str, Any] | None:
    if isinstance(table, str) and "/" not in table and not table.endswith((".yaml", ".yml")):
        if table not in shipped_tables():
            problems.append(
                f"{table}: no such shipped table (shipped: {', '.join(shipped_tables())})"
            )
            return None
        label = f"gateway/compliance/tables/{table}.yaml"
        text = (resources.files("gateway.compliance") / "tables" / f"{table}.yaml").read_text(
            "utf-8"
        )
    else:
        label = str(table)
        try:  # bounded, regular files only: a FIFO must not hang a start or a reload
            text = files.read_bounded(Path(table), files.YAML_MAX).decode("utf-8")
        except files.FileError as exc:
            problems.append(f"{label}: cannot read the rule table: {exc.why}")
            return None
        except UnicodeDecodeError:
            problems.append(f"{label}: cannot read the rule table: not UTF-8 text")
            return None
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # refuses a control character already
        doc = loader.get_single_data()
        duplicates = loader.duplicates
    except (yaml.YAMLError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or _reader_problem(exc) or exc
        problems.append(f"{label}: {at}invalid YAML: {reason}")
        return None
    except RecursionError:
        problems.append(f"{label}: invalid YAML: nested too deeply")
        return None
    finally:
        if loader is not None:
            loader.dispose()
    problems.extend(f"{label}: {duplicate}" for duplicate in duplicates)
    return label, doc


def _reader_problem(exc: Exception) -> str | None:
    """PyYAML's refusal of a control character, without its "in <unicode string>" tail."""
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.character, int):
        return f"control character U+{exc.character:04X} at offset {exc.position}"
    return None


def load_tables(
    tables: Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_file: str = "overrides",
    overrides_key: str = "",
) -> RuleSet:
    """The rules of ``tables``, in order, with ``overrides`` applied: a ``Policy``.

    A table is a shipped name (``"baseline"``, ``"prc-export"``: :func:`shipped_tables`) or a
    path (a ``Path``, or a string with a ``/`` or ending in ``.yaml``). Exemptions may name
    rules of any table in the set. ``overrides``: see :func:`rules_from_documents`. Every
    mistake in every table and override is reported at once in a :class:`RuleTableError`.
    """
    problems: list[str] = []
    documents = [doc for table in tables if (doc := _read(table, problems))]
    try:
        rules = rules_from_documents(
            documents, overrides, overrides_file=overrides_file, overrides_key=overrides_key
        )
    except RuleTableError as exc:
        problems += exc.problems
    if problems:
        raise RuleTableError(problems)
    return rules

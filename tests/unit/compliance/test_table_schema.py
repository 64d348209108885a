"""The rule tables' JSON Schema: published, in sync with the models, named by the shipped
tables; and the models' errors reach the user in our words, never pydantic's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.compliance import RuleTableError, rules_from_documents, shipped_tables
from gateway.compliance.table_schema import TableSpec, schema_text

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_FILE = ROOT / "schemas" / "compliance-table.schema.json"
TABLES = ROOT / "gateway" / "compliance" / "tables"
SCHEMA_LINE = "# yaml-language-server: $schema=../../../schemas/compliance-table.schema.json\n"


def test_the_published_schema_is_what_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "schemas/compliance-table.schema.json is stale: run `.venv/bin/python -c 'from "
        'gateway.compliance.table_schema import schema_text; print(schema_text(), end="")\' '
        "> schemas/compliance-table.schema.json`"
    )


@pytest.mark.parametrize("name", shipped_tables())
def test_each_shipped_table_names_the_schema_and_uses_only_its_keys(name: str) -> None:
    path = TABLES / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith(SCHEMA_LINE)
    assert (TABLES / SCHEMA_LINE.split("=", 1)[1].strip()).resolve() == SCHEMA_FILE
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    doc = yaml.safe_load(text)
    assert set(doc) <= set(schema["properties"])
    assert set(schema["required"]) <= set(doc)
    rule_keys = set(schema["$defs"]["RuleSpec"]["properties"])
    for rule in doc.get("rules", []):
        assert set(rule) <= rule_keys, rule["id"]
    TableSpec.model_validate(doc, context={"lists": {"eu-adequacy": ("JP",)}})


def test_the_schema_refers_only_to_what_it_defines() -> None:
    text = SCHEMA_FILE.read_text(encoding="utf-8")
    defined = set(json.loads(text)["$defs"])
    assert defined >= {"Condition", "RuleSpec", "WantedSpec", "RequireSpec", "ExemptSpec"}
    assert set(re.findall(r'"#/\$defs/([A-Za-z]+)"', text)) == defined
    assert "x-ref" not in text and '"null"' not in text


PYDANTIC_WORDS = re.compile(
    r"Input should|type=|pydantic\.dev|Field required|Extra inputs|Value error"
)


def _mangle(node: Any, replacement: object) -> Any:
    if isinstance(node, dict):
        return {k: _mangle(v, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [_mangle(v, replacement) for v in node]
    return replacement


@pytest.mark.parametrize("replacement", [None, 0, -1, 1.5, True, "", "x", [], {}, [1], {"a": 1}])
def test_pydantic_never_speaks_to_the_user(replacement: object) -> None:
    docs = [
        (name, yaml.safe_load((TABLES / f"{name}.yaml").read_text("utf-8")))
        for name in shipped_tables()
    ]
    mangled = [(name, _mangle(doc, replacement)) for name, doc in docs]
    overrides = {"cn-core-data": _mangle({"when": {"all": [{"fact": "ciio"}]}}, replacement)}
    with pytest.raises(RuleTableError) as caught:
        rules_from_documents(
            mangled, overrides, overrides_file="gateway.yaml", overrides_key="compliance.overrides"
        )
    found = caught.value.problems
    assert len(found) >= 10, found
    for line in found:
        assert not PYDANTIC_WORDS.search(line), line
        assert re.match(
            r"(gateway\.yaml|[a-z-]+): ([a-z_]+(\[\d+\])?(\.[a-z0-9_-]+(\[\d+\])?)*: )?\S", line
        ), line

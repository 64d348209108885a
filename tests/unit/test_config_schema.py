"""gateway.config_schema: the published JSON Schema cannot drift, strict types stay strict,
and pydantic's own wording never reaches the operator."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config_schema
from gateway.config import DAY, load_config
from gateway.keys import Purpose
from tests.unit import test_config
from tests.unit.test_config import edit, full_config, problems, write

material, tree = test_config.material, test_config.tree  # the config tree fixtures

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "gateway.schema.json"
EXAMPLE = ROOT / "systemd" / "gateway.yaml.example"


def test_the_published_schema_is_what_the_models_generate() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == config_schema.schema_text(), (
        "schemas/gateway.schema.json is stale: run "
        "`.venv/bin/python -m gateway.config_schema > schemas/gateway.schema.json`"
    )


def test_the_example_config_names_the_schema_and_uses_only_its_keys() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "# yaml-language-server: $schema=../schemas/gateway.schema.json" in text
    assert (EXAMPLE.parent / "../schemas/gateway.schema.json").resolve() == SCHEMA_FILE
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))

    def keys_of(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return keys_of(schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
        for option in node.get("anyOf", []):
            if "$ref" in option or "properties" in option:
                return keys_of(option)
        if node.get("type") == "array" and "items" in node:
            return keys_of(node["items"])
        return dict(node.get("properties", {}))

    def check(value: Any, node: dict[str, Any], where: str) -> int:
        allowed, seen = keys_of(node), 0
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict) or not allowed:
                continue
            for key, sub in item.items():
                assert key in allowed, f"{where}.{key} is not in the schema"
                seen += 1 + check(sub, allowed[key], f"{where}.{key}")
        return seen

    assert check(yaml.safe_load(text), schema, "") > 20


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("limits.segment_size", "65536", "expected an integer, got a string"),
        ("limits.segment_size", 65536.0, "expected an integer, got a number"),
        ("limits.segment_size", True, "expected an integer, got a boolean"),
        ("partners.0.connections", "2", "expected an integer, got a string"),
        ("partners.0.connections", 17, "must be between 1 and 16, got 17"),
        ("hsm.token", 7, "expected a string, got an integer"),
        ("hsm.token", True, "expected a string, got a boolean"),
        ("gateway.description", ["x"], "expected a string, got a list"),
        ("log.level", 1, "expected a string, got an integer"),
        ("log.level", " ", "must not be empty"),
        ("retention.fetched", 1.5, "expected a duration (30d, 12h, 15m, 90s), got a number"),
        ("retention.fetched", "2w", "not a duration: '2w' (examples: 30d, 12h, 15m, 90s)"),
        ("keys.grace.signing", "-1d", "not a duration: '-1d' (examples: 30d, 12h, 15m, 90s)"),
        ("limits", [], "expected a mapping, got a list"),
        ("partners.0", None, "expected a mapping, got nothing"),
        ("issuers", "lingang-dpo/signing/1", "expected a list, got a string"),
    ],
)
def test_types_are_as_strict_as_before(tree: Path, key: str, value: object, expected: str) -> None:
    doc = full_config()
    edit(doc, key, value)
    write(tree, doc)
    shown = re.sub(r"\.(\d+)", r"[\1]", key)
    (found,) = problems()
    assert found.startswith(f"gateway.yaml: {shown}: {expected}"), found


def test_durations_and_purposes_load(tree: Path) -> None:
    doc = full_config()
    doc["keys"] = {"rotate_every": {"storage": 5}, "grace": {"signing": "2d"}}
    doc["partners"][0]["connections"] = 4
    write(tree, doc)
    config = load_config("gateway.yaml")
    assert config.keys.rotate_every[Purpose.STORAGE] == 5
    assert config.keys.rotate_every[Purpose.TRANSPORT] == 30 * DAY  # not named: the default
    assert config.keys.grace[Purpose.SIGNING] == 2 * DAY
    assert [p.connections for p in config.partners] == [4, 1]


PYDANTIC_WORDS = re.compile(
    r"Input should|type=|pydantic\.dev|Field required|Extra inputs|Value error"
)


def _mangle(node: Any, replacement: object) -> Any:
    """Every leaf replaced: as many wrong values as the document has keys, in one file."""
    if isinstance(node, dict):
        return {k: _mangle(v, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [_mangle(v, replacement) for v in node]
    return replacement


@pytest.mark.parametrize("replacement", [None, 0, -1, 1.5, True, "", "x", [], {}, [1], {"a": 1}])
def test_pydantic_never_speaks_to_the_operator(tree: Path, replacement: object) -> None:
    doc = _mangle(full_config(), replacement)
    doc["extraa"] = {"partners": 1}
    doc["compliance"] = _mangle(
        {"tables": ["x"], "overrides": {"a": {"b": 1}}, "zone": 1}, replacement
    )
    write(tree, doc)
    found = problems()
    assert len(found) >= 10, found
    for line in found:
        assert not PYDANTIC_WORDS.search(line), line
        assert re.match(r"gateway\.yaml: [a-z_]+(\[\d+\])?(\.[a-z_-]+(\[\d+\])?)*: \S", line), line
    assert "gateway.yaml: extraa: unknown key (did you mean 'partners'?)" not in found
    assert any(line.startswith("gateway.yaml: extraa: unknown key (") for line in found)

"""``state.database`` in gateway.yaml and ``xbgw db``: a PostgreSQL ledger named by URL with
its password read from a file (never from the YAML), migrated by ``xbgw db migrate``, shown
by ``xbgw db status``; the SQLite ledger stays the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import StorageError
from gateway.ledger import Ledger, open_ledger
from gateway.ledger_schema import SCHEMA_VERSION
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.unit.test_config import full_config, material, problems, tree, write  # noqa: F401


def _config(tree: Path) -> dict[str, object]:  # noqa: F811
    """The full test config with its state directory in the test's own tree."""
    doc = full_config()
    doc["state_dir"] = str(tree / "state")
    return doc


def _with_state(tree: Path, state: dict[str, object]) -> Path:  # noqa: F811
    doc = _config(tree)
    doc["state"] = state
    return write(tree, doc)


def test_the_sqlite_ledger_stays_the_default(tree: Path) -> None:  # noqa: F811
    config = load_config(write(tree, _config(tree)))
    assert config.state_dir == tree / "state"
    assert config.state.database is None
    ledger = open_ledger(config)
    try:
        assert ledger.store.dialect.name == "sqlite"
    finally:
        ledger.close()
    assert main(["db", "migrate", "-c", str(tree / "gateway.yaml")]) == 0


def test_db_migrate_then_a_node_opens_the_shared_ledger(
    tree: Path,  # noqa: F811
    postgres: Cluster,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tree / "db-password").write_text(PASSWORD + "\n")
    (tree / "db-password").chmod(0o600)
    url = postgres.empty_database("cli")
    path = _with_state(
        tree, {"database": url, "password": {"file": "db-password"}, "lease_seconds": 7}
    )
    config = load_config(path)
    with pytest.raises(StorageError, match="xbgw db migrate"):
        open_ledger(config)  # a node does not migrate a shared ledger
    assert main(["db", "migrate", "-c", str(path)]) == 0
    assert f"migrated from schema version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    ledger = open_ledger(config)
    try:
        assert isinstance(ledger, Ledger) and ledger.store.dialect.name == "postgresql"
        assert ledger.lease_seconds == 7  # state.lease_seconds: the node's leases live 7 s
        ledger.announce_node("node-1")
        assert main(["db", "status", "--json", "-c", str(path)]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["schema_version"] == SCHEMA_VERSION
        assert [(n["node"], n["live"]) for n in shown["nodes"]] == [("node-1", True)]
        assert PASSWORD not in json.dumps(shown)
    finally:
        ledger.close()


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"database": "postgresql://u:hunter2@db/x"}, "the URL holds a password"),
        ({"database": "postgresql://u@db/x?password=hunter2"}, "the URL holds a password"),
        ({"database": "mysql://u@db/x"}, "expected a postgresql://"),
        ({"password": {"env": "PGPASS"}}, "password is given but database is not"),
        (
            {"database": "postgresql://u@db/x", "lease_seconds": 2},
            "state.lease_seconds: must be between 3 and 600, got 2",
        ),
    ],
)
def test_a_password_in_the_yaml_is_refused_without_echo(
    tree: Path,  # noqa: F811
    state: dict[str, object],
    why: str,
) -> None:
    _with_state(tree, state)
    found = problems()
    assert any(why in line for line in found), found
    assert not any("hunter2" in line for line in found)

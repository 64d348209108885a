"""``xbgw db``: the ledger's database -- apply pending schema migrations, show its state.

Why a verb of its own: on PostgreSQL several nodes share the ledger, so no node migrates it
as it starts (a node refuses a schema other than its own, naming this verb); an operator
runs ``xbgw db migrate`` once, after the nodes that run an older xbgw are stopped -- it
refuses while one still reports an older schema. On the SQLite ledger it does what the
daemon does at start (bring the file up to date), for an operator who wants it done first;
it refuses while the daemon holds the state directory.
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.config import load_config
from gateway.ledger import open_database
from gateway.ledger_schema import NODE_LIVE, SCHEMA_VERSION, migrate, schema_version
from gateway.statelock import StateLock
from gateway.store import Database


def cmd_db_migrate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.state.database is not None:
        return _migrate(open_database(config))
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with StateLock(config.state_dir, "xbgw db migrate"):
        return _migrate(open_database(config))


def _migrate(database: Database) -> int:
    try:
        before, after = migrate(database)
    finally:
        database.close()
    if before == after:
        print(f"{database.where}: schema version {after}, nothing to migrate")
    else:
        print(f"{database.where}: migrated from schema version {before} to {after}")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    """Where the ledger is, its schema against this xbgw's, and (shared) the nodes."""
    config = load_config(args.config)
    database = open_database(config)
    try:
        found = schema_version(database)
        nodes: list[tuple[str, int, int]] = []
        if database.dialect.shared and found > 0:
            rows = database.all("SELECT node, schema_version, seen_at FROM nodes ORDER BY node")
            nodes = [(r[0], int(r[1]), int(r[2])) for r in rows]
    finally:
        database.close()
    now = int(time.time())
    if args.json:
        print(
            json.dumps(
                {
                    "database": database.where,
                    "dialect": database.dialect.name,
                    "schema_version": found,
                    "xbgw_schema_version": SCHEMA_VERSION,
                    "nodes": [
                        {
                            "node": n,
                            "schema_version": v,
                            "seen_at": at,
                            "live": now - at <= NODE_LIVE,
                        }
                        for n, v, at in nodes
                    ],
                },
                indent=2,
            )
        )
        return 0
    state = "current" if found == SCHEMA_VERSION else "run xbgw db migrate"
    if found > SCHEMA_VERSION:
        state = "newer than this xbgw"
    print(f"{database.where} ({database.dialect.name}): schema version {found} ({state})")
    for node, version, seen in nodes:
        live = "live" if now - seen <= NODE_LIVE else "gone"
        print(f"  node {node}: schema {version}, last seen {now - seen} s ago ({live})")
    return 0

"""Frankfurt of the demo pair made into two nodes of one gateway, for the tests and the bench.

What the nodes share and what each keeps is the README's "Several nodes", reduced to one
machine: one ledger (``state.database`` on a PostgreSQL database, its password read from a
file, never in the YAML); one spool (each node's ``<state_dir>/spool`` a symbolic link to one
directory: on one file system, atomic rename and fsync hold); the same SoftHSM token files,
certificate, partners and issuers. Each node keeps its partner port, local socket and state
directory (its lock, its ``partner.addr``). Node A is the pair's frankfurt; node B is made
from A's configuration. Nothing is started here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.haproxy import Node
from devtools.pair import Gateway, Pair, edit_config
from devtools.postgres import PASSWORD
from devtools.provision import free_port


@dataclass(frozen=True)
class TwoNodes:
    """Frankfurt as nodes ``a`` (the pair's) and ``b`` on one database and one spool."""

    a: Gateway
    b: Gateway
    spool: Path  # the shared spool directory


def _share_spool(state_dir: Path, spool: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "spool").symlink_to(spool, target_is_directory=True)


def two_nodes(pair: Pair, root: Path, database: str, lease_seconds: int | None = None) -> TwoNodes:
    """Move the pair's frankfurt onto ``database`` (a URL without the password, which is
    written to a file beside it) and a shared spool under ``root``, and make its node B
    under ``root / "frankfurt-b"`` with a free partner port. ``lease_seconds``:
    ``state.lease_seconds`` (None: the default)."""
    a = pair.frankfurt
    spool = root / "shared-spool"
    spool.mkdir()
    password = root / "ledger-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)

    def shared_state(data: dict[str, Any]) -> None:
        data["state"] = {"database": database, "password": {"file": str(password)}}
        if lease_seconds is not None:
            data["state"]["lease_seconds"] = lease_seconds

    edit_config(a.paths.config, shared_state)
    _share_spool(a.paths.state_dir, spool)

    home = root / "frankfurt-b"
    paths = dataclasses.replace(
        a.paths,
        root=home,
        config=home / "gateway.yaml",
        socket=home / "run" / "local.sock",
        state_dir=home / "state",
    )
    home.mkdir()
    paths.config.write_text(a.paths.config.read_text(encoding="utf-8"), encoding="utf-8")

    def node_b(data: dict[str, Any]) -> None:
        data["listen"]["partner"] = f"127.0.0.1:{free_port()}"
        data["listen"]["local_socket"] = str(paths.socket)
        data["state_dir"] = str(paths.state_dir)
        for name in ("certificate", "private_key"):  # relative to node A's config
            data["tls"][name] = str((a.paths.config.parent / data["tls"][name]).resolve())

    edit_config(paths.config, node_b)
    _share_spool(paths.state_dir, spool)
    return TwoNodes(a, Gateway(a.spec, paths), spool)


def serve_health(names_and_configs: list[tuple[str, Path]]) -> list[Node]:
    """Give each node ``listen.health`` on a free port (what HAProxy checks); the nodes as
    :class:`devtools.haproxy.Node` (name, partner address, health address)."""
    nodes = []
    for name, config in names_and_configs:
        health = free_port()
        partner: list[str] = []

        def serve(data: dict[str, Any], port: int = health, seen: list[str] = partner) -> None:
            data["listen"]["health"] = f"127.0.0.1:{port}"
            seen.append(str(data["listen"]["partner"]))

        edit_config(config, serve)
        host, port = partner[0].rsplit(":", 1)
        nodes.append(Node(name, (host, int(port)), ("127.0.0.1", health)))
    return nodes

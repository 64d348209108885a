"""Two nodes of one gateway on real parts: frankfurt run twice, sharing what must be shared.

The demo pair (:func:`devtools.pair.provision_pair`) stands up lingang and frankfurt; the
rig turns frankfurt into two nodes of one identity:

* one ledger: ``state.database`` on the test PostgreSQL (:mod:`tests.postgres`), its
  password read from a file (``state.password``), never in the YAML;
* one spool: each node's ``<state_dir>/spool`` is a symbolic link to one shared directory
  (on one machine the same file system: atomic rename and fsync hold);
* one key store: the same SoftHSM token files (``SOFTHSM2_CONF`` of frankfurt), opened by
  both processes; keys were made once, by provisioning;
* the same certificate, partners and issuers;
* each its own: partner listen port, local socket, state directory (its lock, its
  ``partner.addr``), log and notify socket.

Lingang reaches frankfurt through a :class:`~tests.system.faults.FaultProxy` whose target the
test moves from node A to node B -- a balancer, reduced to what the tests need. With
``balancer=True`` the proxy forwards to a real HAProxy instead (:mod:`devtools.haproxy`, the
shipped ``deploy/haproxy/xbgw.cfg`` checks, 300 ms apart), which balances over both nodes
and checks each one's ``listen.health``; the proxy stays in front only to hold or cut
lingang's bytes. There node B also opens the shared token files through a path of its own
(a symbolic link to node A's token directory), so that a test can take B's HSM away alone.
Every daemon, and HAProxy, is stopped by its PID (``DaemonProcess.stop``, ``Haproxy.stop``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from devtools.haproxy import Haproxy
from devtools.nodes import serve_health, two_nodes
from devtools.pair import Gateway, Pair, edit_config, provision_pair
from devtools.provision import write_softhsm_conf
from tests.postgres import PASSWORD
from tests.system.faults import FaultProxy

#: ``state.lease_seconds`` of both nodes: shorter than the default 15 s, so that a takeover
#: after a node is killed costs the tests less, and still well above a renewal's period.
LEASE_SECONDS = 10


@dataclass
class MultiNode:
    """lingang, and frankfurt as two nodes (``a`` is the pair's frankfurt) on one database."""

    pair: Pair
    a: Gateway
    b: Gateway
    database: str  # the URL, without the password
    spool: Path  # the shared spool directory
    proxy: FaultProxy  # lingang's way to frankfurt: forwards to one node at a time
    balancer: Haproxy | None = None  # balancer=True: HAProxy, behind the proxy, over both

    def balanced_name(self, node: Gateway) -> str:
        """The node's server name in HAProxy: ``a`` or ``b``."""
        return "a" if node is self.a else "b"

    def holder(self, pid: int) -> Gateway:
        """The node whose process is ``pid`` (a lease holder is named ``host:pid``)."""
        return next(node for node in self.nodes if node.process and node.process.pid == pid)

    @property
    def lingang(self) -> Gateway:
        return self.pair.lingang

    @property
    def nodes(self) -> tuple[Gateway, Gateway]:
        return (self.a, self.b)

    def endpoint(self, node: Gateway) -> str:
        """A node's partner address, as it bound it."""
        return (node.paths.state_dir / "partner.addr").read_text().strip()

    def route_to(self, node: Gateway) -> None:
        """Lingang's next connections go to ``node`` (those open stay where they are)."""
        host, port = self.endpoint(node).rsplit(":", 1)
        self.proxy.target = (host, int(port))

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the shared ledger directly (autocommit: every call sees the latest commit)."""
        with psycopg.connect(self.database, password=PASSWORD, autocommit=True) as db:
            return list(db.execute(sql, args).fetchall())

    def logs(self) -> str:
        return "".join(
            f"\n--- {name} log ---\n{gateway.log_text()[-4000:]}"
            for name, gateway in (("lingang", self.lingang), ("node a", self.a), ("node b", self.b))
        )

    def stop(self) -> None:
        """Every daemon by its PID, whatever fails."""
        errors: list[BaseException] = []
        for gateway in (self.lingang, self.a, self.b):
            try:
                gateway.stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def provision_multinode(
    root: Path, database: str, segment_size: int = 1 << 16, *, balancer: bool = False
) -> MultiNode:
    """Provision lingang and frankfurt (two nodes) under ``root``; start nothing.

    ``database``: a PostgreSQL database at this schema (``postgres.database(...)``).
    ``balancer``: lingang's proxy forwards to HAProxy over both nodes (module docstring)."""
    pair = provision_pair(root, segment_size=segment_size)
    nodes = two_nodes(pair, root, database, LEASE_SECONDS)
    a, b, spool = nodes.a, nodes.b, nodes.spool
    haproxy: Haproxy | None = None
    if balancer:
        own_token = _own_token_path(a, b.paths.root)
        b = Gateway(b.spec, dataclasses.replace(b.paths, softhsm_conf=own_token))
        served = serve_health([("a", a.paths.config), ("b", b.paths.config)])
        haproxy = Haproxy(root / "haproxy", served)
    target = ("127.0.0.1", haproxy.port if haproxy else a.spec.port)
    proxy = FaultProxy(target)

    def via_proxy(data: dict[str, Any]) -> None:
        for partner in data["partners"]:
            if partner["id"] == a.id:
                partner["endpoint"] = proxy.endpoint

    edit_config(pair.lingang.paths.config, via_proxy)
    return MultiNode(pair, a, b, database, spool, proxy, haproxy)


def _own_token_path(a: Gateway, home: Path) -> Path:
    """Node B's SoftHSM config: its token directory a symbolic link to node A's (the same
    token files, reached by a path a test can take away from B alone)."""
    conf = write_softhsm_conf(home / "softhsm")
    tokens = conf.parent / "tokens"
    tokens.rmdir()
    tokens.symlink_to(a.paths.softhsm_conf.parent / "tokens", target_is_directory=True)

    def use(data: dict[str, Any]) -> None:
        data["hsm"]["softhsm_conf"] = str(conf)

    edit_config(home / "gateway.yaml", use)
    return conf


@contextlib.contextmanager
def running_multinode(
    root: Path, database: str, segment_size: int = 1 << 16, *, balancer: bool = False
) -> Iterator[MultiNode]:
    """Both nodes and lingang started (node A first: it is where the proxy points; with
    ``balancer``, HAProxy once both nodes are up, and it sees them UP); all stopped by PID
    afterwards, and the proxy closed."""
    rig = provision_multinode(root, database, segment_size, balancer=balancer)
    try:
        rig.a.start()
        rig.b.start()
        if rig.balancer is not None:
            rig.balancer.start(up=("a", "b"))
        rig.lingang.start()
        yield rig
    finally:
        try:
            rig.stop()
        finally:
            try:
                if rig.balancer is not None:
                    rig.balancer.stop()
            finally:
                rig.proxy.close()

"""The import graph of ``gateway``: no cycles, and the cheap modules stay cheap.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``: every
``import`` counts, at module level or inside a function, since a lazy import that closes a
cycle is still a cycle (it only moves the failure from start-up to the first call). An edge
goes to the module an import names (``from gateway.cli import daemon`` is an edge to
``gateway.cli.daemon``; ``from gateway import DEFAULT_SOCKET`` one to ``gateway``); the
parent packages Python imports on the way are not edges, or every submodule would form a
cycle with its package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"

CLI_VERB_MODULES = (
    "gateway.cli.keys",
    "gateway.cli.passport",
    "gateway.cli.daemon",
    "gateway.cli.lifecycle",
    "gateway.cli.policy",
    "gateway.cli.audit",
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (``a.b.C`` -> ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement loads, made absolute."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        if not is_package:
            anchor.pop()
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        # ``from pkg import name``: a submodule if one is called so, else an attribute of pkg.
        yield base if alias.name == "*" else f"{base}.{alias.name}"


def import_graph() -> list[Edge]:
    known = _modules()
    edges = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                target = _resolve(name, known)
                if target is not None and target != module:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    edges.append(Edge(module, target, where))
    return edges


def _cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle through each strongly connected component with more than one module."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])

    # Tarjan's algorithm, iterative (the graph is small, but recursion limits are not).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            out = graph[node]
            if i < len(out):
                work.append((node, i + 1))
                nxt = out[i].target
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    cycles = []
    for component in components:
        # The shortest way round from the component's first module back to itself.
        start = min(component)
        paths: dict[str, list[Edge]] = {start: []}
        frontier = [start]
        cycle: list[Edge] | None = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for edge in graph[node]:
                    if edge.target not in component:
                        continue
                    if edge.target == start:
                        cycle = [*paths[node], edge]
                        break
                    if edge.target not in paths:
                        paths[edge.target] = [*paths[node], edge]
                        following.append(edge.target)
                if cycle is not None:
                    break
            frontier = following
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def _describe(cycle: list[Edge]) -> str:
    steps = "\n".join(f"    {e.source} -> {e.target}  ({e.where})" for e in cycle)
    return f"  {' -> '.join([cycle[0].source, *(e.target for e in cycle)])}\n{steps}"


def test_the_graph_sees_module_and_function_level_imports() -> None:
    edges = {(e.source, e.target) for e in import_graph()}
    assert ("gateway.config", "gateway.secrets") in edges  # module level
    assert ("gateway.cli", "gateway.cli.daemon") in edges  # inside a function (lazy)
    assert ("gateway.cli.daemon", "gateway.cli.common") in edges
    assert ("gateway.cli.local_socket", "gateway") in edges  # from gateway import DEFAULT_SOCKET


def test_no_import_cycle_among_gateway_modules() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles in gateway:\n" + "\n".join(map(_describe, cycles))


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = [
        Edge("a", "b", "a.py:1"),
        Edge("b", "c", "b.py:1"),
        Edge("c", "a", "c.py:9"),
        Edge("c", "d", "c.py:2"),
    ]
    (cycle,) = _cycles(edges)
    assert [e.source for e in cycle] == ["a", "b", "c"]
    assert "a -> b -> c -> a" in _describe(cycle)
    assert _cycles(edges[:2] + edges[3:]) == []


def test_cli_imports_point_one_way() -> None:
    """``gateway.cli`` -> verb modules -> ``gateway.cli.common``, never back or sideways."""
    edges = import_graph()
    for edge in edges:
        if edge.source in CLI_VERB_MODULES or edge.source == "gateway.cli.common":
            assert edge.target != "gateway.cli", f"{edge.where} imports the gateway.cli package"
            assert edge.target not in CLI_VERB_MODULES, f"{edge.where} imports {edge.target}"


def test_key_identity_knows_nothing_of_the_envelope() -> None:
    targets = {e.target for e in import_graph() if e.source == "gateway.keys"}
    assert not {t for t in targets if t.startswith("gateway.envelope")}, targets


def _loaded_by(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("statement", "unwanted"),
    [
        ("import gateway.config", "pkcs11"),
        ("import gateway.secrets", "pkcs11"),
        ("import gateway.cli", "grpc"),
        ("from gateway.cli import main, build_parser, parse_size", "grpc"),
        ("import gateway.cli.policy", "grpc"),  # works offline: no daemon, no socket
        ("import gateway.cli.audit", "grpc"),  # offline too: the ledger, read-only
        ("import gateway.audit.verify", "pkcs11"),  # checking a log needs no token
        # The domain: the two sides of a transfer and their documents know neither the
        # network nor the token (they depend on PartnerLink and GatewayKeys).
        ("import gateway.sender, gateway.receiver, gateway.documents", "grpc"),
        ("import gateway.sender, gateway.receiver, gateway.documents", "pkcs11"),
        # The daemon never imports the dev tooling (demo, provisioning).
        ("import gateway.daemon, gateway.cli.daemon", "devtools"),
    ],
)
def test_cheap_imports_stay_cheap(statement: str, unwanted: str) -> None:
    loaded = _loaded_by(statement)
    assert statement.split()[1].rstrip(",") in loaded  # the import did run
    assert unwanted not in loaded, f"{statement!r} loads {unwanted}"

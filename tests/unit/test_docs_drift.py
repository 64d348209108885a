"""Facts the documentation repeats must agree with where they are defined: the stop timeout
(the unit), files it points at (they exist), where `make install` puts the .proto files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "xbgw.service"
EXAMPLE = ROOT / "systemd" / "gateway.yaml.example"
README = ROOT / "README.md"
INSTALL = ROOT / "scripts" / "install"
#: The documents and sources that send a reader to another document: every Python file too
#: (a docstring citing notes that are not in the repository sends the reader nowhere).
POINTING = [
    README,
    EXAMPLE,
    INSTALL,
    UNIT,
    *sorted(
        path
        for folder in ("gateway", "bench", "devtools", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if "_proto" not in path.parts
    ),
]
SKIP_DIRS = {".venv", ".git", "demo-state", "build", "node_modules"}


def _repository_files() -> set[str]:
    names: set[str] = set()
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if path.is_file() and not SKIP_DIRS.intersection(parts):
            names.add("/".join(parts))
    return names


def test_every_stop_timeout_named_is_the_units() -> None:
    (unit,) = re.findall(r"^TimeoutStopSec=(\S+)$", UNIT.read_text(encoding="utf-8"), re.M)
    named = {
        path.name: re.findall(r"TimeoutStopSec=(\w+)", path.read_text(encoding="utf-8"))
        for path in (EXAMPLE, README)
    }
    assert all(named.values()), named
    assert {value for values in named.values() for value in values} == {unit}, named


def test_every_markdown_file_pointed_at_exists() -> None:
    files = _repository_files()
    basenames = {name.rsplit("/", 1)[-1] for name in files}
    for source in POINTING:
        text = source.read_text(encoding="utf-8")
        # A path after a shell variable ($SRC/README.md, $DOCDIR/...) counts as a basename.
        for named in re.findall(r"(?:\$\w+/)?([\w./-]*[\w-]\.md)\b", text):
            # An installed path (/usr/share/doc/xbgw/README.md) is checked by its basename.
            name = named.rsplit("/", 1)[-1] if named.startswith("/") else named.removeprefix("./")
            found = name in files or ("/" not in name and name in basenames)
            assert found, f"{source.relative_to(ROOT)} points at {name}, not in the repository"


def test_the_proto_directory_the_readme_names_is_the_installs() -> None:
    install = INSTALL.read_text(encoding="utf-8")
    assert "PROTODIR=${PROTODIR:-$PREFIX/share/xbgw/proto}" in install
    readme = README.read_text(encoding="utf-8")
    assert "$PREFIX/share/xbgw/proto/xbgw/v1/" in readme
    assert "/usr/share/xbgw/proto" in readme
    shipped = sorted(p.name for p in (ROOT / "proto" / "xbgw" / "v1").glob("*.proto"))
    assert "local.proto" in shipped and "common.proto" in shipped


def test_the_readme_command_table_lists_every_verb() -> None:
    """Every verb the parser has is in the README's command table (a row starting with it),
    and the table names no verb the parser lacks."""
    import argparse

    from gateway.cli import build_parser

    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    table = README.read_text(encoding="utf-8").split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `xbgw ([a-z]+)", table, re.M))
    assert listed == set(verbs.choices), (
        f"missing from the table: {sorted(set(verbs.choices) - listed)}; "
        f"not a verb: {sorted(listed - set(verbs.choices))}"
    )

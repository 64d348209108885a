"""``xbgw(1)``: generated from the parser, every verb in it, and rendered by ``man`` and groff
without a single warning (a warning is how a roff mistake shows)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.manpage import main, render, roff
from gateway.cli import EXAMPLES, build_parser, verb_parsers

ROOT = Path(__file__).resolve().parents[2]


def _groff_warnings(page: Path) -> str:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stderr


def _man(page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"},
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("man") / "xbgw.1"
    assert main(["-o", str(path)]) == 0
    return path


def test_every_verb_has_a_section_with_its_purpose_and_example(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for path, purpose, _parser in verb_parsers(build_parser()):
        heading = f'.SS "xbgw {roff(path)}"'
        assert heading in text, f"no section for xbgw {path}"
        section = text.split(heading, 1)[1].split(".SS ", 1)[0]
        assert roff(purpose[:1].upper() + purpose[1:]) in section, path
        for example in EXAMPLES[path]:
            assert roff(example.split("\n")[0]) in section, path
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT"):
        assert f".SH {name}" in text


def test_groff_renders_it_without_warnings(page: Path) -> None:
    assert _groff_warnings(page) == ""


def test_man_renders_it_without_warnings_and_every_verb_shows(page: Path) -> None:
    done = _man(page)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    shown = re.sub(r".\x08", "", done.stdout)  # no overstrike, whatever the pager settings
    for path, _purpose, _parser in verb_parsers(build_parser()):
        assert f"xbgw {path}\n" in shown, path
    assert "xbgw passport issue --token dpo --pin-file dpo-pin" in shown  # \- became -
    assert re.search(r"\n +78 +a +configuration +error", shown)


def test_the_checks_see_a_broken_page(tmp_path: Path) -> None:
    """What the two checks above would report: an unknown macro and a stray escape."""
    broken = tmp_path / "broken.1"
    broken.write_text(".TH X 1\n.SH NAME\n.foo bar\nback\\q slash\n", encoding="utf-8")
    assert "macro 'foo' not defined" in _groff_warnings(broken)
    assert "warning" in _man(broken).stderr


def test_roff_escapes_dashes_backslashes_and_control_lines() -> None:
    assert roff("--to a\\b") == "\\-\\-to a\\eb"
    assert roff(".hidden\n'quoted\nplain") == "\\&.hidden\n\\&'quoted\nplain"


def test_the_page_is_the_same_on_any_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "250")
    assert render() == narrow
    assert '.TH XBGW 1 "2026-01-01"' in narrow


def test_the_prefix_names_where_the_proto_files_are() -> None:
    page = render(prefix="/usr/local")
    assert "/usr/local/share/xbgw/proto" in page.replace("\\-", "-")


def test_make_man_writes_build_man(tmp_path: Path) -> None:
    """The Makefile target's command, into a scratch copy of its output path."""
    target = tmp_path / "build" / "man" / "xbgw.1"
    done = subprocess.run(
        [sys.executable, "-m", "devtools.manpage", "-o", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_text(encoding="utf-8").startswith(".TH XBGW 1 ")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "$(PY) -m devtools.manpage -o build/man/xbgw.1" in makefile
